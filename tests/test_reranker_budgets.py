"""A Reranker's budgets come before its work, and no request holds the encoding thread against others:
characters per text before tokenizing, 413 for what can never fit the queue, encoding in slices
that interleave across requests and stop when the request is cancelled."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient

from rerankrt.errors import InputError
from rerankrt.families import get_family
from rerankrt.precision import Precision
from rerankrt.runtime import Reranker, ScoreRequest
from rerankrt.runtime.loader import LoadedModel
from rerankrt.runtime.plan import ServingPlan
from rerankrt.runtime.reranker import SLICE_DOCUMENTS, TEXT_CHARS_PER_TOKEN, RequestTooLarge
from rerankrt.server import create_app
from tests.fakes import LONG, MAX_LENGTH, WordEncoder, ZeroBackend, make_model, settings


class Spy:
    """Wraps an encoder's `encode`, recording the longest text it was given and how many documents, in order."""

    def __init__(self, encoder, delay: float = 0.0):
        self.encoder, self.delay = encoder, delay
        self.longest, self.documents, self.calls = 0, 0, []
        inner = encoder.encode

        def encode(query, documents, instruct=None, **options):
            texts = [query, *documents, instruct or ""]
            self.longest = max(self.longest, *(len(t) for t in texts if isinstance(t, str)))
            self.calls.append(len(documents))
            time.sleep(self.delay * len(documents))
            self.documents += len(documents)
            return inner(query, documents, instruct, **options)

        encoder.encode = encode


def make_reranker(encoder, **options) -> Reranker:
    plan = ServingPlan(backend="fake", device="cpu", precision=Precision.FP32)
    model = LoadedModel(get_family("cross-encoder"), encoder, ZeroBackend(), plan, name="budget-test")
    return Reranker(model, settings(max_documents_per_request=2000, **options))


@pytest.fixture(scope="module")
def xlmr_encoder(tokenizer_dirs):
    """The tiny cross-encoder's real tokenizer (max_length 512), no weights."""
    return get_family("cross-encoder").load_encoder(tokenizer_dirs["xlmr"])


# --- characters per text, before tokenizing ----------------------------------------------------------


def test_a_huge_single_word_is_cut_before_the_tokenizer_sees_it(xlmr_encoder):
    spy = Spy(xlmr_encoder)
    reranker = make_reranker(xlmr_encoder)
    limit = TEXT_CHARS_PER_TOKEN * xlmr_encoder.max_length
    try:
        scores = reranker.logits("q", ["a" * 200_000, "short"])  # 28 MB of this took 9.6 GB to tokenize
        assert len(scores) == 2
        assert spy.longest == limit
    finally:
        reranker.close()
        del xlmr_encoder.encode


def test_without_truncation_an_over_long_text_is_refused_before_tokenizing(xlmr_encoder):
    spy = Spy(xlmr_encoder)
    reranker = make_reranker(xlmr_encoder, max_text_chars=1000)
    try:
        for request, field in [
            (ScoreRequest("q", ["ok", "x" * 1001], truncate=False), "documents[1]"),
            (ScoreRequest("q" * 1001, ["ok"], truncate=False), "query"),
            (ScoreRequest("q", ["ok"], instruct="i" * 1001, truncate=False), "instruct"),
        ]:
            with pytest.raises(InputError, match="1001 characters, over the limit of 1000") as info:
                reranker.score_request(request)
            assert info.value.field == field
        assert spy.calls == []
        reranker.logits("q", ["x" * 5000], max_chunks_per_doc=3)  # chunking cuts too
        assert spy.longest <= 1000
    finally:
        reranker.close()
        del xlmr_encoder.encode


def test_text_parts_are_cut_too():
    encoder = WordEncoder(max_length=10**6)
    spy = Spy(encoder)
    reranker = make_reranker(encoder, max_text_chars=100)
    try:
        reranker.logits([{"type": "text", "text": "w " * 500}], [[{"type": "text", "text": "d " * 500}]])
        assert spy.longest <= 1  # the query and document are part lists; their texts were cut
        with pytest.raises(InputError) as info:
            reranker.logits("q", ["d", [{"type": "text", "text": "d " * 500}]], truncate=False)
        assert info.value.field == "documents[1][0]"
    finally:
        reranker.close()


