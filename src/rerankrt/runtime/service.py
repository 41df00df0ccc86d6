"""The one scoring core behind every API shape: limits, encoding off the event loop, batching, chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rerankrt.errors import InputError
from rerankrt.families import Content
from rerankrt.runtime.chunking import chunk_documents
from rerankrt.runtime.reranker import Reranker
from rerankrt.runtime.scheduler import Scheduler


class RequestTooLarge(InputError):
    """A request over a configured size limit (HTTP 413)."""


@dataclass
class ScoreRequest:
    query: Content  # text, or content parts with decoded media (multimodal families only)
    documents: Sequence[Content]
    instruct: str | None = None
    truncate: bool = True
    max_chunks_per_doc: int | None = None


@dataclass
class Scores:
    logits: np.ndarray  # one per document, in request order (a chunked document's best chunk)
    tokens: int  # tokens fed to the model, padding excluded


class RerankService:
    def __init__(self, reranker: Reranker, scheduler: Scheduler, max_documents_per_request: int = 1000):
        self.reranker = reranker
        self.scheduler = scheduler
        self.max_documents = max_documents_per_request
        # One encoding thread: a Hugging Face tokenizer is not safe to call from several threads at once
        # ("Already borrowed"), and its batch calls are parallel inside already. It overlaps with inference.
        self._encoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankrt-encode")

    def close(self) -> None:
        self._encoding.shutdown(wait=True)
        self.scheduler.close()

    def check_size(self, documents: int) -> None:
        """RequestTooLarge beyond max_documents_per_request (callers check before fetching any media too)."""
        if documents > self.max_documents:
            raise RequestTooLarge(
                "documents", f"{documents} documents, over the limit of {self.max_documents} per request"
            )

    async def score(self, request: ScoreRequest) -> Scores:
        self.check_size(len(request.documents))
        pairs, owners = await asyncio.get_running_loop().run_in_executor(self._encoding, self._encode, request)
        logits = await self.scheduler.submit(pairs)
        per_document = np.full(len(request.documents), -np.inf, dtype=np.float32)
        np.maximum.at(per_document, owners, logits)
        return Scores(per_document, sum(len(p["input_ids"]) for p in pairs))

    def _encode(self, request: ScoreRequest):
        encoder = self.reranker.encoder
        documents, owners = list(request.documents), np.arange(len(request.documents))
        if request.max_chunks_per_doc:
            documents, owner_list = chunk_documents(
                encoder, request.query, documents, request.instruct, request.max_chunks_per_doc
            )
            owners = np.asarray(owner_list)
        # chunks are cut to fit; re-tokenised in context one may run a token over, which truncation trims
        truncate = request.truncate or bool(request.max_chunks_per_doc)
        pairs = encoder.encode(request.query, documents, request.instruct, truncate=truncate)
        return pairs, owners
