"""Long documents beyond truncation: overlapping chunks that each fit beside the query (Cohere's semantics)."""

from __future__ import annotations

from collections.abc import Sequence

from rerankrt.families import MODEL_LIMITS, Content, PairEncoder, Truncation

OVERLAP = 1 / 4  # consecutive chunks share a quarter of the document budget


def chunk_documents(
    encoder: PairEncoder,
    query: Content,
    documents: Sequence[Content],
    instruct: str | None,
    max_chunks: int,
    truncation: Truncation = MODEL_LIMITS,
) -> tuple[list[Content], list[int]]:
    """Each document split into at most `max_chunks` pieces; returns the pieces and the document each came from.

    A piece holds as many document tokens as fit in `max_length` (the request's, else the encoder's) next to the
    query (and any prompt template); a document that fits stays whole, and text past the last chunk, or past the
    request's `max_tokens_per_doc`, is dropped. The pieces are encoded with the same `truncation`, which trims a
    piece that runs a token over in context. Only text documents are split: one given as content parts
    (multimodal) stays whole, truncated as usual.
    """
    overhead = len(encoder.encode(query, [""], instruct)[0]["input_ids"])
    budget = (truncation.max_length or encoder.max_length) - overhead
    pieces: list[Content] = []
    owners: list[int] = []
    for index, document in enumerate(documents):
        if isinstance(document, str):
            split = _split(encoder, document, budget, max_chunks, truncation.max_tokens_per_doc)
        else:
            split = [document]
        for piece in split:
            pieces.append(piece)
            owners.append(index)
    return pieces, owners


def _split(encoder: PairEncoder, document: str, budget: int, max_chunks: int, max_tokens: int | None) -> list[str]:
    offsets = encoder.tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    offsets = offsets[:max_tokens]
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
