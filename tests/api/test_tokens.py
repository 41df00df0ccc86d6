"""/tokenize and /detokenize (`server/tokens.py`), with and without /v1."""

from __future__ import annotations

import pytest

from tests.support import peer_error


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_tokenize_and_detokenize(client, prefix):
    tokens = client.post(f"{prefix}/tokenize", json={"prompt": "the panda", "return_token_strs": True}).json()
    assert tokens["count"] == 4 and tokens["max_model_len"] == 16 and tokens["tokens"][0] == 1
    assert tokens["token_strs"] == ["[CLS]", "the", "panda", "[SEP]"]
    plain = client.post(f"{prefix}/tokenize", json={"prompt": ["the panda", "hi"], "add_special_tokens": False})
    assert plain.json()["count"] == [2, 1]
    text = client.post(f"{prefix}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert text == {"prompt": "[CLS] the panda [SEP]", "text": "the panda"}
    chat = client.post(f"{prefix}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert "chat template" in peer_error(chat, 400, "messages")
    assert "not a token id" in peer_error(
        client.post(f"{prefix}/detokenize", json={"tokens": [10**6]}), 400, "tokens[0]"
    )
