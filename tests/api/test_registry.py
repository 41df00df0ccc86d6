"""The API-shape registry (server/registry.py): the shared paths pick the shape an oracle written by hand from the
peers' rules picks, for every combination of body fields and convention; the --rerank-convention choices are the
registry's, the API key covers every shape's own paths, and /ping answers as /health."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from rerankrt.server import create_app, registry
from rerankrt.server.middleware import API_PREFIXES
from rerankrt.server.settings import ServeSettings
from rerankrt.server.shapes import Claim
from tests.fakes import make_model, settings

SCORE_FORMS = ("text_1", "text_2", "queries", "data_1", "data_2")
INFINITY_CLIENT = ("raw_scores", "return_documents", "model")  # what infinity_client always sends
KEYS = ("texts", "documents", "query", "items", "label_token_ids", "passages", *SCORE_FORMS, *INFINITY_CLIENT, "other")
BODIES = [dict.fromkeys(keys, 1) for n in range(len(KEYS) + 1) for keys in itertools.combinations(KEYS, n)]
NOT_OBJECTS = [[], ["texts"], "texts", 1, None]


def oracle(path: str, data, convention: str) -> str | None:
    """Which shape answers, restated by hand from the peers' rules (independent of the registry it checks)."""
    is_object = isinstance(data, dict)
    if path in ("/v1/rerank", "/rerank"):
        if is_object and "texts" in data and "documents" not in data:
            return "tei"
        if path == "/rerank" and is_object and "texts" not in data and all(key in data for key in INFINITY_CLIENT):
            return "infinity"
        if convention == "infinity":
            return "infinity"
        if path == "/v1/rerank":
            return "sglang" if convention == "sglang" else "results v1"
        return "results"
    if path in ("/v1/score", "/score"):
        return "sglang-score" if is_object and ("label_token_ids" in data or "query" in data) else "vllm-score"
    if not is_object:
        return None
    if any(key in data for key in SCORE_FORMS):
        return "vllm-score"
    if "label_token_ids" in data or "items" in data:
        return "sglang-score"
    if "texts" in data:
        return "tei"
    if "passages" in data:
        return "nim"
    return "results" if "documents" in data else None


def picked(path: str, data, convention: str) -> str | None:
    found = registry.pick(path, data, convention)
    if found is None:
        return None
    shape, claim = found
    return f"{shape.name} v1" if claim.handle is not None else shape.name


@pytest.mark.parametrize("convention", ["sglang", "results", "infinity"])
@pytest.mark.parametrize("path", list(registry.SHARED_PATHS))
def test_the_shared_paths_pick_as_before(path, convention):
    wrong = [
        f"{data}: {picked(path, data, convention)}, was {oracle(path, data, convention)}"
        for data in [*BODIES, *NOT_OBJECTS]
        if picked(path, data, convention) != oracle(path, data, convention)
    ]
    assert not wrong, "\n".join(wrong[:10])
    default = oracle(path, {}, convention) or "vllm-score"  # the errors of a body no claim takes: vLLM's
    assert registry.default(path, convention).name == default.removesuffix(" v1")


def test_the_conventions_are_the_registrys():
    field = ServeSettings.model_fields["rerank_convention"]
    assert get_args(field.annotation) == registry.CONVENTIONS and registry.CONVENTIONS[:3] == (
        "sglang",
        "results",
        "infinity",
    )
    assert field.default == "sglang" and all(c in field.description for c in registry.CONVENTIONS)
    with pytest.raises(ValidationError):
        settings(rerank_convention="no-such-convention")


def test_a_claim_says_when_it_takes_a_body():
    with pytest.raises(ValueError, match="needs fields, a convention or fallback"):
        Claim("/rerank")
    with pytest.raises(ValueError, match="`without` narrows `fields` or `all_of`"):
        Claim("/rerank", without=("texts",), convention="x")
    claim = Claim("/rerank", fields=("a", "b"), without=("c",), convention="x")
    assert claim.takes({"b": 1}, "x") and not claim.takes({"b": 1, "c": 1}, "x") and not claim.takes({"b": 1}, "y")
    assert (
        not claim.takes(["a"], "x")
        and claim.describe() == "a body with `a` or `b` and no `c`, with --rerank-convention x"
    )
    every = Claim("/rerank", all_of=("a", "b"), without=("c",))
    assert every.tier == 0 and every.takes({"a": 1, "b": 1}, "y") and not every.takes({"a": 1}, "y")
    assert not every.takes({"a": 1, "b": 1, "c": 1}, "y") and every.describe() == "a body with `a` and `b` and no `c`"
    both = Claim("/rerank", fields=("a", "b"), all_of=("d",))
    assert both.takes({"b": 1, "d": 1}, "y") and not both.takes({"d": 1}, "y") and not both.takes({"a": 1}, "y")


def test_the_api_key_covers_every_shapes_own_paths():
    public = {"/health", "/metrics", "/ping"}  # --public-health, --public-metrics; SageMaker's health check
    paths = {route.path for router in registry.ROUTERS for route in router.routes} - public
    assert {"/v1/rerank", "/v2/rerank", "/predict", "/tokenize", "/models"} <= paths
    assert [path for path in paths if not path.startswith(API_PREFIXES)] == []


def test_ping_answers_as_health():
    with TestClient(create_app(settings(), make_model())) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert client.get("/ping").json() == client.post("/ping").json() == health.json()
