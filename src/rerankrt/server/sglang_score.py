"""SGLang's score API, `POST /v1/score` with `query` and `items`: per item, the probabilities of `label_token_ids`.

SGLang scores `query + item` (or `item + query` with `item_first`) and returns, for each item, the next-token
probabilities of the label tokens (softmaxed over just those tokens with `apply_softmax`). rerankrt's graphs are
trimmed at export to the one relevance logit, so what it can answer depends on the family (`Family.label_tokens`):

- a yes/no reranker, whose logit is logit(yes) - logit(no): `label_token_ids` naming its yes and no tokens (in
  either order) with `apply_softmax: true` gives [P(yes), P(no)] in that order, the model card's softmax over the
  reranker prompt (query in the query slot, item in the document slot; `item_first` swaps them). Any other token
  list, or `apply_softmax: false` (a probability over the whole vocabulary), is a 400 that says why.
- any other reranker (a classification head, or one token's logit): no `label_token_ids`, as SGLang takes for a
  sequence-classification model; each item's score is `[logit]`, or `[sigmoid(logit)]` with `apply_softmax`.

Pre-tokenized `query` / `items` (token ids) are refused: the reranker's template tokenizes the pair itself.
Fields named in errors: `query`, `items[i]`, `label_token_ids`, `apply_softmax`, `items` for the count.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import Field, StrictBool, StrictInt, StrictStr

from rerankrt.server.content import Input
from rerankrt.server.schemas import ScoringOptions
from rerankrt.server.scoring import Scoring
from rerankrt.server.shapes import ApiShape, Claim, refuse, respond


class SGLangScoreRequest(ScoringOptions):
    """SGLang's ScoringRequest."""

    query: StrictStr | list[StrictInt] = Field(description="the query text")
    items: StrictStr | list[StrictStr] | list[list[StrictInt]] = Field(description="item text(s) scored against it")
    label_token_ids: list[StrictInt] | None = Field(None, description="a yes/no reranker's yes and no token ids")
    apply_softmax: StrictBool = Field(False, description="softmax over the label tokens (required with them here)")
    item_first: StrictBool = Field(False, description="the item first in the prompt: in the reranker's query slot")

    model_config = {
        "json_schema_extra": {"examples": [{"query": "what is panda?", "items": ["hi", "The giant panda is a bear."],
                                            "label_token_ids": [9454, 2753], "apply_softmax": True}]}
    }  # fmt: skip


async def score(body: SGLangScoreRequest, request: Request, scoring: Scoring) -> JSONResponse:
    items = [body.items] if isinstance(body.items, str) else body.items
    if not isinstance(body.query, str):
        raise refuse("query", "token ids cannot go through the reranker's prompt template; send the query as text")
    if not body.query:
        raise refuse("query", "must not be empty")
    if not items:
        raise refuse("items", "must hold at least one item")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise refuse(f"items[{i}]", "token ids cannot go through the reranker's prompt template; send text")
    labels = _labels(body, scoring)
    query = Input(body.query, "query")
    inputs = [Input(item, f"items[{i}]") for i, item in enumerate(items)]
    if body.item_first:  # the item in the query slot, the query in the document slot
        result = await scoring.score_pairwise(request, body, inputs, [query] * len(inputs), documents_field="items")
    else:
        result = await scoring.score(request, body, query, inputs, documents_field="items")
    if labels is None:
        values = result.values(raw=not body.apply_softmax)
        scores = [[float(v)] for v in values]
    else:
        yes = result.values()  # sigmoid(logit(yes) - logit(no)) = softmax over [yes, no]
        scores = [[float(p) if token == labels[0] else float(1.0 - p) for token in body.label_token_ids] for p in yes]
    usage = {"prompt_tokens": result.tokens, "completion_tokens": 0, "total_tokens": result.tokens}
    return respond({"scores": scores, "model": scoring.model_name, "usage": usage, "object": "scoring"}, body)


def _labels(body: SGLangScoreRequest, scoring: Scoring) -> tuple[int, int] | None:
    """The family's (yes, no) ids when the request's labels are exactly those; a 400 for what cannot be answered."""
    labels = scoring.reranker.family.label_tokens(scoring.reranker.encoder)
    asked = body.label_token_ids
    if labels is None:
        if asked is not None:
            raise refuse(
                "label_token_ids",
                "this model's graph computes one relevance logit (a classification head or a single token's logit), "
                "not next-token probabilities; omit label_token_ids to get [logit] per item ([sigmoid] with "
                "apply_softmax)",
            )
        return None
    yes, no = labels
    if asked is None:
        raise refuse("label_token_ids", f"is required for this yes/no reranker: send [{yes}, {no}] (yes, no)")
    if sorted(asked) != sorted(labels):
        raise refuse(
            "label_token_ids",
            f"the graph was trimmed at export to this model's yes and no tokens ({yes} and {no}): it gives their "
            f"probabilities only, so send those two ids, not {asked}",
        )
    if not body.apply_softmax:
        raise refuse(
            "apply_softmax",
            "without softmax each label's probability is over the whole vocabulary, which needs the LM head that "
            "export trims to the yes and no rows; send apply_softmax=true for the softmax over the two labels",
        )
    return labels


API = ApiShape(
    "sglang-score", "SGLang's score", model=SGLangScoreRequest, handle=score,
    claims=(
        Claim("/v1/score", fields=("label_token_ids", "query")),  # vLLM's forms have neither
        Claim("/score", fields=("label_token_ids", "query")),
        Claim("/invocations", fields=("label_token_ids", "items")),
    ),
)  # fmt: skip
