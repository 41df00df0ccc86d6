"""Per-request truncation is exact: `max_length` (vLLM's truncate_prompt_tokens), `max_tokens_per_doc`
and `truncation_side` cut the document's tokens as the tokenizer made them beside the query, in one encoding.

Unit tier: each text family's encoder on its tiny offline tokenizer, behind the real reranker with a backend that
records the rows it is given. Every expected pair is the whole prompt's tokens less exactly the document tokens
that must go: the query, the prompt template and the special tokens stay as they are.
"""

from __future__ import annotations

import numpy as np
import pytest

from rerankrt.errors import InputError
from rerankrt.families import Truncation, get_family
from rerankrt.families.bge_gemma import (
    PASSAGE_PREFIX,
    PROMPT,
    QUERY_PREFIX,
    SEP,
    BgeGemmaPairEncoder,
    prompt_overhead,
)
from rerankrt.precision import Precision
from rerankrt.runtime import Reranker, ScoreRequest
from rerankrt.runtime.loader import LoadedModel
from rerankrt.runtime.plan import ServingPlan
from rerankrt.testing.tiny_gemma import build_gemma_tokenizer
from tests.fakes import settings

MAX_LENGTH = 160  # the encoders' own limit: long documents below run past it
GEMMA_MAX_LENGTH = 2048  # FlagEmbedding's own cut (tests/test_gemma_family.py) leaves every document below whole
QUERY = "what is the giant panda?"
WORDS = "Paris is the capital of France. The giant panda is a bear species endemic to China. "
ADVERSARIAL = {  # texts whose tokens merge differently when the text is cut and tokenized again
    "words": WORDS * 12,
    "long words": "antidisestablishmentarianism pneumonoultramicroscopic " * 12,
    "accents": "café naïve résumé Ångström façade crème brûlée " * 10,
    "emoji": "🐼🐼 bears 👩‍👩‍👧‍👦 family 🇨🇳 flag 🎋🎍 " * 10,
    "cjk": "熊猫是中国特有的熊科动物，主要栖息在四川、陕西和甘肃的山区。" * 6,
    "whitespace": "a      b\n\n\n\t\t  c " * 12 + "   \u3000\u00a0 end",
    "punctuation": "!!!???...,,,;;;---'''\"\"\"((()))[[[]]] " * 12,
    "digits": "3.14159265358979 2718281828 1e-10 0x7fff " * 10,
    "mixed": "Panda🐼熊猫 café!!! \t\n " * 16,
}


class RecordingBackend:
    name, device = "fake", "cpu"

    def __init__(self):
        self.rows: list[list[int]] = []

    def run(self, batch):
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            self.rows.append(ids[mask.astype(bool)].tolist())
        return np.zeros(len(batch["input_ids"]), dtype=np.float32)


# --- the whole prompt and where its document is, family by family -----------------------------------


def cross_encoder_prompt(encoder, query: str, document: str) -> tuple[list[int], list[int]]:
    encoded = encoder.tokenizer(query, document)
    return encoded["input_ids"], [t for t, s in enumerate(encoded.sequence_ids()) if s == 1]


def template_prompt(encoder, query, document) -> tuple[list[int], list[int]]:
    template = getattr(encoder, "template", None) or encoder.prompt
    text, _, doc_spans = template.render(query, document, None)
    encoded = encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = [t for t, (s, e) in enumerate(encoded["offset_mapping"]) if any(s < b and e > a for a, b in doc_spans)]
    return encoded["input_ids"], inside


def vl_prompt(encoder, query: str, document: str) -> tuple[list[int], list[int]]:
    return template_prompt(encoder, [{"type": "text", "text": query}], [{"type": "text", "text": document}])


