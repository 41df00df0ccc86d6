"""A tiny Qwen3-Reranker converted to sequence classification, as the community conversions are made, and the
conversion card's own scoring (transformers only, no rerankrt code).

`convert_to_seq_cls` does what vLLM's `convert_model_to_seq_cls.py --method from_2_way_softmax` (the method the
tomaarsen/Qwen3-Reranker-*-seq-cls conversions describe) does: the causal LM's body in a one-label
`Qwen3ForSequenceClassification` whose score row is W[yes] - W[no] (fp32), the tokenizer's pad token as the config's,
saved beside the tokenizer. `seq_cls_card_logits` is the card's usage: each pair formatted by its `format_queries` /
`format_document` (the Qwen3-Reranker prompt split before `<Document>`), tokenized as a (query, document) pair, padded
on the side asked, through transformers' `Qwen3ForSequenceClassification`.

    python -m rerankrt.testing.tiny_qwen3_seq_cls /tmp/tiny-qwen3-seq-cls
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from rerankrt.testing.reference import QWEN3_DEFAULT_INSTRUCTION, QWEN3_PREFIX, QWEN3_SUFFIX
from rerankrt.testing.tiny_models import build_qwen3, model_card

BASE_MODEL = "Qwen/Qwen3-Reranker-0.6B"


def convert_to_seq_cls(causal_dir: Path, out: Path, named: bool = True) -> Path:
    """The from_2_way_softmax conversion of the Qwen3 causal LM in `causal_dir` to `out`; `named`: a model card
    naming Qwen/Qwen3-Reranker-0.6B as its base model, as the conversions' cards do."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    causal = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    config = causal.config
    config.num_labels = 1
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.pad_token_id = tokenizer.pad_token_id
    classifier = Qwen3ForSequenceClassification(config).eval()
    classifier.model.load_state_dict(causal.model.state_dict())
    head = causal.get_output_embeddings().weight
    with torch.no_grad():
        classifier.score.weight.copy_((head[yes].float() - head[no].float())[None])
    out = Path(out)
    classifier.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if named:
        model_card(out, BASE_MODEL)
    return out


def build_qwen3_seq_cls(out: Path, seed: int = 0, named: bool = True, tied: bool = True) -> Path:
    """A tiny Qwen3-Reranker (`tiny_models.build_qwen3`, in `out`'s sibling `<name>.causal`) and its conversion."""
    out = Path(out)
    causal = build_qwen3(out.with_name(out.name + ".causal"), tied=tied, seed=seed, named=True)
    return convert_to_seq_cls(causal, out, named=named)


def format_query(query: str, instruction: str | None = None) -> str:
    """The card's first text of a pair: the prompt up to the query and its newline."""
    instruction = QWEN3_DEFAULT_INSTRUCTION if instruction is None else instruction
    return f"{QWEN3_PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n"


def format_document(document: str) -> str:
    """The card's second text of a pair: the document and the assistant turn."""
    return f"<Document>: {document}{QWEN3_SUFFIX}"


def seq_cls_card_logits(
    model_dir: Path, query: str, documents: list[str], instruction: str | None = None, padding_side: str = "left"
) -> np.ndarray:
    """transformers' Qwen3ForSequenceClassification on the card's formatted pairs, padded on `padding_side`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side=padding_side)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    texts = [format_query(query, instruction)] * len(documents), [format_document(doc) for doc in documents]
    inputs = tokenizer(*texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[:, 0].float().numpy()


if __name__ == "__main__":
    print(build_qwen3_seq_cls(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen3-seq-cls")))
