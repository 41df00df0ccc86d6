"""The one path from an API adapter to the Reranker: size check, media, scoring, inside the request guard.

An adapter names each query and document with its own request field (`content.Input`) and awaits `Scoring.score`
(one query against its documents) or `Scoring.score_pairwise` (each query against its own document). Both check
the number of documents before any media is fetched, fetch the request's media in one go, and hand the Reranker a
`ScoreRequest` that carries the adapter's field names, so the Reranker's errors name what the client sent. Sigmoid
and ranking are the Reranker's (`Scores`).

--request-timeout is a deadline for what comes before inference: fetching media, encoding (503 past it), and
admission: the scheduler refuses at once (503 + Retry-After) a request whose estimate, the work queued ahead of it
and its own at the measured throughput, runs past the deadline. An admitted request runs to completion. The work
runs under a guard that drops it (and the Reranker drops its queued pairs) when the client disconnects, or when the
backend stalls: no forward pass ended for --request-timeout while work waits (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Annotated, TypeVar

import numpy as np
from fastapi import Depends, Request

from rerankrt.errors import InputError
from rerankrt.runtime import Reranker
from rerankrt.runtime.reranker import RequestTimedOut, ScoreRequest, Scores, within_deadline
from rerankrt.runtime.scheduler import CannotFinishInTime
from rerankrt.server.content import Input, resolve
from rerankrt.server.errors import ClientDisconnected
from rerankrt.server.media import MediaFetcher
from rerankrt.server.metrics import Metrics
from rerankrt.server.schemas import ScoringOptions

DISCONNECT_POLL_SECONDS = 0.25
T = TypeVar("T")


class Scoring:
    """What every adapter calls; one per app, at `app.state.scoring`."""

    def __init__(self, reranker: Reranker, request_timeout: float, metrics: Metrics):
        self.reranker = reranker
        self.request_timeout = request_timeout
        self.metrics = metrics
        self.media: MediaFetcher | None = None  # set while the app's lifespan runs

    @property
    def model_name(self) -> str:
        return self.reranker.name

    async def score(
        self,
        request: Request,
        options: ScoringOptions,
        query: Input,
        documents: Sequence[Input],
        documents_field: str = "documents",
        **request_options,
    ) -> Scores:
        """`query` against each of `documents`; `documents_field` names the list in a too-many-documents 413;
        `request_options` are further `ScoreRequest` fields (max_tokens_per_doc, max_length, truncation_side)."""
        work = self._score(options, query, documents, documents_field, request_options)
        return await self.guarded(request, work)

    async def score_pairwise(
        self,
        request: Request,
        options: ScoringOptions,
        queries: Sequence[Input],
        documents: Sequence[Input],
        documents_field: str = "documents",
        **request_options,
    ) -> Scores:
        """Each query against its document: media fetched in one go, then one Reranker call per pair, concurrently."""
        work = self._score_pairwise(options, queries, documents, documents_field, request_options)
        return await self.guarded(request, work)

    async def guarded(self, request: Request, work: Awaitable[T]) -> T:
        """`work` (fetching media, scoring) to its end, dropped when the client disconnects or the backend stalls;
        counts the refusals at admission."""
        task = asyncio.ensure_future(work)
        scheduler = self.reranker.scheduler
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise ClientDisconnected("the client closed the connection; its pairs were dropped")
                if scheduler.stalled_seconds > self.request_timeout:
                    raise RequestTimedOut(
                        f"no forward pass finished for {self.request_timeout:g} s (the backend is stuck); retry later"
                    )
        except CannotFinishInTime:
            self.metrics.refused_at_admission.inc()
            raise
        finally:
            if not task.done():  # the scheduler drops the pairs still queued before we answer
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _deadline(self) -> float:
        return self.reranker.scheduler.clock() + self.request_timeout

    async def _score(
        self, options: ScoringOptions, query: Input, documents: Sequence[Input], documents_field: str, extra: dict
    ) -> Scores:
        deadline = self._deadline()
        extra = {**extra, "deadline": deadline}
        self.reranker.check_size(len(documents), documents_field)  # before fetching anything
        with self._pixels() as budget:  # decoded media are held until the request is scored
            query_content, *contents = await self._resolve([query, *documents], budget, deadline)
            with _parts_named([query, *documents]):
                return await self.reranker.ascore(_request(options, query, query_content, documents, contents, extra))

    async def _score_pairwise(
        self,
        options: ScoringOptions,
        queries: Sequence[Input],
        documents: Sequence[Input],
        documents_field: str,
        extra: dict,
    ) -> Scores:
        deadline = self._deadline()
        extra = {**extra, "deadline": deadline}
        self.reranker.check_size(len(documents), documents_field)
        with self._pixels() as budget:
            contents = await self._resolve([*queries, *documents], budget, deadline)
            query_contents, document_contents = contents[: len(queries)], contents[len(queries) :]
            pairs = zip(queries, query_contents, documents, document_contents, strict=True)
            with _parts_named([*queries, *documents]):
                scoring = [
                    asyncio.ensure_future(self.reranker.ascore(_request(options, q, qc, [d], [dc], extra)))
                    for q, qc, d, dc in pairs
                ]
                try:
                    results = await asyncio.gather(*scoring)
                except BaseException:  # one pair refused or failed: the others' pairs leave the queue too
                    for task in scoring:
                        task.cancel()
                    raise
        logits = np.concatenate([r.logits for r in results])
        return Scores(logits, sum(r.tokens for r in results), self.reranker.family.logit_scores)

    def _pixels(self):
        """The request's budget of decoded pixels (nothing to budget for a text-only model)."""
        return self.media.budget() if self.media is not None else nullcontext()

    async def _resolve(self, inputs: list[Input], budget, deadline: float) -> list:
        late = f"media not fetched within the request timeout of {self.request_timeout:g} s; retry later"
        async with within_deadline(deadline, self.reranker.scheduler.clock, late):
            return await resolve(inputs, self.reranker.family.multimodal, self.media, self.metrics, budget)


def _request(
    options: ScoringOptions, query: Input, query_content, documents: Sequence[Input], contents: list, extra: dict
) -> ScoreRequest:
    """The Reranker's request, with the client's names for the query and each document."""
    return ScoreRequest(
        query=query_content,
        documents=contents,
        instruct=options.instruct,
        truncate=options.truncate,
        max_chunks_per_doc=options.max_chunks_per_doc,
        query_field=query.field,
        document_fields=[d.field for d in documents],
        **extra,
    )


@contextmanager
def _parts_named(inputs: Sequence[Input]) -> Iterator[None]:
    """A Reranker error on part k of an input (`field[k]…`) named by that part's own field where the input has one
    (vLLM's single `{"content": [...]}`: input k is part k alone, `text_2.content[k]`, not `text_2.content[k][0]`)."""
    try:
        yield
    except InputError as error:
        for item in inputs:
            if item.part_fields and error.field.startswith(f"{item.field}["):
                index, _, rest = error.field[len(item.field) + 1 :].partition("]")
                if index.isdigit() and int(index) < len(item.part_fields):
                    raise type(error)(item.part_field(int(index)) + rest, error.message) from error
        raise


def get_scoring(request: Request) -> Scoring:
    return request.app.state.scoring


ScoringService = Annotated[Scoring, Depends(get_scoring)]
"""A route parameter of this type receives the app's `Scoring`."""
