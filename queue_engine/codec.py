"""Compact JSON for the engine's hot path: the C encoder and scanner, without json's wrappers.

``json.dumps`` builds a new C encoder on every call and ``json.loads`` detects the encoding
and matches whitespace around the value; for a 150-byte message that is more than half
the cost. These two functions call the C parts directly, and behave like
``json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))`` and
``json.loads(text)``. Where the C parts are missing (another interpreter) they are those
calls.
"""

from __future__ import annotations

import json
from json import encoder as _encoder
from json import scanner as _scanner
from typing import Any

__all__ = ["dumps", "loads", "string", "string_or_null"]


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_DUMPS_ARGS: dict[str, Any] = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}
_make_encoder: Any = getattr(_encoder, "c_make_encoder", None)
_make_scanner: Any = getattr(_scanner, "c_make_scanner", None)
_encode: Any = None
_scan: Any = None
if _make_encoder is not None and _make_scanner is not None:  # CPython's _json accelerator
    _encode = _make_encoder(None, _no_default, _encoder.encode_basestring, None, ":", ",", False, False, False)
    _scan = _make_scanner(json.JSONDecoder())


#: A str as :func:`dumps` writes it (quoted, escaped, non-ASCII kept): for JSON built by hand.
string = _encoder.encode_basestring


def string_or_null(value: str | None) -> str:
    """:func:`string` of ``value``, or ``null`` for None."""
    return "null" if value is None else string(value)


def dumps(obj: Any) -> str:
    """Strict compact JSON of ``obj``: raises TypeError for a non-JSON type, ValueError for a
    non-finite float. No check for reference cycles: ``obj`` must be acyclic (engine-built
    values, or data that passed the message check, which bounds the depth)."""
    if _encode is None:  # pragma: no cover - interpreters without the accelerator
        return json.dumps(obj, **_DUMPS_ARGS)
    return "".join(_encode(obj, 0))


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The value of the JSON document ``data`` (UTF-8 bytes or str); ValueError if it is not one."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    if _scan is None:  # pragma: no cover - interpreters without the accelerator
        return json.loads(text)
    try:
        value, end = _scan(text, 0)
    except StopIteration:  # the scanner's "no value here" (leading space, empty, garbage)
        return json.loads(text)  # the full parser: accepts the whitespace or names the error
    if end != len(text):
        return json.loads(text)  # trailing whitespace is fine, anything else is an error
    return value