def gemma_prompt(encoder, query: str, document: str) -> tuple[list[int], list[int]]:
    tokenizer = encoder.tokenizer

    def tokens(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    first = [tokenizer.bos_token_id, *tokens(QUERY_PREFIX + query), *tokens(SEP)]
    passage = tokenizer(PASSAGE_PREFIX + document, add_special_tokens=False, return_offsets_mapping=True)
    inside = [len(first) + t for t, (_, e) in enumerate(passage["offset_mapping"]) if e > len(PASSAGE_PREFIX)]
    return first + passage["input_ids"] + tokens(SEP) + tokens(PROMPT), inside


def load(arch: str, tokenizer_dirs):
    """(family name, encoder, whole prompt) of one text family on its tiny tokenizer."""
    if arch == "gemma":
        tokenizer = build_gemma_tokenizer()
        return "bge-gemma-yes", BgeGemmaPairEncoder(tokenizer, GEMMA_MAX_LENGTH), gemma_prompt
    family = {"qwen3": "qwen3-yes-no", "qwen3-vl": "qwen3-vl-yes-no"}.get(arch, "cross-encoder")
    encoder = get_family(family).load_encoder(tokenizer_dirs[arch], max_length=MAX_LENGTH)
    prompt = {"qwen3": template_prompt, "qwen3-vl": vl_prompt}.get(arch, cross_encoder_prompt)
    return family, encoder, prompt


@pytest.fixture(scope="module", params=["xlmr", "bert", "qwen3", "qwen3-vl", "gemma"])
def text_family(request, tokenizer_dirs):
    family, encoder, prompt = load(request.param, tokenizer_dirs)
    backend = RecordingBackend()
    plan = ServingPlan(backend="fake", device="cpu", precision=Precision.FP32)
    model = LoadedModel(get_family(family), encoder, backend, plan, name=f"{request.param}-truncation")
    reranker = Reranker(model, settings(max_documents_per_request=100))
    yield request.param, reranker, backend, prompt
    reranker.close()


def served(reranker, backend, document: str, **options) -> list[int]:
    """The one row the reranker sends to the model for `document`."""
    backend.rows.clear()
    reranker.score_request(ScoreRequest(QUERY, [document], **options))
    (row,) = backend.rows
    return row


def expected(ids: list[int], document: list[int], limit: int, side: str, per_doc: int | None) -> list[int]:
    """The whole prompt less the document tokens that must go: past its first `per_doc`, then on `side` until the
    pair holds `limit` tokens."""
    stop = len(document) if per_doc is None else min(len(document), per_doc)
    over = min(stop, max(0, len(ids) - len(document) + stop - limit))
    kept = document[over:stop] if side == "left" else document[: stop - over]
    dropped = set(document) - set(kept)
    return [token for t, token in enumerate(ids) if t not in dropped]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("text", sorted(ADVERSARIAL))
def test_max_length_cuts_the_document_to_exactly_the_limit(text_family, text, side):
    arch, reranker, backend, prompt = text_family
    ids, document = prompt(reranker.encoder, QUERY, ADVERSARIAL[text])
    overhead = len(ids) - len(document)
    for limit in (overhead + 1, overhead + 7, overhead + 40, len(ids) - 1, len(ids), len(ids) + 5):
        if limit > reranker.encoder.max_length:
            continue
        row = served(reranker, backend, ADVERSARIAL[text], max_length=limit, truncation_side=side)
        assert len(row) <= limit
        if len(ids) >= limit:
            assert len(row) == limit, f"{arch}: {len(row)} tokens for max_length {limit}"
        assert row == expected(ids, document, limit, side, None)


@pytest.mark.parametrize("text", sorted(ADVERSARIAL))
def test_max_tokens_per_doc_keeps_exactly_n_document_tokens(text_family, text):
    _, reranker, backend, prompt = text_family
    ids, document = prompt(reranker.encoder, QUERY, ADVERSARIAL[text])
    limit = reranker.encoder.max_length
    room = limit - (len(ids) - len(document))  # document tokens that fit beside the query
    for n in (1, 2, 5, 13, room - 1, room, len(document), len(document) + 3):
        row = served(reranker, backend, ADVERSARIAL[text], max_tokens_per_doc=n, max_length=limit)
        assert len(row) == len(ids) - len(document) + min(n, len(document), room)
        assert row == expected(ids, document, limit, "right", n)


@pytest.mark.parametrize("text", ["emoji", "cjk", "whitespace"])
def test_the_models_own_limit_cuts_either_side(text_family, text):
    arch, reranker, backend, prompt = text_family
    if arch == "gemma":
        pytest.skip("FlagEmbedding's own cut (tests/test_gemma_family.py)")
    document = ADVERSARIAL[text] * 8
    ids, positions = prompt(reranker.encoder, QUERY, document)
    assert len(ids) > MAX_LENGTH
    for side in ("right", "left"):
        row = served(reranker, backend, document, truncation_side=side)
        assert row == expected(ids, positions, MAX_LENGTH, side, None)


def test_a_limit_the_query_and_prompt_alone_exceed_is_refused(text_family):
    _, reranker, backend, prompt = text_family
    ids, document = prompt(reranker.encoder, QUERY, "a short document")
    overhead = len(ids) - len(document)
    served(reranker, backend, "a short document", max_length=overhead)  # an empty document still fits
    with pytest.raises(InputError, match="the query and the prompt alone are over") as error:
        served(reranker, backend, "a short document", max_length=overhead - 1)
    assert error.value.field == "max_length"


def test_gemma_left_side_keeps_flagembeddings_length():
    """bge-reranker-v2-gemma: FlagEmbedding's own cut sets the length; the request's side picks the tokens kept."""
    tokenizer = build_gemma_tokenizer()
    encoder = BgeGemmaPairEncoder(tokenizer, 40 + prompt_overhead(tokenizer))
    for text in sorted(ADVERSARIAL):
        (flag,) = encoder.encode(QUERY, [ADVERSARIAL[text]])
        ids, document = gemma_prompt(encoder, QUERY, ADVERSARIAL[text])
        (left,) = encoder.encode(QUERY, [ADVERSARIAL[text]], truncation=Truncation(side="left"))
        assert left["input_ids"].tolist() == expected(ids, document, len(flag["input_ids"]), "left", None)
        (right,) = encoder.encode(QUERY, [ADVERSARIAL[text]], truncation=Truncation(max_length=encoder.max_length))
        assert right["input_ids"].tolist() == flag["input_ids"].tolist()


def test_chunks_fit_the_requests_max_length(text_family):
    _, reranker, backend, prompt = text_family
    ids, document = prompt(reranker.encoder, QUERY, ADVERSARIAL["words"])
    limit = len(ids) - len(document) + 20
    backend.rows.clear()
    reranker.score_request(ScoreRequest(QUERY, [ADVERSARIAL["words"]], max_chunks_per_doc=3, max_length=limit))
    assert len(backend.rows) == 3 and all(len(row) <= limit for row in backend.rows)
