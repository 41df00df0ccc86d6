"""What the prompt-based yes/no rerankers share: the LM head folded to one row (`fold_head`), the sandboxed
prompt template, where the query and the document land in it, truncation order (document text first, then
query text), and the yes/no token ids.

A template renders `messages[0].content` (the query), `messages[1].content` (the document) and the optional
`instruct`, as SGLang's reranker templates do. The content is either a string or a list of parts
(`{"type": "text", "text": ...}` or a media part `{"type": "image"}` / `{"type": "video"}` that renders as its
placeholder). Private-use characters bracket each text so its character span in the prompt is known.

Templates come from artifacts and flags, so they are untrusted: they render in Jinja's immutable sandbox,
which refuses attribute access to Python internals (no code runs from a template).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import PairEncoder, Truncation, load_fast_tokenizer, named

TEMPLATE_FILE = "reranker_template.jinja"  # the template an artifact was exported with
YES, NO = "yes", "no"
QUERY_MARKS = ("\ue000", "\ue001")
DOC_MARKS = ("\ue002", "\ue003")
MARK_CHARS = "".join(QUERY_MARKS + DOC_MARKS)
_NO_MARKS = str.maketrans("", "", MARK_CHARS)

Span = tuple[int, int]


def strip_marks(text: str) -> str:
    """User text cannot carry the span marks."""
    return text.translate(_NO_MARKS)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def single_token_id(tokenizer, word: str) -> int | None:
    ids = tokenizer.encode(word, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def yes_no_ids(tokenizer, origin: str = "the tokenizer", words: tuple[str, str] = (YES, NO)) -> tuple[int, int]:
    """Token ids of the answer words (default 'yes', 'no'); an error when either is not a single token."""
    ids = [single_token_id(tokenizer, word) for word in words]
    if None in ids:
        raise UnsupportedModelError(f"{origin}: no single-token {' and '.join(repr(w) for w in words)}")
    return ids[0], ids[1]


def has_yes_no_tokens(model_dir: Path) -> bool:
    """True when the folder's tokenizer loads and spells `yes` and `no` as single tokens."""
    try:
        yes_no_ids(load_fast_tokenizer(model_dir))
    except (OSError, ValueError, UnsupportedModelError):
        return False
    return True


def template_source(model_dir: Path, chat_template: Path | None, bundled: str) -> tuple[str, str]:
    """(source, origin) of the prompt template: --chat-template, else the artifact's, else the bundled one."""
    if chat_template is not None:
        return Path(chat_template).read_text(), str(chat_template)
    saved = Path(model_dir) / TEMPLATE_FILE
    if saved.is_file():
        return saved.read_text(), str(saved)
    return resources.files("rerankrt.templates").joinpath(bundled).read_text(), bundled


class PromptTemplate:
    """A sandboxed Jinja reranker template that reports the character spans of the query's and document's texts."""

    def __init__(self, source: str, origin: str):
        env = ImmutableSandboxedEnvironment(keep_trailing_newline=True, undefined=StrictUndefined, autoescape=False)
        try:
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise UnsupportedModelError(f"{origin}: not a usable reranker template ({exc})") from exc
        self.source, self.origin = source, origin

    def render(self, query, document, instruct: str | None) -> tuple[str, list[Span], list[Span]]:
        """The prompt, and the character spans of the query's and the document's text parts in it."""
        variables = {
            "messages": [
                {"role": "user", "content": _marked(query, QUERY_MARKS)},
                {"role": "user", "content": _marked(document, DOC_MARKS)},
            ]
        }
        if instruct is not None:
            variables["instruct"] = strip_marks(instruct)
        try:
            rendered = self.template.render(**variables)
        except TemplateError as exc:  # includes the sandbox's SecurityError
            raise UnsupportedModelError(f"{self.origin}: the template failed to render ({exc})") from exc
        text: list[str] = []
        spans: dict[tuple[str, str], list[Span]] = {QUERY_MARKS: [], DOC_MARKS: []}
        opened = None
        for char in rendered:
            for marks in spans:
                if char == marks[0]:
                    opened = len(text)
                    break
                if char == marks[1]:
                    if opened is None:
                        raise UnsupportedModelError(f"{self.origin}: the template splits a query or document text")
                    spans[marks].append((opened, len(text)))
                    opened = None
                    break
            else:
                text.append(char)
        return "".join(text), spans[QUERY_MARKS], spans[DOC_MARKS]

    def check(self, query, document, expected: list[str]) -> str:
        """Render a probe and require its texts to appear unchanged, in order; returns the prompt."""
        text, query_spans, doc_spans = self.render(query, document, None)
        found = [text[slice(*span)] for span in query_spans + doc_spans]
        if found != expected:
            raise UnsupportedModelError(
                f"{self.origin}: not a usable reranker template (it must insert messages[0].content, the query, and "
                "messages[1].content, the document, once each and unchanged)"
            )
        return text


