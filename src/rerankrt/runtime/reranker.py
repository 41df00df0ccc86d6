"""The Reranker, the scoring object: load -> encode -> schedule -> logits -> scores -> ranked results.

One Reranker serves the HTTP server (its async face, `ascore`), and the CLI, the benchmarks and Python users
(its sync face, `logits` / `rerank`), through the same encoding thread, the same cross-request scheduler and
the same batching settings.

Budgets come before work: the number of documents, then the characters of each text (`max_text_chars`: cut, or
413 without truncation), then the pairs a request makes (more than the queue can ever hold is a 413, not a 503
to retry forever). A request is encoded in slices of a few documents, each its own job on the one encoding
thread, so a huge request cannot hold the thread against small ones (their jobs run between its slices), and
one whose client has gone stops at the next slice.

A request may carry a deadline (`ScoreRequest.deadline`, the server's --request-timeout): its encoding stops at
it, and the scheduler admits it only if its estimate finishes the request by then; once admitted it runs to the
end.

    from rerankrt import Reranker

    with Reranker.load("engines/bge-reranker-v2-m3") as reranker:
        for result in reranker.rerank("what is panda?", ["hi", "The giant panda is a bear."], top_n=1):
            print(result.index, result.score)
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from rerankrt.errors import InputError, RerankrtError
from rerankrt.families import MODEL_LIMITS, Content, Features, Truncation
from rerankrt.runtime.batching import default_padding_ratio, default_top_up_tokens
from rerankrt.runtime.chunking import chunk_documents
from rerankrt.runtime.fidelity import sigmoid
from rerankrt.runtime.loader import LoadedModel, load_model
from rerankrt.runtime.scheduler import BatchStats, Scheduler
from rerankrt.runtime.settings import RerankerSettings

WARM_UP = ("warm-up query", ["warm-up document", "a second warm-up document"])
_ENCODER_FIELD = re.compile(r"^(?:documents\[(\d+)\]|(query))(.*)$", re.DOTALL)
TEXT_CHARS_PER_TOKEN = 32  # the default max_text_chars is this many per token of max_length
SLICE_DOCUMENTS = 16  # an encoding job holds at most this many documents...
SLICE_CHARS = 256 * 1024  # ...and this many characters (at least one document)
MEDIA_PART_CHARS = 4096  # what a media part counts for in a slice (preprocessing an image costs like text)


class RequestTooLarge(InputError):
    """A request over a configured size limit (HTTP 413)."""


class RequestTimedOut(RerankrtError):
    """A request's deadline passed before it was admitted to the scheduler, or the backend stalled (HTTP 503)."""


@asynccontextmanager
async def within_deadline(deadline: float | None, clock: Callable[[], float], message: str) -> AsyncIterator[None]:
    """The body, cut with RequestTimedOut(message) at `deadline` (on `clock`; None: no limit)."""
    if deadline is None:
        yield
        return
    try:
        async with asyncio.timeout(max(0.0, deadline - clock())) as scope:
            yield
    except TimeoutError:
        if scope.expired():
            raise RequestTimedOut(message) from None
        raise


@dataclass
class ScoreRequest:
    """One query against its documents, with the client's own names for them (errors use those names)."""

    query: Content  # text, or content parts with decoded media (multimodal families only)
    documents: Sequence[Content]
    instruct: str | None = None
    truncate: bool = True
    max_chunks_per_doc: int | None = None
    query_field: str = "query"
    document_fields: Sequence[str] | None = None  # default: documents[i]
    max_tokens_per_doc: int | None = None  # keep each text document's first N tokens
    max_length: int | None = None  # cut pairs to this many tokens (at most the model's max_length)
    truncation_side: Literal["right", "left"] = "right"  # which end of a text document truncation cuts
    # when (on the scheduler's clock) it must be encoded and its scores expected, else RequestTimedOut /
    # CannotFinishInTime; once the scheduler admits it, it runs to the end
    deadline: float | None = None

    def document_field(self, index: int) -> str:
        return self.document_fields[index] if self.document_fields is not None else f"documents[{index}]"

    @property
    def truncation(self) -> Truncation:
        """The request's limits as the encoder takes them."""
        return Truncation(self.max_length, self.truncation_side, self.max_tokens_per_doc)