def test_the_character_limit_follows_max_length_and_is_a_setting():
    assert make_reranker(WordEncoder(max_length=100)).max_text_chars == TEXT_CHARS_PER_TOKEN * 100
    assert make_reranker(WordEncoder(), max_text_chars=77).max_text_chars == 77


# --- what can never fit the queue is a 413 --------------------------------------------------------------


def test_more_pairs_than_the_queue_holds_is_a_413_not_a_503():
    config = settings(max_documents_per_request=1000, max_queued_pairs=50)
    with TestClient(create_app(config, make_model())) as client:
        chunked = client.post("/v1/rerank", json={"query": "q", "documents": [LONG] * 30, "max_chunks_per_doc": 5})
        assert chunked.status_code == 413 and "retry-after" not in chunked.headers, chunked.text
        assert chunked.json()["param"] == "documents" and "the 50 the queue can ever hold" in chunked.json()["message"]
        many = client.post("/v1/score", json={"text_1": "q", "text_2": ["d"] * 51})
        assert many.status_code == 413 and many.json()["error"]["param"] == "text_2"  # vLLM's error body
        fits = client.post("/v1/rerank", json={"query": "q", "documents": [LONG] * 10, "max_chunks_per_doc": 5})
        assert fits.status_code == 200  # 10 documents x 3 chunks


def test_a_request_past_the_queue_stops_encoding_early():
    encoder = WordEncoder()
    spy = Spy(encoder)
    reranker = make_reranker(encoder, max_queued_pairs=40)
    try:
        with pytest.raises(RequestTooLarge, match="the 40 the queue can ever hold"):
            reranker.logits("q", [LONG] * 400, max_chunks_per_doc=3)
        assert spy.documents < 100
    finally:
        reranker.close()


# --- one large request does not hold the encoding thread -----------------------------------------------


def test_a_small_request_is_not_stuck_behind_a_large_one():
    encoder = WordEncoder()
    Spy(encoder, delay=0.002)  # 2 ms per document: the large request takes about 2 s to encode
    reranker = make_reranker(encoder, max_queued_pairs=10_000)

    async def main():
        large = asyncio.ensure_future(reranker.ascore(ScoreRequest("q", [f"document {i}" for i in range(1000)])))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await reranker.ascore(ScoreRequest("q", ["a small one"]))
        small = time.monotonic() - started
        await large
        return small

    try:
        small = asyncio.run(main())
    finally:
        reranker.close()
    assert small < 0.5, f"the small request waited {small:.2f} s for the large one"


def test_a_cancelled_request_stops_encoding_at_the_next_slice():
    encoder = WordEncoder()
    spy = Spy(encoder, delay=0.002)
    reranker = make_reranker(encoder, max_queued_pairs=10_000)

    async def main():
        task = asyncio.ensure_future(reranker.ascore(ScoreRequest("q", [f"d {i}" for i in range(2000)])))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        encoded = spy.documents
        await asyncio.sleep(0.3)
        return encoded, spy.documents

    try:
        at_cancel, later = asyncio.run(main())
    finally:
        reranker.close()
    assert later <= at_cancel + SLICE_DOCUMENTS and later < 500, (at_cancel, later)
    assert max(spy.calls) <= SLICE_DOCUMENTS


def test_slices_keep_results_in_order_and_errors_named():
    reranker = make_reranker(WordEncoder(max_length=MAX_LENGTH))
    try:
        documents = [f"q w{i}" if i % 7 else "q" for i in range(100)]
        assert reranker.logits("q", documents).shape == (100,)
        with pytest.raises(Exception) as info:
            reranker.logits("q", ["short"] * 40 + [LONG], truncate=False)
        assert info.value.field == "documents[40]"
        chunked = reranker.score_request(ScoreRequest("q", ["x"] * 30 + [LONG], max_chunks_per_doc=3))
        assert chunked.logits.shape == (31,)
    finally:
        reranker.close()
