"""NVIDIA NIM's ranking API (NeMo Retriever reranking NIM): `POST /v1/ranking`, also at the hosted API's
`POST /v1/retrieval/{model}/reranking` (LiteLLM's `nvidia_nim/` posts there), and on `/invocations` by `passages`.

Request: `model` (accepted: one model per server), `query: {"text"}` (non-empty), `passages: [{"text", "image"?}]`
(at least one; `text` non-empty when given; `image` a base64 data URL, scored by a multimodal reranker, a 400 for a
text-only one; a passage needs one of them), `truncate`: `"END"` cuts an over-long pair's end, `"NONE"` makes it a
400 naming `passages[i]`. NIM's default is NONE; here, as on every API, long input is cut unless the request says
NONE. `top_k` (LiteLLM's `nvidia_nim/` sends it for `top_n`) keeps the k best. Answer: `{"rankings": [{"index",
"logit"}], "usage"}`, best first (ties by index). Errors come in NIM's body, `{"error": message}`, the message
naming the field (`passages[2].text: ...`).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rerankrt.errors import InputError
from rerankrt.server.content import Input
from rerankrt.server.schemas import ERRORS, ImagePart, MediaURL, NonEmptyStr, ScoringOptions, TextPart
from rerankrt.server.scoring import Scoring, ScoringService
from rerankrt.server.shapes import ApiShape, Claim, respond, shaped_route

EXAMPLE = {  # NVIDIA's documented request (NeMo Retriever reranking NIM, "Use the API"), its first two passages
    "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
    "query": {"text": "which way should i go?"},
    "passages": [
        {"text": "two roads diverged in a yellow wood, and sorry i could not travel both and be one traveler, long "
                 "i stood and looked down one as far as i could to where it bent in the undergrowth;"},
        {"text": "then took the other, as just as fair, and having perhaps the better claim because it was grassy "
                 "and wanted wear, though as for that the passing there had worn them really about the same,"},
    ],
    "truncate": "END",
}  # fmt: skip


class NIMQuery(BaseModel):
    """NIM's query object: text only."""

    text: NonEmptyStr
    model_config = ConfigDict(extra="forbid")


class NIMPassage(BaseModel):
    """One passage: text, an image (a base64 data URL, for a multimodal reranker), or both."""

    text: NonEmptyStr | None = None
    image: StrictStr | None = Field(None, description="a base64 data URL (data:image/png;base64,...)")
    model_config = ConfigDict(extra="forbid")

    @field_validator("image")
    @classmethod
    def _data_url(cls, image: str | None) -> str | None:
        if image is not None and not (image.startswith("data:image/") and ";base64," in image):
            raise PydanticCustomError("data_url", "must be a base64 data URL, data:image/png;base64,...")
        return image

    @model_validator(mode="after")
    def _text_or_image(self) -> NIMPassage:
        if self.text is None and self.image is None:
            raise PydanticCustomError("passage", "needs text, an image, or both")
        return self


class NIMRankingRequest(ScoringOptions):
    """NIM's ranking request, plus `top_k` and the ScoringOptions."""

    query: NIMQuery
    passages: list[NIMPassage] = Field(min_length=1)
    truncate: Literal["NONE", "END"] = Field("END", description="END cuts an over-long pair; NONE refuses it")
    top_k: StrictInt | None = Field(None, ge=1, description="extension (LiteLLM's nvidia_nim/ sends it): k best")

    model_config = {"json_schema_extra": {"examples": [EXAMPLE]}}

    def scoring_body(self) -> NIMRankingRequest:
        return self.model_copy(update={"truncate": self.truncate == "END"})


def nim_shape(status: int, error: dict, headers: dict) -> JSONResponse:
    """NIM's error body: `{"error": message}`."""
    return JSONResponse({"error": error.get("message", "")}, status_code=status, headers=headers)


def _passage(passage: NIMPassage, field: str) -> Input:
    if passage.image is None:
        return Input(passage.text, field)
    parts = [ImagePart(type="image_url", image_url=MediaURL(url=passage.image))]
    part_fields = [f"{field}.image"]
    if passage.text is not None:
        parts.append(TextPart(type="text", text=passage.text))
        part_fields.append(f"{field}.text")
    return Input(parts, field, tuple(part_fields))


async def rank(body: NIMRankingRequest, request: Request, scoring: Scoring) -> JSONResponse:
    passages = [_passage(p, f"passages[{i}]") for i, p in enumerate(body.passages)]
    try:
        result = await scoring.score(request, body.scoring_body(), Input(body.query.text, "query.text"), passages,
                                     "passages")  # fmt: skip
    except InputError as error:  # the Reranker's advice in this API's words
        raise type(error)(error.field, error.message.replace("truncate=true", 'truncate "END"')) from error
    rankings = [{"index": r.index, "logit": r.score} for r in result.ranked(body.top_k, raw=True)]
    usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
    return respond({"rankings": rankings, "usage": usage}, body)


router = APIRouter(route_class=shaped_route(nim_shape))


@router.post("/v1/ranking", responses=ERRORS, summary="Ranking (NVIDIA NIM shape)")
async def ranking(body: NIMRankingRequest, request: Request, scoring: ScoringService) -> JSONResponse:
    """NIM's ranking: `{"rankings": [{"index", "logit"}], "usage"}`, best first."""
    return await rank(body, request, scoring)


@router.post("/v1/retrieval/{model_id:path}/reranking", responses=ERRORS, summary="Ranking (NVIDIA's hosted path)")
async def hosted_ranking(model_id: str, body: NIMRankingRequest, request: Request, scoring: ScoringService):
    """The hosted API's path for /v1/ranking (the model in the path, as in the body, is accepted)."""
    return await rank(body, request, scoring)


API = ApiShape(
    "nim", "NVIDIA NIM's ranking", router=router, model=NIMRankingRequest, handle=rank, errors=nim_shape,
    claims=(Claim("/invocations", fields=("passages",)),),
)  # fmt: skip
