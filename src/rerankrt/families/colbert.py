"""Late interaction (ColBERT) as PyLate saves it: a sentence-transformers folder whose modules are the encoder body
and Dense projections (modules.json, `1_Dense/`), with PyLate's settings in config_sentence_transformers.json
(answerai-colbert-small-v1: BERT -> 96, GTE-ModernColBERT-v1: ModernBERT -> 128).

Query and document are encoded apart by one graph (`encoder`: a batch of texts -> L2-normalised token embeddings),
as PyLate's `ColBERT.tokenize`/`encode` prepare them: the text stripped of surrounding whitespace (and lower-cased
with sentence_bert_config.json's `do_lower_case`) as sentence-transformers' Transformer.tokenize does; a marker
token (`query_prefix` "[Q] ", `document_prefix` "[D] ") after [CLS]; the query cut to `query_length` and, with
`do_query_expansion`, padded to it with [MASK] (attended to only with `attend_to_expansion_tokens`, scored always);
the document cut to `document_length` (the artifact's max_length), its punctuation tokens (`skiplist_words`) and
padding left out of the scoring. The score of a pair is MaxSim, `sum over query tokens q of max over document
tokens d of <q, d>` (pylate.scores.colbert_scores of the pair alone). It is a similarity, not a logit
(`logit_scores` False); documents' embeddings are kept across requests in the runtime's document cache, keyed by a
hash of the encoded document (`document_encodings`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import (
    MODEL_LIMITS,
    Batch,
    EncodingCache,
    Family,
    Features,
    GraphRunner,
    GraphSpec,
    PairEncoder,
    TorchGraph,
    Truncation,
    load_fast_tokenizer,
    resolve_max_length,
    save_tokenizer,
)
from rerankrt.precision import Precision

log = logging.getLogger(__name__)

ENCODER = "encoder"
"""The one graph: input_ids, attention_mask (token_type_ids where the body takes them) -> token_embeddings."""
MODULES_FILE = "modules.json"
SETTINGS_FILE = "config_sentence_transformers.json"
TRANSFORMER_FILE = "sentence_bert_config.json"  # the Transformer module's: do_lower_case
QUERY = "query_"  # the query's arrays in a pair's Features carry this prefix; the document's have none
SCORED = "scored"  # per token: 1 where it takes part in MaxSim (the encoder decides: expansion, skiplist, padding)
PYLATE_DENSE = "pylate.models.Dense.Dense"
MODULE_PACKAGES = ("sentence_transformers", "pylate")  # whose module classes modules.json may name


def _is_module(entry: Mapping, name: str) -> bool:
    """modules.json's `type` names sentence-transformers' module `name` (any of its module paths) or PyLate's."""
    kind = entry.get("type")
    return isinstance(kind, str) and kind.endswith(f".{name}") and kind.split(".")[0] in MODULE_PACKAGES


@dataclass(frozen=True)
class ColbertSettings:
    """PyLate's settings, with PyLate's defaults for those config_sentence_transformers.json leaves out."""

    query_prefix: str = "[Q] "
    document_prefix: str = "[D] "
    query_length: int = 32
    document_length: int = 180
    do_query_expansion: bool = True
    attend_to_expansion_tokens: bool = False
    skiplist_words: list[str] = field(default_factory=lambda: list(string.punctuation))
    do_lower_case: bool = False  # sentence_bert_config.json's, not config_sentence_transformers.json's

    @classmethod
    def read(cls, folder: Path) -> ColbertSettings:
        path = Path(folder) / SETTINGS_FILE
        try:
            saved = json.loads(path.read_text()) if path.is_file() else {}
            known = {k: saved[k] for k in cls.__dataclass_fields__ if saved.get(k) is not None and k != "do_lower_case"}
            settings = cls(**known, do_lower_case=_lower_case(Path(folder) / TRANSFORMER_FILE))
            if not settings.do_query_expansion:  # PyLate: no expansion tokens, nothing to attend to
                settings = ColbertSettings(**{**asdict(settings), "attend_to_expansion_tokens": False})
            lengths_ok = settings.query_length >= 3 and settings.document_length >= 3
            texts_ok = all(isinstance(w, str) for w in [settings.query_prefix, settings.document_prefix,
                                                          *settings.skiplist_words])  # fmt: skip
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise UnsupportedModelError(f"{path}: not PyLate's settings ({exc})") from exc
        if not (lengths_ok and texts_ok):
            raise UnsupportedModelError(f"{path}: query_length and document_length of 3 or more and text markers")
        return settings


