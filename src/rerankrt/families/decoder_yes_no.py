"""Decoder-only yes/no rerankers (Qwen/Qwen3-Reranker-0.6B/4B/8B): P(yes) at the prompt's last token.

The model card scores a pair as softmax([logit(no), logit(yes)])[1] at the last
token, which equals sigmoid(logit(yes) - logit(no)) = sigmoid((W[yes] - W[no]) · h_last).
So the LM head is folded away: the causal LM's body goes into the architecture's
`*ForSequenceClassification` (one label, which pools the last non-padding
token), whose score row is W[yes] - W[no], computed in fp32. The graph never
computes the vocabulary-wide projection.

The prompt is the model card's, rendered from a Jinja template
(`templates/qwen3_reranker.jinja`, or `--chat-template`). Its variables follow
SGLang's reranker templates: `messages[0].content` is the query,
`messages[1].content` the document, `instruct` the optional instruction.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
import torch

from rerankrt.errors import InputError, UnsupportedModelError
from rerankrt.families.base import (
    Family,
    Features,
    PairEncoder,
    load_fast_tokenizer,
    resolve_max_length,
    save_tokenizer,
)

TEMPLATE_FILE = "reranker_template.jinja"  # the template an artifact was exported with
DEFAULT_TEMPLATE = "qwen3_reranker.jinja"
YES, NO = "yes", "no"
# Private-use characters mark where the query and the document land in the rendered prompt.
QUERY_MARKS = ("\ue000", "\ue001")
DOC_MARKS = ("\ue002", "\ue003")
MARKS = str.maketrans("", "", "".join(QUERY_MARKS + DOC_MARKS))


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def has_yes_no_tokens(model_dir: Path) -> bool:
    """True when the folder's tokenizer loads and spells `yes` and `no` as single tokens."""
    try:
        tokenizer = load_fast_tokenizer(model_dir)
    except (OSError, ValueError, UnsupportedModelError):
        return False
    return single_token_id(tokenizer, YES) is not None and single_token_id(tokenizer, NO) is not None


def single_token_id(tokenizer, word: str) -> int | None:
    ids = tokenizer.encode(word, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


class PromptTemplate:
    """A Jinja prompt template that reports where the query and the document are in its output."""

    def __init__(self, source: str, origin: str):
        env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)
        try:
            self.template = env.from_string(source)
            text, query_span, doc_span = self.render("Query q", "Document d", None)
        except (jinja2.TemplateError, ValueError) as exc:
            raise UnsupportedModelError(f"{origin}: not a usable reranker template ({exc})") from exc
        if text[slice(*query_span)] != "Query q" or text[slice(*doc_span)] != "Document d":
            raise UnsupportedModelError(f"{origin}: the template must insert the query and the document unchanged")
        self.source = source

    def render(self, query: str, document: str, instruct: str | None) -> tuple[str, tuple[int, int], tuple[int, int]]:
        """The prompt, and the character spans of the query and the document in it."""
        variables = {
            "messages": [
                {"role": "user", "content": QUERY_MARKS[0] + query + QUERY_MARKS[1]},
                {"role": "user", "content": DOC_MARKS[0] + document + DOC_MARKS[1]},
            ]
        }
        if instruct is not None:
            variables["instruct"] = instruct
        marked = self.template.render(**variables)
        found = {}
        for mark in QUERY_MARKS + DOC_MARKS:
            if marked.count(mark) != 1:
                raise ValueError("messages[0].content (query) and messages[1].content (document) must appear once each")
            found[mark] = marked.index(mark)
        # removing the marks shifts each position left by the number of marks before it
        clean = {mark: pos - sum(other < pos for other in found.values()) for mark, pos in found.items()}
        return (
            marked.translate(MARKS),
            (clean[QUERY_MARKS[0]], clean[QUERY_MARKS[1]]),
            (clean[DOC_MARKS[0]], clean[DOC_MARKS[1]]),
        )


