"""text-embeddings-inference's rerank API: `POST /rerank` with `texts` (on any rerank path), and `POST /predict`.

`/rerank`: `query`, `texts`, `raw_scores` (the logit instead of sigmoid), `return_text`, `truncate` (null: this
server's default, true) and `truncation_direction` (`Right` keeps a text's first tokens, `Left` its last); the
answer is TEI's list `[{"index", "score", "text"?}]`, best first, equal scores the later text first as TEI sorts
them (`top_n`, which TEI does not define but LiteLLM's
`huggingface/` provider sends, keeps the n best). `/predict` scores `[query, document]` pairs with
a sequence-classification model: `inputs` is one pair or a list of pairs, answered `[{"score", "label"}]` per pair
(`label` is `LABEL_0`, the one label of a one-logit head). Errors come in TEI's body, `{"error", "error_type"}`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field, StrictBool, StrictInt, StrictStr

from rerankrt.server.content import Input
from rerankrt.server.schemas import NonEmptyStr, ScoringOptions
from rerankrt.server.scoring import Scoring, ScoringService
from rerankrt.server.shapes import ApiShape, Claim, refuse, respond, shaped_route, tei_shape

LABEL = "LABEL_0"  # the id2label entry of a one-label classification head


class TruncationOptions(ScoringOptions):
    truncate: StrictBool | None = Field(None, description="cut over-long pairs (null: the server's default, true)")
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        "Right", description="Right keeps a text's first tokens, Left its last"
    )
    raw_scores: StrictBool = Field(False, description="the logit instead of sigmoid(logit)")

    def scoring_body(self):
        return self.model_copy(update={"truncate": True if self.truncate is None else self.truncate})

    @property
    def side(self) -> str:
        return self.truncation_direction.lower()


class TEIRerankRequest(TruncationOptions):
    """TEI's RerankRequest."""

    query: NonEmptyStr
    texts: list[StrictStr] = Field(min_length=1)
    return_text: StrictBool = Field(False, description="include each text in the results")
    top_n: StrictInt | None = Field(None, ge=0, description="extension (LiteLLM sends it): the n best (0: all)")

    model_config = {"json_schema_extra": {"examples": [{"query": "what is panda?", "texts": ["hi", "a bear"]}]}}


class TEIPredictRequest(TruncationOptions):
    """TEI's PredictRequest, for a pair classifier: one [query, document] pair or a list of them."""

    inputs: list[StrictStr] | list[list[StrictStr]] | StrictStr


async def rerank(body: TEIRerankRequest, request: Request, scoring: Scoring) -> JSONResponse:
    texts = [Input(t, f"texts[{i}]") for i, t in enumerate(body.texts)]
    result = await scoring.score(
        request, body.scoring_body(), Input(body.query, "query"), texts, "texts", truncation_side=body.side
    )
    ranks = []
    ties_last_first = sorted(result.ranked(None, body.raw_scores), key=lambda r: (-r.score, -r.index))  # as TEI
    for r in ties_last_first[: body.top_n or None]:
        rank = {"index": r.index, "score": r.score}
        if body.return_text:
            rank["text"] = body.texts[r.index]
        ranks.append(rank)
    return respond(ranks, body)


router = APIRouter(route_class=shaped_route(tei_shape))


@router.post("/predict", summary="Predict (text-embeddings-inference shape)")
async def predict(body: TEIPredictRequest, request: Request, scoring: ScoringService) -> JSONResponse:
    """Sequence-classification scores of [query, document] pairs: `[{score, label}]` per pair."""
    single = isinstance(body.inputs, list) and all(isinstance(x, str) for x in body.inputs)
    pairs = [body.inputs] if single else body.inputs
    if isinstance(pairs, str) or not pairs:
        raise refuse("inputs", "this model scores [query, document] pairs: send one pair or a list of pairs")
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            field = "inputs" if single else f"inputs[{i}]"
            raise refuse(field, f"a pair is [query, document]; got {len(pair)} texts")
    prefix = (lambda i: "inputs") if single else (lambda i: f"inputs[{i}]")
    queries = [Input(p[0], f"{prefix(i)}[0]") for i, p in enumerate(pairs)]
    documents = [Input(p[1], f"{prefix(i)}[1]") for i, p in enumerate(pairs)]
    result = await scoring.score_pairwise(
        request, body.scoring_body(), queries, documents, "inputs", truncation_side=body.side
    )
    predictions = [[{"score": float(v), "label": LABEL}] for v in result.values(body.raw_scores)]
    return respond(predictions[0] if single else predictions, body)


API = ApiShape(
    "tei", "TEI's rerank", router=router, model=TEIRerankRequest, handle=rerank, errors=tei_shape,
    claims=(
        Claim("/v1/rerank", fields=("texts",), without=("documents",)),
        Claim("/rerank", fields=("texts",), without=("documents",)),
        Claim("/invocations", fields=("texts",)),
    ),
)  # fmt: skip
