"""The API tests' clients: the app over the in-memory model (tests/fakes.py), one per module that uses it."""

from __future__ import annotations

import pytest

from tests.fakes import NO, YES, client_for


@pytest.fixture(scope="module")
def client():
    """Text model, default settings (/v1/rerank is SGLang's)."""
    with client_for() as client:
        yield client


@pytest.fixture(scope="module")
def media_client():
    """A multimodal model: content parts with images and videos."""
    with client_for(multimodal=True) as client:
        yield client


@pytest.fixture(params=["text", "multimodal"])
def any_client(request, client, media_client):
    return client if request.param == "text" else media_client


@pytest.fixture(scope="module")
def results_client():
    """--rerank-convention results: /v1/rerank is the {results} shape."""
    with client_for(rerank_convention="results") as client:
        yield client


@pytest.fixture(scope="module")
def infinity_client():
    with client_for(rerank_convention="infinity") as client:
        yield client


@pytest.fixture(scope="module")
def yes_no_client():
    """A yes/no family with label tokens (YES, NO)."""
    with client_for(labels=(YES, NO)) as client:
        yield client
