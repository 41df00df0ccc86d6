"""In-memory stand-ins for rerankrt's parts, shared by the unit tier: no export, no weights, no backend library.

- The in-memory model (`make_model`): a fake encoder turns words into ids (one id per distinct word) and a fake
  backend scores a pair by how many document words the query holds (logit = that count - 1), so rankings are
  predictable; with the real Reranker, scheduler and app around it (`create_app(settings(), make_model())`, or
  `client_for(**settings)`). QUERY, DOCS, LOGITS, BEST_FIRST and TOKENS are what it makes of one request; YES and
  NO are a yes/no family's label tokens (`make_model(labels=(YES, NO))`).
- `ZeroBackend`: a backend that scores every row 0 (behind a real encoder: budgets, truncation).
- Machines and manifests for the serving plan (`CPU`, `GPU`, `manifest`, `engine`, `first`): made up, nothing
  detected or read.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from rerankrt.artifact import FORMAT_VERSION, Engine, Graph, Manifest, Profile, SourceModel
from rerankrt.errors import InputError
from rerankrt.families import get_family
from rerankrt.families.base import MODEL_LIMITS, Batch, Features, PairEncoder
from rerankrt.precision import Precision
from rerankrt.runtime.loader import LoadedModel
from rerankrt.runtime.machine import Machine
from rerankrt.runtime.plan import Request, ServingPlan, Skipped, plan_serving
from rerankrt.server import create_app
from rerankrt.server.settings import ServeSettings

# --- the in-memory model ------------------------------------------------------------------------------

CLS, SEP, IMAGE, VIDEO = 1, 2, 3, 4  # word ids start above these
WORD = re.compile(r"\S+")
MAX_LENGTH = 16
MAX_DOCUMENTS = 5

QUERY = "what is panda"
DOCS = ["hi there", "panda is a bear what", "what is it", "the panda"]
# logits: words of the document also in the query, minus one
LOGITS = [-1.0, 2.0, 1.0, 0.0]
BEST_FIRST = [1, 2, 3, 0]
TOKENS = sum(1 + 3 + 1 + len(d.split()) for d in DOCS)  # [CLS] query [SEP] document, one token per word
LONG = " ".join(["filler"] * 30)  # over MAX_LENGTH beside any query


class WordTokenizer:
    """A stand-in for a Hugging Face fast tokenizer: one id per distinct lower-cased word, with offsets."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def ids(self, text: str) -> list[int]:
        return self(text)["input_ids"]

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        words = list(WORD.finditer(text))
        ids = [self.vocab.setdefault(w.group().lower(), len(self.vocab) + 10) for w in words]
        if add_special_tokens:
            return {"input_ids": [CLS, *ids, SEP], "offset_mapping": [(0, 0), *(w.span() for w in words), (0, 0)]}
        return {"input_ids": ids, "offset_mapping": [w.span() for w in words]}

    def __len__(self) -> int:
        return len(self.vocab) + 10

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        words = {i: w for w, i in self.vocab.items()} | {CLS: "[CLS]", SEP: "[SEP]", IMAGE: "[IMG]", VIDEO: "[VID]"}
        return [words.get(i, "[UNK]") for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        special = {CLS, SEP, IMAGE, VIDEO, 0}
        return " ".join(self.convert_ids_to_tokens([i for i in ids if not (skip_special_tokens and i in special)]))


class WordEncoder(PairEncoder):
    """`[CLS] instruct query [SEP] document`, one id per word; an image or video part is one id.

    An empty text part is refused with an error naming it the way a real encoder names its fields (`query[k]`,
    `documents[i][k]`), which the Reranker renames to the client's fields.
    """

    input_names = ("input_ids", "attention_mask")
    pad_values = {"input_ids": 0, "attention_mask": 0}

    def __init__(self, max_length: int = MAX_LENGTH):
        self.max_length = max_length
        self.tokenizer = WordTokenizer()

    def tokens(self, content, field: str) -> list[int]:
        if isinstance(content, str):
            return self.tokenizer.ids(content)
        ids = []
        for k, part in enumerate(content):
            if part["type"] == "text" and not part["text"]:
                raise InputError(f"{field}[{k}]", "an empty text part")
            ids += {"image": [IMAGE], "video": [VIDEO]}.get(part["type"]) or self.tokenizer.ids(part["text"])
        return ids

    def encode(
        self, query, documents: Sequence, instruct: str | None = None, truncate: bool = True, truncation=MODEL_LIMITS
    ) -> list[Features]:
        head = [CLS, *(self.tokenizer.ids(instruct) if instruct else []), *self.tokens(query, "query"), SEP]
        pairs = []
        for i, document in enumerate(documents):
            tokens = self.tokens(document, f"documents[{i}]")
            start, stop = self.kept(i, len(tokens), len(head), truncate, truncation)
            ids = (head + tokens[start:stop])[: self.max_length]
            array = np.asarray(ids, dtype=np.int64)
            pairs.append({"input_ids": array, "attention_mask": np.ones_like(array)})
        return pairs

    def save(self, out_dir: Path) -> list[str]:
        return []


class OverlapBackend:
    """logit = (document tokens also in the query) - 1, float32, one per row; `gate`, when set, holds each batch."""

    name = "fake"
    device = "cpu"

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.batches = 0

    def run(self, batch: Batch) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        self.batches += 1
        logits = []
        for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            ids = row[mask.astype(bool)].tolist()
            split = ids.index(SEP)
            query, document = set(ids[1:split]), ids[split + 1 :]
            logits.append(sum(t in query for t in document) - 1.0)
        return np.asarray(logits, dtype=np.float32)


@dataclass(frozen=True)
class FakeFamily:
    name: str
    multimodal: bool
    labels: tuple[int, int] | None = None  # a yes/no family's (yes, no) token ids
    logit_scores: bool = True  # Family.logit_scores: its scores are logits (sigmoid unless raw)

    def label_tokens(self, encoder) -> tuple[int, int] | None:
        return self.labels


def make_model(
    multimodal: bool = False, gate: threading.Event | None = None, labels: tuple[int, int] | None = None
) -> LoadedModel:
    family = FakeFamily("multimodal-fake" if multimodal else "text-fake", multimodal, labels)
    plan = ServingPlan(backend="fake", device="cpu", precision=Precision.FP32)
    return LoadedModel(family, WordEncoder(), OverlapBackend(gate), plan, name="fake-reranker")


YES, NO = 5, 6  # the fake yes/no family's label token ids (make_model(labels=(YES, NO)))


def settings(**overrides) -> ServeSettings:
    values = {"warmup": False, "max_documents_per_request": MAX_DOCUMENTS, "max_padding_ratio": 1.0, **overrides}
    return ServeSettings(model_path="-", **values)


def client_for(**options) -> TestClient:
    """A test client of the app over the in-memory model with `settings(**options)`; `multimodal` and `labels` (a
    yes/no family's) go to `make_model`."""
    model = make_model(multimodal=options.pop("multimodal", False), labels=options.pop("labels", None))
    return TestClient(create_app(settings(**options), model))


class ZeroBackend:
    """Every row scores 0: for tests of what happens around the model (budgets, encoding, serving)."""

    name, device = "fake", "cpu"

    def run(self, batch: Batch) -> np.ndarray:
        return np.zeros(len(batch["input_ids"]), dtype=np.float32)


# --- machines and manifests for the serving plan ------------------------------------------------------

CPU = Machine(physical_cores=2)  # without OpenVINO
OPENVINO_BF16 = Machine(physical_cores=2, openvino="2026.4.1", cpu_bf16=True)  # e.g. Xeon with AMX, Zen 4
OPENVINO_NO_BF16 = Machine(physical_cores=2, openvino="2026.4.1", cpu_bf16=False)  # e.g. AVX2 only
GPU = Machine(
    physical_cores=8,
    cuda=True,
    compute_capability="9.0",
    tensorrt="11.4.0.106",
    onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
)
PROFILE = Profile(min=(1, 1), opt=(16, 256), max=(64, 512))


def engine(precision: str, capability: str = "9.0", version: str = "11.4.0.106") -> Engine:
    return Engine(
        file=f"model.{precision}.sm{capability.replace('.', '')}.plan",
        graph="model.onnx",
        precision=precision,
        compute_capability=capability,
        tensorrt=version,
        profile=PROFILE,
    )


def manifest(
    precision: str = "fp32", variants=(), engines=(), family: str = "cross-encoder", roles=("scorer",)
) -> Manifest:
    graphs = {role: Graph(file=f"{role}.onnx" if role != "scorer" else "model.onnx", inputs=["x"], outputs=["y"])
              for role in roles}  # fmt: skip
    for variant in variants:
        graphs[f"scorer.{variant}"] = Graph(file=f"model.{variant}.onnx", inputs=["input_ids"], outputs=["logits"])
    return Manifest(
        format_version=FORMAT_VERSION,
        family=family,
        source=SourceModel(
            ref="/exports/model",
            path="/nonexistent/model",
            architecture="XLMRobertaFor...",
            files={"model.safetensors": "0" * 64},
        ),  # fmt: skip
        max_length=512,
        precision=precision,
        opset=18,
        graphs=graphs,
        engines=list(engines),
        encoder_files=[],
        versions={},
        files={},
        created_at="2026-11-29T00:00:00+00:00",
    )


def plans(m: Manifest, machine: Machine, **request) -> list[ServingPlan | Skipped]:
    return plan_serving(get_family(m.family), Request(**request), machine, manifest=m, folder="/a")


def first(m: Manifest, machine: Machine, **request) -> ServingPlan:
    return next(p for p in plans(m, machine, **request) if isinstance(p, ServingPlan))
