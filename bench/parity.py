"""Largest |Δlogit| of every backend against the model cards' own scoring code, on the tiny test models.

Fresh random queries and documents (1-120 words, so batches are padded and mixed), three rounds each;
prints one line per model and the export-time parity.json figure. The tests assert the 1e-4 bound; this
prints the numbers behind it.

    .venv/bin/python -m bench.parity
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from rerankrt.testing import tiny_models
from rerankrt.testing.reference import cross_encoder_logits, qwen3_card_scores, random_documents, random_text

BUILDERS = {
    "xlmr": tiny_models.build_xlmr,
    "bert": tiny_models.build_bert,
    "qwen3": tiny_models.build_qwen3,
    "qwen3-untied": lambda out: tiny_models.build_qwen3(out, tied=False),
}


def main() -> None:
    from rerankrt.export import export_model
    from rerankrt.runtime import Reranker

    root = Path(tempfile.mkdtemp(prefix="rerankrt-parity-"))
    for name, build in BUILDERS.items():
        model = build(root / name)
        artifact = root / f"{name}-artifact"
        export_model(str(model), artifact)
        rng = np.random.default_rng(123)
        worst: dict[str, float] = {}
        for _ in range(3):
            query, docs = random_text(rng, 2, 12), random_documents(rng, 16, max_words=120)
            reference = qwen3_card_scores(model, query, docs)[1] if name.startswith("qwen3") else None
            if reference is None:
                reference = cross_encoder_logits(model, query, docs)
            for label, path in (("onnxruntime", artifact), ("torch", artifact), ("torch, plain folder", model)):
                with Reranker.load(str(path), backend=label.split(",")[0], max_batch_size=8) as reranker:
                    diff = float(np.abs(reranker.logits(query, docs) - reference).max())
                worst[label] = max(worst.get(label, 0.0), diff)
        exported = json.loads((artifact / "parity.json").read_text())["max_abs_diff"]
        cells = ", ".join(f"{label} {value:.1e}" for label, value in worst.items())
        print(f"{name}: {cells}; export parity.json {exported:.1e}", flush=True)


if __name__ == "__main__":
    main()