def _lower_case(path: Path) -> bool:
    """sentence_bert_config.json's do_lower_case (sentence-transformers lower-cases the text itself with it)."""
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(saved, dict) or not isinstance(saved.get("do_lower_case", False), bool):
        raise ValueError(f"{path.name}: do_lower_case must be true or false")
    return saved.get("do_lower_case", False)


def read_modules(model_dir: Path) -> list[dict] | None:
    """modules.json's entries, or None when the folder has none (or it is not a list of objects)."""
    path = Path(model_dir) / MODULES_FILE
    try:
        modules = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        return None
    return modules


def dense_paths(modules: Sequence[Mapping]) -> list[str] | None:
    """The Dense modules' folders when the modules are exactly a transformer at the root then Dense projections."""
    if len(modules) < 2 or not _is_module(modules[0], "Transformer") or modules[0].get("path", "") != "":
        return None
    rest = modules[1:]
    if not all(_is_module(m, "Dense") and isinstance(m.get("path"), str) for m in rest):
        return None
    return [m["path"] for m in rest]


class ColbertEncoder(PairEncoder):
    """The query and each document tokenized apart as PyLate does; a pair's Features are the document's arrays and
    the query's (`query_` + name), each with `scored`: the tokens MaxSim reads (the query's all with expansion, else
    its real ones; the document's less its skiplist tokens)."""

    padding_side = "right"

    def __init__(self, tokenizer, settings: ColbertSettings, max_length: int):
        if max_length < 3:
            raise UnsupportedModelError(f"max_length {max_length} leaves no room for a document")
        self.tokenizer = tokenizer
        self.settings = settings
        self.max_length = max_length
        self.model_inputs = tuple(tokenizer.model_input_names)  # the encoder graph's inputs
        self.input_names = (*self.model_inputs, SCORED)
        if tokenizer.mask_token_id is None:
            raise UnsupportedModelError("a ColBERT tokenizer needs a mask token (query expansion pads with it)")
        self.pad_id = tokenizer.mask_token_id  # PyLate pads with [MASK] (queries are expanded with it)
        self.pad_values = {"input_ids": self.pad_id}
        self.query_prefix_id = self._marker(settings.query_prefix)
        self.document_prefix_id = self._marker(settings.document_prefix)
        self.skip_ids = frozenset(tokenizer.convert_tokens_to_ids(w) for w in settings.skiplist_words)

    def _marker(self, prefix: str) -> int | None:
        """The prefix's token id. PyLate adds a prefix missing from the vocabulary with a freshly initialised
        embedding, so a checkpoint without it has no one answer: refused."""
        if not prefix:
            return None
        token = self.tokenizer.convert_tokens_to_ids(prefix)
        if token is None or (token == self.tokenizer.unk_token_id and prefix != self.tokenizer.unk_token):
            raise UnsupportedModelError(f"the tokenizer has no token {prefix!r} (the query or document prefix)")
        return token

    def text(self, text: str) -> str:
        """The text as sentence-transformers tokenizes it: stripped, lower-cased with `do_lower_case`."""
        text = text.strip()
        return text.lower() if self.settings.do_lower_case else text

    def _with_marker(self, ids: list[int], marker: int | None) -> list[int]:
        return ids if marker is None else [ids[0], marker, *ids[1:]]

    def encode_query(self, query: str) -> Features:
        """[CLS] [Q] query [SEP], cut to query_length (always, as PyLate cuts it: `truncate` is about documents);
        with expansion padded to it with [MASK]."""
        settings = self.settings
        room = settings.query_length - (self.query_prefix_id is not None)
        ids = self.tokenizer(self.text(query), truncation=True, max_length=room, verbose=False)["input_ids"]
        mask = [1] * len(ids)
        if settings.do_query_expansion:
            pad = room - len(ids)
            ids, mask = ids + [self.pad_id] * pad, mask + [int(settings.attend_to_expansion_tokens)] * pad
        ids, mask = self._with_marker(ids, self.query_prefix_id), self._with_marker(mask, 1)
        scored = [1] * len(ids) if settings.do_query_expansion else mask
        return self._arrays(ids, mask, scored, QUERY)

    def _arrays(self, ids: list[int], mask: list[int], scored: list[int], prefix: str = "") -> Features:
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": [0] * len(ids), SCORED: scored}
        return {prefix + name: np.asarray(arrays[name], dtype=np.int64) for name in self.input_names}

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        instruct: str | None = None,
        truncate: bool = True,
        truncation: Truncation = MODEL_LIMITS,
    ) -> list[Features]:
        # `instruct` has no place in a ColBERT encoding
        encoded_query = self.encode_query(query)
        marker = self.document_prefix_id is not None
        encoded = self.tokenizer([self.text(d) for d in documents], truncation=False, verbose=False)
        pairs = []
        for i in range(len(documents)):
            ids = np.asarray(encoded["input_ids"][i], dtype=np.int64)
            text = np.asarray([sequence == 0 for sequence in encoded.sequence_ids(i)], dtype=bool)
            start, tokens = (int(text.argmax()) if text.any() else 0), int(text.sum())
            cut = self.kept(i, tokens, len(ids) - tokens + marker, truncate, truncation)
            keep = ~text
            keep[start + cut[0] : start + cut[1]] = True
            full = self._with_marker(ids[keep].tolist(), self.document_prefix_id)
            scored = [int(token not in self.skip_ids) for token in full]
            pairs.append({**self._arrays(full, [1] * len(full), scored), **encoded_query})
        return pairs

    def collate(self, pairs: Sequence[Features]) -> Batch:
        """The documents padded to the longest, and the queries to theirs (expanded ones all have query_length)."""
        batch = super().collate(pairs)
        width = max(len(pair[QUERY + "input_ids"]) for pair in pairs)
        for name in self.input_names:
            out = np.full((len(pairs), width), self.pad_values.get(name, 0), dtype=np.int64)
            for row, pair in enumerate(pairs):
                values = pair[QUERY + name]
                out[row, : len(values)] = values
            batch[QUERY + name] = out
        return batch

    def save(self, out_dir: Path) -> list[str]:
        settings = asdict(self.settings)
        lower_case = settings.pop("do_lower_case")
        (Path(out_dir) / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        (Path(out_dir) / TRANSFORMER_FILE).write_text(json.dumps({"do_lower_case": lower_case}) + "\n")
        return sorted({*save_tokenizer(self.tokenizer, out_dir), SETTINGS_FILE, TRANSFORMER_FILE})


class DenseChain(torch.nn.Module):
    """sentence-transformers / PyLate Dense modules in order: linear, activation, PyLate's optional residual."""

    def __init__(self, model_dir: Path, paths: Sequence[str], dtype: torch.dtype | None):
        super().__init__()
        from safetensors.torch import load_file

        self.layers = torch.nn.ModuleList()
        self.activations = torch.nn.ModuleList()
        self.residual = []
        for path in paths:
            folder = Path(model_dir) / path
            config = json.loads((folder / "config.json").read_text())
            weights_file = folder / "model.safetensors"
            if not weights_file.is_file():
                raise UnsupportedModelError(f"{folder}: needs model.safetensors (pickled weights are not loaded)")
            weights = load_file(str(weights_file))
            linear = torch.nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
            layer = torch.nn.Module()
            layer.linear = linear
            if config.get("use_residual") and config["in_features"] != config["out_features"]:
                layer.residual = torch.nn.Linear(config["in_features"], config["out_features"], bias=False)
            layer.load_state_dict(weights)
            self.layers.append(layer.to(dtype) if dtype else layer)
            self.activations.append(_activation(config.get("activation_function"), folder))
            self.residual.append(bool(config.get("use_residual")))

    def forward(self, x):
        for layer, activation, residual in zip(self.layers, self.activations, self.residual, strict=True):
            projected = activation(layer.linear(x))
            if residual:
                projected = projected + (layer.residual(x) if hasattr(layer, "residual") else x)
            x = projected
        return x


def _activation(name: str | None, folder: Path) -> torch.nn.Module:
    """A torch.nn activation named as sentence-transformers saves it (`torch.nn.modules.linear.Identity`)."""
    if name is None:
        return torch.nn.Identity()
    module, _, cls = name.rpartition(".")
    if not module.startswith("torch.nn") or not isinstance(getattr(torch.nn, cls, None), type):
        raise UnsupportedModelError(f"{folder}: activation {name!r} is not a torch.nn module")
    return getattr(torch.nn, cls)()


class TokenEmbeddings(torch.nn.Module):
    """The encoder graph's function: body -> Dense chain -> L2-normalised token embeddings [batch, seq, dim]."""

    def __init__(self, body: torch.nn.Module, dense: DenseChain, takes_token_types: bool):
        super().__init__()
        self.body = body
        self.dense = dense
        self.takes_token_types = takes_token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.takes_token_types and token_type_ids is not None else {}
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return torch.nn.functional.normalize(self.dense(hidden).float(), p=2, dim=-1)


class MaxSimScorer(torch.nn.Module):
    """The torch scorer: a batch of (query, document) pairs -> MaxSim per pair, the function the pipeline computes."""

    def __init__(self, embed: TokenEmbeddings):
        super().__init__()
        self.embed = embed

    def forward(self, input_ids, attention_mask, scored, query_input_ids, query_attention_mask, query_scored,
                token_type_ids=None, query_token_type_ids=None):  # fmt: skip
        queries = self.embed(query_input_ids, query_attention_mask, query_token_type_ids)
        documents = self.embed(input_ids, attention_mask, token_type_ids)
        similarity = torch.einsum("bqd,bkd->bqk", queries, documents).masked_fill(
            ~scored.bool()[:, None, :], -torch.inf
        )
        best = similarity.max(dim=-1).values
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))  # a document with no scored token
        return (best * query_scored).sum(dim=-1)


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """sum over the query's rows of the max over the document's rows of their dot product (0 for no rows)."""
    if len(document) == 0:
        return 0.0
    return float((query @ document.T).max(axis=1).sum(dtype=np.float64))


