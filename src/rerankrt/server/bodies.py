"""JSON request bodies, parsed strictly and within bounds, the same way on every route: `read_json` for the shared
paths (which pick their API from the body), `StrictJSONRequest` under the adapters' FastAPI body models.

`parse_json` refuses, as a decode error (the 400 `body: invalid JSON (...)`), every body that `json.loads` would
fail on with another exception (a 500), parse as deep as it goes, or read in a way the client cannot have meant:

- text that is not UTF-8 (RFC 8259); a leading byte order mark is ignored, as the RFC allows;
- arrays and objects nested deeper than MAX_JSON_DEPTH, found by a scan of the bytes before parsing: `json.loads`
  recurses once per level, and its own limit is the interpreter's recursion limit (which torch raises) and stack;
- a key twice in one object (which value was meant?);
- NaN, Infinity and -Infinity (not JSON), a number beyond a float's range (1e999 would be inf), an integer longer
  than Python converts (`sys.get_int_max_str_digits()`, 4300 digits by default);
- a string holding an unpaired surrogate escape (`"\\ud800"`), which no UTF-8 answer or tokenizer can carry.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError

MAX_JSON_DEPTH = 64
"""Arrays and objects inside one another; a request needs about five (content parts of documents)."""

SHOWN_CHARS = 64  # of a key or number named in an error
_QUOTE = ord('"')
_SIGNS = np.zeros(256, np.int8)
_SIGNS[[ord("["), ord("{")]] = 1
_SIGNS[[ord("]"), ord("}")]] = -1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Refused(Exception):
    """What a `json.loads` hook refuses; `parse_json` reports it as a decode error."""


def parse_json(raw: bytes) -> Any:
    """`raw` as JSON. Raises json.JSONDecodeError for anything refused, so FastAPI's own body parsing answers it
    as it answers malformed JSON."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"not UTF-8 at byte {exc.start}", "", exc.start) from None
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and (depth := nesting_depth(raw)) > MAX_JSON_DEPTH:
        raise json.JSONDecodeError(f"nested {depth} levels deep, over the limit of {MAX_JSON_DEPTH}", text, 0)
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_float=_float, parse_constant=_constant)
    except _Refused as exc:
        raise json.JSONDecodeError(str(exc), text, 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # int() of a literal longer than it converts (a parse_int hook would cost a call per integer)
        raise json.JSONDecodeError(f"an integer of more than {sys.get_int_max_str_digits()} digits", text, 0) from None
    if _SURROGATE_ESCAPE.search(text) and (lone := _lone_surrogate(data)):
        raise json.JSONDecodeError(f"a lone surrogate {lone} in a string", text, 0)
    return data


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in the JSON text `raw`; brackets inside strings do not count. Linear in
    `raw`, in numpy (a regular expression over strings is quadratic on some unterminated ones)."""
    text = np.frombuffer(raw.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)  # every quote left is a string's
    signs = _SIGNS.take(text)
    in_string = np.cumsum(text == _QUOTE, dtype=np.uint8) & 1  # uint8 wraps around, keeping the parity
    signs[in_string.view(bool)] = 0
    return int(np.cumsum(signs[signs != 0], dtype=np.int32).max(initial=0))


def _object(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) < len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"key {json.dumps(key[:SHOWN_CHARS])} given twice in one object")
            seen.add(key)
    return result


def _float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        shown = literal if len(literal) <= SHOWN_CHARS else literal[:SHOWN_CHARS] + "..."
        raise _Refused(f"the number {shown} is beyond the range of a float")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _lone_surrogate(data: Any) -> str | None:
    """The first unpaired surrogate in `data`'s strings, as its escape (an escape in the text is most often one of
    a valid pair, which json.loads joins)."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        return f"\\u{ord(exc.object[exc.start]):04x}"
    return None


async def read_json(request: Request) -> Any:
    """The request's JSON body (None when empty), parsed by `parse_json`; what it refuses is reported as FastAPI
    reports malformed JSON (the app's handler renders it as a 400 naming the body)."""
    raw = await request.body()
    try:
        return parse_json(raw) if raw else None
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {},
              "ctx": {"error": exc.msg}}]
        ) from None  # fmt: skip


class StrictJSONRequest(Request):
    """A request whose `json()` is `parse_json`: FastAPI parses body models through it (`shapes.shaped_route`)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json
