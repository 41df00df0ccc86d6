"""An independent MaxSim reference for the colbert family, written from PyLate 1.6.0's source (ColBERT.tokenize,
ColBERT.encode, pylate.scores.colbert_scores) with transformers and the Dense weights alone: what CI compares the
exported graphs and the served scores with (PyLate itself pins another sentence-transformers; tests/test_colbert.py
has the marked test against it).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer


class ReferenceColbert:
    """PyLate's encoding and scoring, one text at a time (no padding at all)."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        st = json.loads((folder / "config_sentence_transformers.json").read_text())
        self.query_length, self.document_length = st.get("query_length", 32), st.get("document_length", 180)
        self.expansion = st.get("do_query_expansion", True)
        self.attend = st.get("attend_to_expansion_tokens", False) and self.expansion
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.q_id = self.tokenizer.convert_tokens_to_ids(st.get("query_prefix", "[Q] "))
        self.d_id = self.tokenizer.convert_tokens_to_ids(st.get("document_prefix", "[D] "))
        transformer = folder / "sentence_bert_config.json"
        self.lower = transformer.is_file() and json.loads(transformer.read_text()).get("do_lower_case", False)
        self.skip = {self.tokenizer.convert_tokens_to_ids(w) for w in st.get("skiplist_words", string.punctuation)}
        self.model = AutoModel.from_pretrained(folder).eval()
        modules = json.loads((folder / "modules.json").read_text())
        self.denses = []
        for module in modules[1:]:
            weights = load_file(str(folder / module["path"] / "model.safetensors"))
            self.denses.append((weights["linear.weight"], weights.get("linear.bias")))

    def _embed(self, ids: list[int], mask: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            ids_t, mask_t = torch.tensor([ids]), torch.tensor([mask])
            hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state[0]
            for weight, bias in self.denses:
                hidden = torch.nn.functional.linear(hidden, weight, bias)
            return torch.nn.functional.normalize(hidden, p=2, dim=1)

    def _text(self, text: str) -> str:
        """sentence-transformers' Transformer.tokenize: stripped, lower-cased with do_lower_case."""
        return text.strip().lower() if self.lower else text.strip()

    def query(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(self._text(text), truncation=True, max_length=self.query_length - 1)["input_ids"]
        mask = [1] * len(ids)
        if self.expansion:
            pad = self.query_length - 1 - len(ids)
            ids, mask = ids + [self.tokenizer.mask_token_id] * pad, mask + [0] * pad
        ids, mask = [ids[0], self.q_id, *ids[1:]], [1, 1, *mask[1:]]
        if self.attend:
            mask = [1] * len(mask)
        embedded = self._embed(ids, mask)
        return embedded if self.expansion else embedded[torch.tensor(mask, dtype=torch.bool)]

    def document(self, text: str, max_length: int | None = None) -> torch.Tensor:
        length = max_length or self.document_length
        ids = self.tokenizer(self._text(text), truncation=True, max_length=length - 1)["input_ids"]
        ids = [ids[0], self.d_id, *ids[1:]]
        kept = torch.tensor([i not in self.skip for i in ids])
        return self._embed(ids, [1] * len(ids))[kept]

    def scores(self, query: str, documents: list[str], max_length: int | None = None) -> list[float]:
        q = self.query(query)
        return [float((q @ self.document(d, max_length).T).max(dim=1).values.sum()) for d in documents]
