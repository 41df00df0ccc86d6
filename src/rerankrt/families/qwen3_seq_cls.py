"""Qwen3-Reranker converted to sequence classification (tomaarsen/Qwen3-Reranker-0.6B-seq-cls, -4B, -8B, copies and
fine-tunes of them): `Qwen3ForSequenceClassification` with one label, scored with the Qwen3-Reranker prompt.

The conversion (vLLM's `convert_model_to_seq_cls.py`, method `from_2_way_softmax`, from the Qwen3-Reranker discussion
it cites) keeps the Qwen3 body and replaces the LM head by one row, W[yes] - W[no]: the head's logit is the original
reranker's logit(yes) - logit(no) at the last token, and sentence-transformers' CrossEncoder, which the card calls,
applies a sigmoid (its default for one label), giving the original's softmax([no, yes])[1]. The card still formats
every pair with the Qwen3-Reranker prompt: `format_queries` (the system line, `<Instruct>: {instruction}`,
`<Query>: {query}`, default instruction as the original's) and `format_document` (`<Document>: {document}` and the
assistant turn with the empty think block), passed as a (query, document) pair. Qwen's tokenizer adds no special
tokens to a pair, and its pre-tokenizer splits at the newline before `<Document>`, so the pair's ids are the whole
prompt's ids: the prompt the `qwen3-yes-no` family renders.

So this family is `qwen3-yes-no` with the head already folded by the conversion: the same template (`instruct`
applies, `--chat-template` replaces it), truncation order (document, then query), left padding, prefix reuse
(decoder.onnx), and the model loaded as saved. transformers' class pools the last token that is not the pad token,
which is the prompt's last token under left or right padding.

Recognition claims only what is certain: `Qwen3ForSequenceClassification` with one label and the name Qwen3-Reranker
(Hub id, folder, `_name_or_path`, or the model card's `base_model` / title). The cross-encoder family does not claim
this architecture, so one without the name is refused: whether it wants the prompt is not known. `--family
qwen3-seq-cls` forces the prompt, `--family cross-encoder` the plain tokenizer pair.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import PairEncoder, load_fast_tokenizer, named
from rerankrt.families.cross_encoder import num_labels
from rerankrt.families.qwen3_yes_no import NAME_PATTERN, Qwen3YesNoFamily
from rerankrt.families.yes_no import pad_token_id
from rerankrt.model_source import read_config

ARCHITECTURE = "Qwen3ForSequenceClassification"


class Qwen3SeqClsFamily(Qwen3YesNoFamily):
    name = "qwen3-seq-cls"
    whole_reference = "transformers Qwen3ForSequenceClassification (the conversion's head), whole pairs, fp32, cpu"

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        if ARCHITECTURE not in (config.get("architectures") or []) or num_labels(config) != 1:
            return None
        name = named(model_dir, config, NAME_PATTERN)
        if name is None:
            return None
        return f"{ARCHITECTURE} with one label, a Qwen3-Reranker conversion by name {name!r}: its prompt applies"

    @classmethod
    def describe(cls) -> str:
        return (
            f"{cls.name}: Qwen3-Reranker converted to sequence classification ({ARCHITECTURE} with one label named "
            "Qwen3-Reranker; scored with its prompt. One trained on plain pairs: --family cross-encoder)"
        )

    def label_tokens(self, encoder: PairEncoder) -> None:
        """The logit is the conversion's head, which has no token ids to name (a fine-tune's need not be yes - no)."""
        return None

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        labels = num_labels(read_config(model_dir))
        if labels != 1:
            raise UnsupportedModelError(f"{model_dir}: the classification head has {labels} labels; it needs 1")
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype, trust_remote_code=False)
        if not isinstance(getattr(model, "score", None), torch.nn.Linear) or not hasattr(model, "model"):
            raise UnsupportedModelError(
                f"{model_dir}: {type(model).__name__} is not a decoder's sequence classifier (a `score` head on the "
                "last token); the prompt families need one"
            )
        if model.config.pad_token_id is None:  # transformers pools the last non-pad token: it needs to know pad
            model.config.pad_token_id = pad_token_id(load_fast_tokenizer(model_dir))
        return model.eval()