def _marked(content, marks: tuple[str, str]):
    if isinstance(content, str):
        return marks[0] + strip_marks(content) + marks[1]
    return [
        {"type": "text", "text": marks[0] + strip_marks(part["text"]) + marks[1]}
        if part["type"] == "text"
        else {"type": part["type"]}
        for part in content
    ]


def text_tokens(offsets, spans: list[Span]) -> list[int]:
    """Positions of the tokens that overlap any of `spans` (a text's character spans in the prompt)."""
    return [t for t, (s, e) in enumerate(offsets) if any(s < end and e > start for start, end in spans)]


def dropped_tokens(
    encoder: PairEncoder,
    index: int,
    offsets,
    spans: tuple[list[Span], list[Span]],
    extra: int,
    truncate: bool,
    truncation: Truncation,
) -> set[int] | None:
    """Token positions to drop from pair `index`, a prompt of `len(offsets) + extra` tokens (`extra`: media tokens
    expanded later) with its (query, document) text `spans`: the document's tokens `encoder.kept` lets go, then,
    while the prompt is over `max_length`, the query's last tokens. None when the texts hold too few tokens."""
    query_spans, doc_spans = spans
    document = text_tokens(offsets, doc_spans)
    start, stop = encoder.kept(index, len(document), len(offsets) + extra - len(document), truncate, truncation)
    dropped = document[:start] + document[stop:]
    over = len(offsets) + extra - len(dropped) - encoder.max_length
    if over > 0:
        query = text_tokens(offsets, query_spans)
        if over > len(query):
            return None
        dropped += query[len(query) - over :]
    return set(dropped)


def head_row(causal_lm, token_id: int) -> torch.Tensor:
    """The LM head's row for one token, fp32 (an LM head with a bias is not supported)."""
    lm_head = causal_lm.get_output_embeddings()
    if getattr(lm_head, "bias", None) is not None:
        raise UnsupportedModelError(f"{type(causal_lm).__name__}: an LM head with a bias is not supported")
    return lm_head.weight[token_id].detach().float()


def text_ids(tokenizer, text: str) -> list[int]:
    """`text`'s token ids alone (no special tokens): the token-level prompts are built from such pieces."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def cut_ids(ids: list[int], keep: int, left: bool) -> list[int]:
    """`ids` cut to `keep` tokens: its last ones with `left` (a tokenizer truncating on the left), else its first."""
    if len(ids) <= keep:
        return ids
    return ids[len(ids) - keep :] if left else ids[:keep]


def named_with_answers(config: dict, model_dir: Path, architecture: str, pattern: str, ids: Callable) -> str | None:
    """The name (`named`: folder, `_name_or_path`, model card) that makes a checkpoint of `architecture` a prompt
    family's, when its tokenizer also has the family's single-token answers (`ids(tokenizer)` does not raise)."""
    if architecture not in (config.get("architectures") or []):
        return None
    name = named(model_dir, config, pattern)
    if name is None:
        return None
    try:
        ids(load_fast_tokenizer(model_dir))
    except (OSError, ValueError, UnsupportedModelError):
        return None
    return name


def load_folded(model_dir: Path, dtype: torch.dtype | None, ids: Callable[[Any, str], int | tuple[int, int]]):
    """The causal LM in `model_dir` with its LM head folded to one fp32 row (`fold_head`): W[a] when `ids(tokenizer,
    origin)` gives one token id, W[a] - W[b] for a pair. The ids are looked up before the weights are read."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_fast_tokenizer(model_dir)
    found = ids(tokenizer, str(model_dir))
    causal_lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=False)
    if getattr(causal_lm.config, "final_logit_softcapping", None):
        raise UnsupportedModelError(f"{model_dir}: soft-capped logits cannot be folded to one row")
    first, *second = (found,) if isinstance(found, int) else found
    row = head_row(causal_lm, first) - (head_row(causal_lm, second[0]) if second else 0)
    return fold_head(causal_lm, row, pad_token_id(tokenizer))


def fold_head(causal_lm, row: torch.Tensor, pad_token_id: int) -> torch.nn.Module:
    """The causal LM's body in its `*ForSequenceClassification`, scoring the last real token with `row`.

    The sequence-classification head pools the last token that is not `pad_token_id`, which
    is the prompt's last token under left or right padding.
    """
    from transformers import AutoModelForSequenceClassification

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