class YesNoPairEncoder(PairEncoder):
    """Prompt per pair, tokenized as a whole; over-long prompts lose document tokens first, then query tokens."""

    padding_side = "left"  # as the model card; the graph pools the last real token either way
    input_names = ("input_ids", "attention_mask")

    def __init__(self, tokenizer, template: PromptTemplate, max_length: int):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.pad_values = {"input_ids": pad_token_id(tokenizer)}

    def encode(
        self, query: str, documents: Sequence[str], instruct: str | None = None, truncate: bool = True
    ) -> list[Features]:
        query = query.translate(MARKS)
        rendered = [self.template.render(query, doc.translate(MARKS), instruct) for doc in documents]
        encoded = self.tokenizer(
            [text for text, _, _ in rendered], add_special_tokens=False, return_offsets_mapping=True
        )
        pairs = []
        for i, (_, query_span, doc_span) in enumerate(rendered):
            ids = encoded["input_ids"][i]
            if len(ids) > self.max_length:
                if not truncate:
                    raise self.too_long(i, len(ids))
                ids = self.truncate(ids, encoded["offset_mapping"][i], query_span, doc_span)
            ids = np.asarray(ids, dtype=np.int64)
            pairs.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return pairs

    def truncate(self, ids: list[int], offsets, query_span, doc_span) -> list[int]:
        """Drop the document's last tokens, then the query's, until the prompt fits; the template stays whole."""
        excess = len(ids) - self.max_length
        dropped: set[int] = set()
        for start, end in (doc_span, query_span):
            inside = [t for t, (s, e) in enumerate(offsets) if s < end and e > start]
            take = inside[len(inside) - min(excess, len(inside)) :]
            dropped.update(take)
            excess -= len(take)
            if excess == 0:
                return [token for t, token in enumerate(ids) if t not in dropped]
        raise InputError(
            "instruct",
            f"the prompt takes {len(ids) - len(dropped)} tokens without query and document, "
            f"over max_length {self.max_length}",
        )

    def save(self, out_dir: Path) -> list[str]:
        (Path(out_dir) / TEMPLATE_FILE).write_text(self.template.source)
        return sorted([*save_tokenizer(self.tokenizer, out_dir), TEMPLATE_FILE])


class DecoderYesNoFamily(Family):
    name = "decoder-yes-no"
    default_max_length = 8192
    onnx_task = "text-classification"

    @classmethod
    def matches(cls, config: dict, model_dir: Path) -> bool:
        if not any(a.endswith("ForCausalLM") for a in config.get("architectures") or []):
            return False
        return has_yes_no_tokens(model_dir)

    @classmethod
    def describe(cls) -> str:
        return "decoder yes/no reranker (a *ForCausalLM checkpoint whose tokenizer has single tokens 'yes' and 'no')"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> YesNoPairEncoder:
        tokenizer = load_fast_tokenizer(model_dir)
        if chat_template is not None:
            template = PromptTemplate(Path(chat_template).read_text(), str(chat_template))
        elif (Path(model_dir) / TEMPLATE_FILE).is_file():
            template = PromptTemplate((Path(model_dir) / TEMPLATE_FILE).read_text(), str(model_dir / TEMPLATE_FILE))
        else:
            source = resources.files("rerankrt.templates").joinpath(DEFAULT_TEMPLATE).read_text()
            template = PromptTemplate(source, DEFAULT_TEMPLATE)
        return YesNoPairEncoder(tokenizer, template, resolve_max_length(model_dir, max_length, self.default_max_length))

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        tokenizer = load_fast_tokenizer(model_dir)
        yes, no = single_token_id(tokenizer, YES), single_token_id(tokenizer, NO)
        if yes is None or no is None:
            raise UnsupportedModelError(f"{model_dir}: the tokenizer has no single-token 'yes' and 'no'")
        causal_lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        return fold_yes_no_head(causal_lm, yes, no, pad_token_id(tokenizer))


def fold_yes_no_head(causal_lm, yes_id: int, no_id: int, pad_token_id: int) -> torch.nn.Module:
    """The causal LM's body in its `*ForSequenceClassification`, scoring with the row W[yes] - W[no].

    The sequence-classification head pools the last token that is not `pad_token_id`, which
    is the prompt's last token under left or right padding.
    """
    from transformers import AutoModelForSequenceClassification

    lm_head = causal_lm.get_output_embeddings()
    if getattr(lm_head, "bias", None) is not None:
        raise UnsupportedModelError(f"{type(causal_lm).__name__}: an LM head with a bias is not supported")
    row = lm_head.weight[yes_id].detach().float() - lm_head.weight[no_id].detach().float()

    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1  # also resets id2label / label2id
    config.pad_token_id = pad_token_id
    config.architectures = [type(causal_lm).__name__.replace("ForCausalLM", "ForSequenceClassification")]
    try:
        with torch.device("meta"):  # no weights are initialised: they all come from the causal LM
            classifier = AutoModelForSequenceClassification.from_config(config, dtype=causal_lm.dtype)
    except ValueError as exc:
        raise UnsupportedModelError(f"{config.model_type}: transformers has no sequence-classification head") from exc
    prefix = classifier.base_model_prefix
    setattr(classifier, prefix, getattr(causal_lm, causal_lm.base_model_prefix))
    head = torch.nn.Linear(row.numel(), 1, bias=False, dtype=causal_lm.dtype)
    with torch.no_grad():
        head.weight.copy_(row.to(causal_lm.dtype)[None])
    classifier.score = head
    leftover = [name for name, p in classifier.named_parameters() if p.is_meta]
    if leftover:
        raise UnsupportedModelError(f"{config.model_type}: could not fold the LM head ({leftover[:3]} left unset)")
    return classifier.eval()