def document_key(ids: np.ndarray) -> bytes:
    """The content hash of an encoded document (its token ids): its key in the runtime's document cache."""
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=20).digest()


class ColbertFamily(Family):
    name = "colbert"
    default_max_length = 180  # PyLate's document_length when the checkpoint does not set one
    precisions = (Precision.FP32,)
    precision_note = "late interaction is exported in fp32 only so far"
    tensorrt_problem = "late interaction runs its encoder graph through the family's pipeline; no TensorRT engine yet"
    logit_scores = False
    document_encodings = True

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        modules = read_modules(model_dir)
        paths = dense_paths(modules) if modules else None
        if not paths:
            return None
        settings_path = Path(model_dir) / SETTINGS_FILE
        try:
            saved = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        except ValueError:
            saved = {}
        saved = saved if isinstance(saved, dict) else {}
        if saved.get("model_type") == "ColBERT" or saved.get("similarity_fn_name") == "MaxSim":
            why = f"{SETTINGS_FILE} declares {'ColBERT' if saved.get('model_type') == 'ColBERT' else 'MaxSim'}"
        elif any(m.get("type") == PYLATE_DENSE for m in modules):
            why = "modules.json has PyLate's Dense"
        else:
            return None  # a plain sentence-transformers encoder with a projection is not known to be ColBERT
        return f"{why}, a transformer then {len(paths)} Dense projection(s): late interaction (MaxSim)"

    @classmethod
    def describe(cls) -> str:
        return "colbert (a PyLate / sentence-transformers ColBERT folder: transformer + Dense, MaxSim)"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> ColbertEncoder:
        if chat_template is not None:
            log.warning("a ColBERT model has no prompt template: --chat-template %s is ignored", chat_template)
        settings = ColbertSettings.read(model_dir)
        length = resolve_max_length(model_dir, max_length, settings.document_length)
        return ColbertEncoder(load_fast_tokenizer(model_dir), settings, length)

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> TokenEmbeddings:
        from transformers import AutoModel

        modules = read_modules(model_dir)
        paths = dense_paths(modules) if modules else None
        if not paths:
            raise UnsupportedModelError(f"{model_dir}: {MODULES_FILE} does not list a transformer then Dense modules")
        body = AutoModel.from_pretrained(model_dir, dtype=dtype, trust_remote_code=False).eval()
        takes_token_types = "token_type_ids" in load_fast_tokenizer(model_dir).model_input_names
        return TokenEmbeddings(body, DenseChain(model_dir, paths, dtype), takes_token_types).eval()

    def wrap_scorer(self, export_model: TokenEmbeddings) -> torch.nn.Module:
        return MaxSimScorer(export_model)

    def graphs(self, export_model: torch.nn.Module, encoder: PairEncoder) -> list[GraphSpec]:
        sample = encoder.collate(encoder.encode("what is a sample query?", ["a sample document", "another one"]))
        names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in encoder.model_inputs)
        axes = tuple({0: ("batch", 1), 1: ("sequence", 1)} for _ in names)
        args = tuple(torch.from_numpy(sample[name]) for name in names)
        return [TorchGraph(ENCODER, "encoder.onnx", export_model, args, names, ("token_embeddings",), axes)]

    def torch_graphs(self, scorer: torch.nn.Module, device: str) -> Mapping[str, GraphRunner]:
        return {ENCODER: TorchEncoder(scorer.embed, device)}

    def serving_pipeline(self, folder: Path, graphs: Mapping[str, GraphRunner]) -> Callable[[Batch], np.ndarray]:
        """Queries and the documents the cache misses through the encoder graph, then MaxSim per pair."""
        return MaxSimPipeline(graphs[ENCODER], self.document_cache).run