@dataclass(frozen=True)
class Ranked:
    index: int  # the document's position in the request
    score: float  # sigmoid(logit), or the logit when raw


@dataclass
class Scores:
    logits: np.ndarray  # float32, one per document in request order (a chunked document's best chunk)
    tokens: int  # tokens fed to the model, padding excluded
    logit_scores: bool = True  # False: the values are similarities (MaxSim), the score raw or not (Family.logit_scores)

    def values(self, raw: bool = False) -> np.ndarray:
        """sigmoid(logit) per document, or the logits themselves (float64); a similarity is its own score."""
        return self.logits.astype(np.float64) if raw or not self.logit_scores else sigmoid(self.logits)

    def ranked(self, top_n: int | None = None, raw: bool = False) -> list[Ranked]:
        """Documents best first (ties by index), cut to top_n (None or 0: all)."""
        values = self.values(raw)
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))[: top_n or None]
        return [Ranked(i, float(values[i])) for i in order]


class Reranker:
    """A loaded model behind one encoding thread and one scheduler (see the module docstring)."""

    def __init__(
        self, model: LoadedModel, settings: RerankerSettings, on_batch: Callable[[BatchStats], None] | None = None
    ):
        self.model = model
        self.settings = settings
        padding = settings.max_padding_ratio or default_padding_ratio(model.backend.device)
        # packed batches (torch): the token budget alone bounds a batch; every pair holds at least one token
        packed = getattr(model.backend, "packed", None) is not None
        self.scheduler = Scheduler(
            model.backend.run,
            model.encoder.collate,
            max_batch_size=settings.max_batch_tokens if packed else settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_queued_pairs=settings.max_queued_pairs,
            batch_wait_ms=settings.batch_wait_ms,
            max_padding_ratio=padding,
            on_batch=on_batch,
            scheduling=settings.scheduling,
            top_up_tokens=settings.top_up_tokens or default_top_up_tokens(model.backend.device),
            # until a forward pass is measured, admission goes by the self-check's run of the golden set here
            initial_seconds_per_token=_measured_seconds_per_token(model),
        )
        # One encoding thread: a Hugging Face tokenizer is not safe to call from several threads at once
        # ("Already borrowed"), and its batch calls are parallel inside already. It overlaps with inference.
        self._encoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankrt-encode")
        # threads stop at close, or at interpreter exit for a Reranker never closed (torch aborts the process
        # when its inference thread is torn down mid-exit)
        self._stop = weakref.finalize(self, _stop_threads, self._encoding, self.scheduler)

    @classmethod
    def load(
        cls,
        model_path: str | None = None,
        settings: RerankerSettings | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        **options,
    ) -> Reranker:
        """`Reranker.load("engines/name", backend="onnxruntime", precision="fp32", ...)`: any RerankerSettings field."""
        if settings is None:
            settings = RerankerSettings(model_path=model_path, **options)
        elif model_path is not None or options:
            settings = settings.model_copy(update={"model_path": model_path or settings.model_path, **options})
        return cls(load_model(settings), settings, on_batch)

    # --- what is loaded ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def family(self):
        return self.model.family

    @property
    def encoder(self):
        return self.model.encoder

    @property
    def backend(self):
        return self.model.backend

    @property
    def document_cache(self):
        """The documents' encodings kept across requests (runtime.document_cache), or None."""
        return self.model.document_cache

    def describe(self) -> dict:
        plan = self.model.plan
        return {
            "family": self.family.name,
            "backend": plan.backend,
            "device": plan.device,
            "precision": plan.precision.value,
            "max_length": self.encoder.max_length,
        }

    # --- scoring ----------------------------------------------------------------------------------

    def check_size(self, documents: int, field: str = "documents") -> None:
        """RequestTooLarge beyond max_documents_per_request (callers check before fetching any media too)."""
        limit = self.settings.max_documents_per_request
        if documents > limit:
            raise RequestTooLarge(field, f"{documents} documents, over the limit of {limit} per request")

    @property
    def max_text_chars(self) -> int:
        return self.settings.max_text_chars or TEXT_CHARS_PER_TOKEN * self.encoder.max_length

    async def ascore(self, request: ScoreRequest) -> Scores:
        """The async face: encode off the event loop, slice by slice, then await the scheduler; cancelling stops
        the encoding at the next slice and drops queued pairs."""
        request = self._bounded(request)
        loop = asyncio.get_running_loop()
        pairs: list[Features] = []
        owners: list[np.ndarray] = []
        late = "the request's timeout passed before it was encoded (the server is busy); retry later"
        async with within_deadline(request.deadline, self.scheduler.clock, late):
            for start, stop in self._slices(request):
                encoded = loop.run_in_executor(self._encoding, self._encode, request, start, stop)
                slice_pairs, slice_owners = await encoded
                self._add(request, pairs, owners, slice_pairs, slice_owners)
        return self._collect(request, _joined(owners), pairs, await self.scheduler.run_async(pairs, request.deadline))

    def score_request(self, request: ScoreRequest) -> Scores:
        """The sync face of `ascore` (same encoding thread, same slices, same scheduler)."""
        request = self._bounded(request)
        pairs: list[Features] = []
        owners: list[np.ndarray] = []
        for start, stop in self._slices(request):
            slice_pairs, slice_owners = self._encoding.submit(self._encode, request, start, stop).result()
            self._add(request, pairs, owners, slice_pairs, slice_owners)
        logits = self.scheduler.submit(pairs, request.deadline).result()
        return self._collect(request, _joined(owners), pairs, logits)

    def logits(
        self, query: Content, documents: Sequence[Content], instruct: str | None = None, **options
    ) -> np.ndarray:
        """The relevance logit of each document, in order (raw: what every HTTP API calls a score is its sigmoid, as
        `rerank` gives); `options`: further ScoreRequest fields (truncate, max_chunks_per_doc, max_length, ...)."""
        return self.score_request(ScoreRequest(query, documents, instruct, **options)).logits

    def score(self, query: Content, documents: Sequence[Content], instruct: str | None = None, **options) -> np.ndarray:
        """The old name of `logits`, kept working: it returns logits, not the sigmoid the HTTP APIs call a score."""
        return self.logits(query, documents, instruct, **options)

    def rerank(
        self,
        query: Content,
        documents: Sequence[Content],
        top_n: int | None = None,
        raw_scores: bool = False,
        **options,
    ) -> list[Ranked]:
        """Documents best first with their scores (sigmoid(logit), or the logit with raw_scores)."""
        return self.score_request(ScoreRequest(query, documents, **options)).ranked(top_n, raw_scores)

    async def awarm_up(self) -> None:
        """One small batch through every stage, so the first request does not pay for lazy initialisation."""
        await self.ascore(ScoreRequest(*WARM_UP))

    def close(self) -> None:
        """Finish what is queued, then stop the threads."""
        self._stop()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- stages -----------------------------------------------------------------------------------

    def _bounded(self, request: ScoreRequest) -> ScoreRequest:
        """The request within its budgets, checked before any work: documents, pairs, characters per text."""
        self.check_size(len(request.documents))
        if len(request.documents) > self.scheduler.max_queued_pairs:
            raise self._never_fits(request, len(request.documents))
        limit, cut = self.max_text_chars, request.truncate or bool(request.max_chunks_per_doc)

        def fit(content: Content, field: str) -> Content:
            if isinstance(content, str):
                if len(content) <= limit:
                    return content
                if not cut:
                    raise InputError(  # over-long input without truncation: a 400, as for a pair over max_length
                        field, f"{len(content)} characters, over the limit of {limit} per text. Please reduce the "
                        "length of the input. Or send truncate=true to cut it",
                    )  # fmt: skip
                return content[:limit]
            parts = list(content)
            for k, part in enumerate(parts):
                if isinstance(part, Mapping) and isinstance(part.get("text"), str) and len(part["text"]) > limit:
                    parts[k] = {**part, "text": fit(part["text"], f"{field}[{k}]")}
            return parts

        return replace(
            request,
            query=fit(request.query, request.query_field),
            documents=[fit(d, request.document_field(i)) for i, d in enumerate(request.documents)],
            instruct=None if request.instruct is None else fit(request.instruct, "instruct"),
        )

    def _slices(self, request: ScoreRequest) -> Iterator[tuple[int, int]]:
        """[start, stop) ranges of documents, each one encoding job: SLICE_DOCUMENTS and SLICE_CHARS at most."""
        start, chars = 0, 0
        for index, document in enumerate(request.documents):
            size = len(document) if isinstance(document, str) else sum(
                len(p["text"]) if isinstance(p, Mapping) and isinstance(p.get("text"), str) else MEDIA_PART_CHARS
                for p in document
            )  # fmt: skip
            if index > start and (index - start >= SLICE_DOCUMENTS or chars + size > SLICE_CHARS):
                yield start, index
                start, chars = index, 0
            chars += size
        if start < len(request.documents):
            yield start, len(request.documents)

    def _add(self, request, pairs: list, owners: list, new_pairs: list, new_owners: np.ndarray) -> None:
        pairs += new_pairs
        owners.append(new_owners)
        if len(pairs) > self.scheduler.max_queued_pairs:  # chunks: stop encoding as soon as it cannot fit
            raise self._never_fits(request, len(pairs))

    def _never_fits(self, request: ScoreRequest, pairs: int) -> RequestTooLarge:
        field = re.sub(r"\[\d+\][^\[]*$", "", request.document_field(0)) or "documents"
        return RequestTooLarge(
            field,
            f"{pairs}{'+' if pairs > len(request.documents) else ''} pairs (documents and their chunks), more than "
            f"the {self.scheduler.max_queued_pairs} the queue can ever hold; send fewer documents or chunks",
        )

    def _encode(self, request: ScoreRequest, start: int, stop: int) -> tuple[list[Features], np.ndarray]:
        """Documents [start, stop) of the request, encoded; returns the pairs and the document each came from."""
        encoder = self.encoder
        documents, owners = list(request.documents[start:stop]), np.arange(start, stop)
        truncation = request.truncation
        try:
            if request.max_length is not None and request.max_length > encoder.max_length:
                raise InputError(
                    "max_length", f"{request.max_length} is over the model's max_length {encoder.max_length}"
                )
            if truncation != MODEL_LIMITS:
                with_parts = next((i for i, document in enumerate(documents) if not isinstance(document, str)), None)
                if with_parts is not None:
                    raise InputError(
                        f"documents[{with_parts}]",
                        "only text documents can be cut to a token count or from the left; this one is content parts",
                    )
            if request.max_chunks_per_doc:
                documents, owner_list = chunk_documents(
                    encoder, request.query, documents, request.instruct, request.max_chunks_per_doc, truncation
                )
                owners = start + np.asarray(owner_list, dtype=np.int64)
            # chunks are cut to fit; re-tokenised in context one may run a token over, which truncation trims
            truncate = request.truncate or bool(request.max_chunks_per_doc)
            pairs = encoder.encode(request.query, documents, request.instruct, truncate=truncate, truncation=truncation)
        except InputError as exc:
            raise _renamed(exc, request, owners) from exc  # owners: the request's own document indices
        return pairs, owners

    def _collect(
        self, request: ScoreRequest, owners: np.ndarray, pairs: Sequence[Features], logits: np.ndarray
    ) -> Scores:
        per_document = np.full(len(request.documents), -np.inf, dtype=np.float32)
        np.maximum.at(per_document, owners, logits)
        return Scores(per_document, sum(len(p["input_ids"]) for p in pairs), self.family.logit_scores)


def _measured_seconds_per_token(model: LoadedModel) -> float | None:
    """Seconds per token of the self-check's run of the golden set on this machine (None: not run)."""
    check = model.self_check
    return check.seconds / check.tokens if check is not None and check.seconds > 0 and check.tokens else None


def _stop_threads(encoding: ThreadPoolExecutor, scheduler: Scheduler) -> None:
    encoding.shutdown(wait=True)
    scheduler.close()


def _joined(owners: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(owners) if owners else np.empty(0, dtype=np.int64)


def _renamed(error: InputError, request: ScoreRequest, owners: np.ndarray) -> InputError:
    """An encoder's error (fields `query…`, `documents[i]…`, `instruct`) in the client's own field names; the
    encoder's document i is the request's document owners[i]."""
    match = _ENCODER_FIELD.match(error.field)
    if match is None:
        return error
    index, _, rest = match.groups()
    field = request.query_field if index is None else request.document_field(int(owners[int(index)]))
    return type(error)(field + rest, error.message)
