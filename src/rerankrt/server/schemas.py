"""Request and response bodies of the HTTP API (SGLang-compatible /v1/rerank)."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr


class RerankRequest(BaseModel):
    """SGLang's /v1/rerank request, plus `raw_scores`."""

    query: StrictStr = Field(min_length=1, description="the search query")
    documents: list[StrictStr] = Field(min_length=1, description="documents to score against the query")
    model: StrictStr | None = Field(None, description="accepted for compatibility; this server serves one model")
    top_n: StrictInt | None = Field(None, ge=1, description="return only the n best documents (default: all)")
    return_documents: StrictBool = Field(True, description="include each document's text in the response")
    instruct: StrictStr | None = Field(
        None, description="task instruction for instruction-following rerankers; cross-encoders ignore it"
    )
    raw_scores: StrictBool = Field(False, description="return the raw relevance logit instead of sigmoid(logit)")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "BAAI/bge-reranker-v2-m3",
                    "query": "what is panda?",
                    "documents": [
                        "hi",
                        "The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, "
                        "is a bear species endemic to China.",
                    ],
                }
            ]
        }
    }


class RerankResult(BaseModel):
    score: float = Field(description="sigmoid(logit) in [0, 1], or the logit with raw_scores")
    index: int = Field(description="position of the document in the request")
    document: str | None = Field(None, description="the document, when return_documents is true")


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
