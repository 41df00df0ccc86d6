"""Request and response bodies of the HTTP API: SGLang's /v1/rerank, Cohere/Jina's /rerank, vLLM's /v1/score."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

PANDA_EXAMPLE = {
    "model": "BAAI/bge-reranker-v2-m3",
    "query": "what is panda?",
    "documents": [
        "hi",
        "The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, "
        "is a bear species endemic to China.",
    ],
}


class ScoringOptions(BaseModel):
    """Fields every API shape accepts on top of its own."""

    model: StrictStr | None = Field(None, description="accepted for compatibility; this server serves one model")
    instruct: StrictStr | None = Field(
        None, description="task instruction for instruction-following rerankers (Qwen3); cross-encoders ignore it"
    )
    truncate: StrictBool = Field(
        True, description="cut over-long pairs to max_length; false makes an over-long pair a 400"
    )
    max_chunks_per_doc: StrictInt | None = Field(
        None, ge=1, description="split long documents into up to this many overlapping chunks; best chunk's score"
    )


class RerankRequest(ScoringOptions):
    """SGLang's /v1/rerank request, plus `raw_scores` and the ScoringOptions."""

    query: StrictStr = Field(min_length=1, description="the search query")
    documents: list[StrictStr] = Field(min_length=1, description="documents to score against the query")
    top_n: StrictInt | None = Field(None, ge=1, description="return only the n best documents (default: all)")
    return_documents: StrictBool = Field(True, description="include each document's text in the response")
    raw_scores: StrictBool = Field(False, description="return the raw relevance logit instead of sigmoid(logit)")

    model_config = {"json_schema_extra": {"examples": [PANDA_EXAMPLE]}}


class RerankResult(BaseModel):
    score: float = Field(description="sigmoid(logit) in [0, 1], or the logit with raw_scores")
    index: int = Field(description="position of the document in the request")
    document: str | None = Field(None, description="the document, when return_documents is true")


class TextDocument(BaseModel):
    text: StrictStr


class CohereRerankRequest(ScoringOptions):
    """Cohere / Jina rerank request: documents are strings or {"text": ...} objects."""

    query: StrictStr = Field(min_length=1)
    documents: list[StrictStr | TextDocument] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, ge=1)
    return_documents: StrictBool = Field(True, description="include {text} of each document (Jina's default)")

    model_config = {"json_schema_extra": {"examples": [PANDA_EXAMPLE]}}

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: TextDocument | None = None


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    model: str
    results: list[CohereResult]
    usage: Usage


class ScoreRequest(ScoringOptions):
    """vLLM's /v1/score: text_1 against each text_2 (or pairwise when both are lists of equal length)."""

    text_1: StrictStr | list[StrictStr]
    text_2: StrictStr | list[StrictStr]

    model_config = {
        "json_schema_extra": {"examples": [{"text_1": "what is panda?", "text_2": PANDA_EXAMPLE["documents"]}]}
    }


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: Usage


class ErrorResponse(BaseModel):
    object: str = "error"
    message: str
    type: str
    param: str | None = None
    code: int


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "rerankrt"
    family: str
    backend: str
    device: str
    max_length: int


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]
