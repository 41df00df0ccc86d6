"""Long documents beyond truncation: overlapping chunks that each fit beside the query (Cohere's semantics)."""

from __future__ import annotations

from collections.abc import Sequence

from rerankrt.families import Content, PairEncoder

OVERLAP = 1 / 4  # consecutive chunks share a quarter of the document budget


def chunk_documents(
    encoder: PairEncoder, query: Content, documents: Sequence[Content], instruct: str | None, max_chunks: int
) -> tuple[list[Content], list[int]]:
    """Each document split into at most `max_chunks` pieces; returns the pieces and the document each came from.

    A piece holds as many document tokens as fit in `max_length` next to the query (and any
    prompt template); a document that fits stays whole, and text past the last chunk is dropped.
    Only text documents are split: one given as content parts (multimodal) stays whole, truncated as usual.
    """
    overhead = len(encoder.encode(query, [""], instruct)[0]["input_ids"])
    budget = encoder.max_length - overhead
    pieces: list[Content] = []
    owners: list[int] = []
    for index, document in enumerate(documents):
        for piece in _split(encoder, document, budget, max_chunks) if isinstance(document, str) else [document]:
            pieces.append(piece)
            owners.append(index)
    return pieces, owners


def _split(encoder: PairEncoder, document: str, budget: int, max_chunks: int) -> list[str]:
    offsets = encoder.tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if budget < 1 or len(offsets) <= budget:
        return [document]
    stride = max(1, int(budget * (1 - OVERLAP)))
    pieces = []
    for start in range(0, len(offsets), stride):
        end = min(start + budget, len(offsets))
        pieces.append(document[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets) or len(pieces) == max_chunks:
            break
    return pieces


def cut_documents(
    encoder: PairEncoder,
    query: Content,
    documents: Sequence[Content],
    instruct: str | None,
    *,
    max_tokens_per_doc: int | None = None,
    max_length: int | None = None,
    side: str = "right",
) -> tuple[list[Content], list[int]]:
    """Text documents cut before encoding, at token boundaries of the encoder's tokenizer.

    `max_tokens_per_doc` keeps a document's first N tokens (Cohere's and vLLM's field). `max_length` (vLLM's
    `truncate_prompt_tokens`, at most the model's) and `side="left"` (TEI's `truncation_direction`) cut a
    document that does not fit beside the query and the prompt template, keeping its first tokens (right) or its
    last ones (left). Returns the documents and the indices of those given as content parts, which are not cut
    (the caller decides whether that is an error).
    """
    limit = max_length or encoder.max_length
    budget = None
    if max_length is not None or side == "left":
        budget = limit - len(encoder.encode(query, [""], instruct)[0]["input_ids"])
    cut: list[Content] = []
    whole: list[int] = []
    for index, document in enumerate(documents):
        if not isinstance(document, str):
            whole.append(index)
            cut.append(document)
            continue
        if max_tokens_per_doc is not None:
            document = keep_tokens(encoder, document, max_tokens_per_doc, "right")
        if budget is not None and budget >= 1:
            document = keep_tokens(encoder, document, budget, side)
        cut.append(document)
    return cut, whole


def keep_tokens(encoder: PairEncoder, document: str, tokens: int, side: str) -> str:
    """`document`'s first (side right) or last (left) `tokens` tokens, cut at a token boundary."""
    offsets = encoder.tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= tokens:
        return document
    if side == "left":
        return document[offsets[len(offsets) - tokens][0] :]
    return document[: offsets[tokens - 1][1]]
