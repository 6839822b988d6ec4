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
import math
from json import encoder as _encoder
from json import scanner as _scanner
from typing import Any, Final

from .errors import InvalidMessage

__all__ = ["dumps", "encode_data", "is_encodable", "loads", "scan", "string", "string_or_null"]


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_DUMPS_ARGS: Final[dict[str, Any]] = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}
_make_encoder: Final[Any] = getattr(_encoder, "c_make_encoder", None)
_make_scanner: Final[Any] = getattr(_scanner, "c_make_scanner", None)
_accelerated: Final = _make_encoder is not None and _make_scanner is not None  # CPython's _json
# Final names: the compiled build keeps them in C statics, not looked up by name per call.
_encode: Final[Any] = (
    _make_encoder(None, _no_default, _encoder.encode_basestring, None, ":", ",", False, False, False)
    if _accelerated
    else None
)
_scan: Final[Any] = _make_scanner(json.JSONDecoder()) if _accelerated else None


#: A str as :func:`dumps` writes it (quoted, escaped, non-ASCII kept): for JSON built by hand.
string: Final = _encoder.encode_basestring


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


def scan(text: str, start: int) -> tuple[Any, int]:
    """The JSON value starting exactly at ``text[start]`` and the index just after it; raises
    StopIteration where no value starts there and ValueError for a malformed one (the
    scanner's own contract). For documents whose framing the caller knows."""
    if _scan is None:  # pragma: no cover - interpreters without the accelerator
        return json.JSONDecoder().raw_decode(text, start)
    value, end = _scan(text, start)
    return value, end


# -- message data: strict JSON, checked (here so that the compiled build compiles it) ----
def encode_data(data: Any) -> str:
    """Serialize ``data`` as strict JSON, or raise :class:`InvalidMessage`.

    Only what JSON can hold is accepted: dict (string keys), list, str, int, float
    (finite), bool and None. Tuples are refused rather than silently turned into lists.
    """
    if _plain(data, 0):
        # Only exact JSON types, keys strings, within the depth: what is left to refuse is a
        # non-finite float (dumps raises) or a lone surrogate (the ASCII test or encode fails).
        try:
            text = dumps(data)
            if text.isascii() or is_encodable(text):
                return text
        except ValueError:
            pass
    _check_json(data, 0)  # the slow walk names what is wrong
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:  # pragma: no cover - _check_json catches these
        raise InvalidMessage(f"message data is not JSON-serializable: {exc}") from None


_MAX_DEPTH: Final = 200
_SCALARS: Final = frozenset((str, int, float, bool, type(None)))


def _plain(value: Any, depth: int) -> bool:
    """True when ``value`` holds only exact dict/list/str/int/float/bool/None, string keys,
    nested at most _MAX_DEPTH deep (a fast test; False sends the caller to _check_json)."""
    # type(x), not x.__class__: the compiled build reads the type slot directly, where an
    # attribute lookup costs as much as the rest of the walk (and CPython specialises it too)
    cls = type(value)
    if cls in _SCALARS:
        return True
    if depth >= _MAX_DEPTH:
        return False
    if cls is dict:
        mapping: dict[Any, Any] = value
        for key, item in mapping.items():
            if type(key) is not str or (type(item) not in _SCALARS and not _plain(item, depth + 1)):
                return False
        return True
    if cls is list:
        items: list[Any] = value
        for item in items:
            if type(item) not in _SCALARS and not _plain(item, depth + 1):
                return False
        return True
    return False


def _check_json(value: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidMessage(f"message data is nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str) and not is_encodable(value):
            raise InvalidMessage(f"message data holds a string that is not valid Unicode: {value[:40]!r}")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessage(f"message data holds {value!r}, which JSON cannot represent")
        return
    if isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMessage(f"message data has a non-string key {key!r}; JSON keys are strings")
            if not is_encodable(key):
                raise InvalidMessage(f"message data has a key that is not valid Unicode: {key[:40]!r}")
            _check_json(item, depth + 1)
        return
    raise InvalidMessage(f"message data holds a {type(value).__name__} ({value!r:.60}); only JSON types are accepted")


def is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True
