"""vLLM's request options, declared once: its score API (`vllm.py`) and its rerank, which is the {results} shape
(`cohere.py`), take the same fields and answer them the same way.

`use_activation` (and its deprecated `activation` / `softmax`: false returns the logit), `truncate_prompt_tokens`
(-1: the model's max length; N: pairs cut to N tokens), `request_id` (the response's id), `priority` (0 only:
requests are served in arrival order), `mm_processor_kwargs` (refused: media are preprocessed as the model's
processor config says), `user` (logged).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, StrictBool, StrictInt, StrictStr

from rerankrt.errors import InputError
from rerankrt.server.schemas import ScoringOptions
from rerankrt.server.scoring import Scoring
from rerankrt.server.shapes import refuse

log = logging.getLogger(__name__)


class VLLMOptions(ScoringOptions):
    """The options of vLLM's score and rerank requests, each honoured or refused with a 400 that says why."""

    use_activation: StrictBool | None = Field(None, description="vLLM: false returns the logit (default true)")
    activation: StrictBool | None = Field(None, description="vLLM, deprecated: use_activation")
    softmax: StrictBool | None = Field(None, description="vLLM, deprecated: use_activation")
    truncate_prompt_tokens: StrictInt | None = Field(None, ge=-1, description="vLLM: -1 max length, N: N tokens")
    request_id: StrictStr | None = Field(None, description="vLLM: the response's id")
    priority: StrictInt = Field(0, description="Cohere v2 / vLLM: only 0 (requests are served in arrival order)")
    user: StrictStr | None = Field(None, description="vLLM / OpenAI: an end-user id, logged")
    mm_processor_kwargs: dict[str, Any] | None = Field(None, description="vLLM: refused when not empty")

    def request_options(self, scoring: Scoring) -> dict:
        """`truncate_prompt_tokens` as the ScoreRequest's `max_length`, refusing what cannot be honoured."""
        options: dict = {}
        tokens = self.truncate_prompt_tokens
        if tokens is not None:
            limit = scoring.reranker.encoder.max_length
            if tokens == 0:
                raise refuse("truncate_prompt_tokens", "must be -1 (the model's max length) or a positive token count")
            if tokens > limit:
                raise refuse(
                    "truncate_prompt_tokens",
                    f"{tokens} is over the model's max length of {limit} tokens. Please, select a smaller truncation "
                    "size.",
                )
            if tokens != -1:
                options["max_length"] = tokens
        if self.priority != 0:
            raise refuse("priority", "this server serves requests in arrival order; only priority 0 is accepted")
        if self.mm_processor_kwargs:
            raise refuse(
                "mm_processor_kwargs",
                "media are preprocessed as the model's processor config says; no per-request kwargs",
            )
        if self.user is not None:
            log.debug("request from user %r", self.user)
        return options

    def scoring_body(self):
        """This request, with `truncate` on when `truncate_prompt_tokens` asks for a length."""
        truncate = self.truncate or self.truncate_prompt_tokens is not None
        return self if truncate == self.truncate else self.model_copy(update={"truncate": truncate})

    def activated(self) -> bool:
        """vLLM's use_activation, falling back to its deprecated names; default true."""
        for value in (self.use_activation, self.activation, self.softmax):
            if value is not None:
                return value
        return True


def renamed(error: InputError) -> InputError:
    """The Reranker's `max_length` is these APIs' truncate_prompt_tokens."""
    if error.field == "max_length":
        return type(error)("truncate_prompt_tokens", error.message)
    return error
