"""Largest |Δscore| of every backend's MaxSim against the independent reference (transformers + the Dense weights,
`rerankrt.testing.reference_colbert`), on the tiny BERT and ModernBERT ColBERT models: fresh random queries and
documents (0-80 words with punctuation, so batches are padded and mixed), three rounds, each scored twice (the
second from the document cache). The tests assert the 1e-4 bound; this prints the numbers behind it.

    .venv/bin/python -m bench.colbert_parity
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from rerankrt.testing.reference_colbert import ReferenceColbert
from rerankrt.testing.tiny_colbert import build_colbert
from rerankrt.testing.tiny_models import CORPUS

BODIES = ("bert", "modernbert")
BACKENDS = ("onnxruntime", "openvino", "torch")


def main() -> None:
    from rerankrt.export import export_model
    from rerankrt.runtime import Reranker

    words = " ".join(CORPUS).split()
    with tempfile.TemporaryDirectory(prefix="colbert-parity-") as work:
        for body in BODIES:
            model = build_colbert(Path(work) / body, seed=3, body=body)
            artifact = Path(work) / f"{body}-artifact"
            export_model(str(model), artifact)
            reference = ReferenceColbert(model)
            rng = np.random.default_rng(123)
            rounds = []
            for _ in range(3):
                query = " ".join(rng.choice(words, size=int(rng.integers(1, 20))))
                documents = ["", *(" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 80, size=23))]
                rounds.append((query, documents, np.asarray(reference.scores(query, documents))))
            worst = {}
            for backend in BACKENDS:
                with Reranker.load(str(artifact), backend=backend) as reranker:
                    worst[backend] = max(
                        float(np.abs(reranker.logits(query, documents) - expected).max())
                        for query, documents, expected in rounds + rounds  # the second time from the cache
                    )
            export = json.loads((artifact / "parity.json").read_text())["max_abs_diff"]
            figures = ", ".join(f"{backend} {value:.2e}" for backend, value in worst.items())
            print(f"{body}: max |Δscore| {figures}; export parity.json {export:.2e}")


if __name__ == "__main__":
    main()
