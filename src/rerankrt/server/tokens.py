"""`POST /tokenize` and `/detokenize` (also under `/v1/`), as vLLM and SGLang answer them, with the served model's
tokenizer.

/tokenize: `prompt` (a string; SGLang also takes a list of strings), `add_special_tokens` (default true),
`return_token_strs` (vLLM) -> `{"count", "max_model_len", "tokens", "token_strs"}`. vLLM's chat form
(`messages`) is refused: a reranker's prompt is its own template, not a chat template.
/detokenize: `tokens` (SGLang also takes a list of lists), `skip_special_tokens` (SGLang, default true) ->
`{"prompt", "text"}`: vLLM reads `prompt` (decoded as vLLM does, special tokens kept) and SGLang `text`
(decoded as SGLang does, with `skip_special_tokens`). Errors come in vLLM's body.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from rerankrt.server.shapes import ApiShape, refuse, respond, shaped_route, vllm_shape


class TokenizeRequest(BaseModel):
    model: StrictStr | None = None
    prompt: StrictStr | list[StrictStr] | None = None
    messages: list[Any] | None = Field(None, description="vLLM's chat form: refused")
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool = False
    model_config = ConfigDict(extra="allow")


class DetokenizeRequest(BaseModel):
    model: StrictStr | None = None
    tokens: list[StrictInt] | list[list[StrictInt]]
    skip_special_tokens: StrictBool = True
    model_config = ConfigDict(extra="allow")


router = APIRouter(route_class=shaped_route(vllm_shape))


async def tokenize(body: TokenizeRequest, request: Request) -> JSONResponse:
    """Token ids of `prompt` with the served model's tokenizer."""
    encoder = request.app.state.reranker.encoder
    if body.messages is not None:
        raise refuse("messages", "a reranker's prompt is its own template, not a chat template; send prompt")
    if body.prompt is None:
        raise refuse("prompt", "is required")
    tokenizer = encoder.tokenizer
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    ids = [list(tokenizer(p, add_special_tokens=body.add_special_tokens)["input_ids"]) for p in prompts]
    strs = [tokenizer.convert_ids_to_tokens(i) for i in ids] if body.return_token_strs else None
    single = isinstance(body.prompt, str)
    content = {
        "count": len(ids[0]) if single else [len(i) for i in ids],
        "max_model_len": encoder.max_length,
        "tokens": ids[0] if single else ids,
        "token_strs": (strs[0] if single else strs) if strs is not None else None,
    }
    return respond(content, body)


async def detokenize(body: DetokenizeRequest, request: Request) -> JSONResponse:
    """The text of `tokens`: `prompt` as vLLM decodes it, `text` as SGLang does."""
    tokenizer = request.app.state.reranker.encoder.tokenizer
    size = len(tokenizer)
    batches = body.tokens if body.tokens and isinstance(body.tokens[0], list) else [body.tokens]
    for b, ids in enumerate(batches):
        for i, token in enumerate(ids):
            if not 0 <= token < size:
                field = f"tokens[{b}][{i}]" if batches is body.tokens else f"tokens[{i}]"
                raise refuse(field, f"{token} is not a token id of this model (0 to {size - 1})")
    prompts = [tokenizer.decode(ids) for ids in batches]
    texts = [tokenizer.decode(ids, skip_special_tokens=body.skip_special_tokens) for ids in batches]
    single = batches is not body.tokens
    return respond({"prompt": prompts[0] if single else prompts, "text": texts[0] if single else texts}, body)


for _prefix in ("", "/v1"):
    router.post(f"{_prefix}/tokenize", summary="Tokenize (vLLM / SGLang shape)")(tokenize)
    router.post(f"{_prefix}/detokenize", summary="Detokenize (vLLM / SGLang shape)")(detokenize)

API = ApiShape("tokens", "tokenize and detokenize (vLLM, SGLang)", router=router)