class TorchEncoder:
    """The torch scorer's `TokenEmbeddings` as the encoder graph (a `GraphRunner`), for the torch backend."""

    def __init__(self, embed: TokenEmbeddings, device: str):
        self.embed = embed
        self.device = device
        self.input_names = ["input_ids", "attention_mask", "token_type_ids"][: 2 + embed.takes_token_types]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        with torch.inference_mode():
            tensors = {name: torch.from_numpy(values).to(self.device) for name, values in feeds.items()}
            return [self.embed(**tensors).float().cpu().numpy()]


class MaxSimPipeline:
    """A batch of pairs -> MaxSim per pair: each distinct query encoded once, each document taken from the cache or
    encoded (then kept), embeddings restricted to their scored tokens."""

    def __init__(self, graph: GraphRunner, cache: EncodingCache | None):
        self.graph = graph
        self.cache = cache

    def embed(self, batch: Batch, rows: Sequence[int], prefix: str = "") -> np.ndarray:
        width = int(batch[prefix + "attention_mask"][rows].sum(axis=1).max()) if not prefix else None
        feeds = {name: batch[prefix + name][rows, :width] for name in self.graph.input_names}
        return self.graph.run(feeds)[0].astype(np.float32, copy=False)

    def run(self, batch: Batch) -> np.ndarray:
        rows = {}  # each distinct query (ids and masks) -> the first row holding it
        keys = [b"".join(batch[QUERY + n][row].tobytes() for n in ("input_ids", "attention_mask", SCORED))
                for row in range(len(batch["input_ids"]))]  # fmt: skip
        for row, key in enumerate(keys):
            rows.setdefault(key, row)
        embedded = self.embed(batch, list(rows.values()), QUERY)
        queries = {
            key: embedded[k][batch[QUERY + SCORED][row].astype(bool)] for k, (key, row) in enumerate(rows.items())
        }
        documents = self.documents(batch)
        return np.asarray([maxsim(queries[key], doc) for key, doc in zip(keys, documents, strict=True)], np.float32)

    def documents(self, batch: Batch) -> list[np.ndarray]:
        """Each row's document embeddings on its scored tokens: cached, or encoded and kept."""
        lengths = batch["attention_mask"].sum(axis=1)
        keys = [document_key(batch["input_ids"][row, :n]) for row, n in enumerate(lengths)]
        found = [self.cache.get(key) if self.cache is not None else None for key in keys]
        missing = [row for row, value in enumerate(found) if value is None]
        if missing:
            embedded = self.embed(batch, missing)
            for k, row in enumerate(missing):
                scored = batch[SCORED][row, : lengths[row]].astype(bool)
                found[row] = np.ascontiguousarray(embedded[k, : lengths[row]][scored])
                if self.cache is not None:
                    self.cache.put(keys[row], found[row])
        return found
