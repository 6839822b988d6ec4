"""Retry strategies: how long a failed message waits before its next attempt.

A worker sets ``backoff = ExponentialBackoff(...)`` (the default) or another :class:`Backoff`;
config ``[worker.QUEUE]`` can override it with the keys read by :func:`backoff_from_config`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping

from .errors import ConfigurationError

__all__ = [
    "BACKOFF_KEYS",
    "Backoff",
    "ExponentialBackoff",
    "FixedBackoff",
    "LinearBackoff",
    "backoff_from_config",
]


def _seconds(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite number of seconds >= 0 (> 0 with ``positive``), else ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"invalid {name} {value!r}: a number of seconds")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0) or number > 1e9:
        raise ConfigurationError(
            f"invalid {name} {value!r}: a number {'>' if positive else '>='} 0 and at most 1e9 (about 31 years)"
        )
    return number


class Backoff:
    """Base class of retry strategies.

    Contract: :meth:`delay` receives the number of the attempt that just failed (1 for the
    first attempt) and returns the seconds to wait before the next one: a finite float >= 0.
    It is called only when another attempt will follow. Implementations are immutable and
    may be shared by any number of workers and threads.
    """

    def delay(self, attempt: int) -> float:
        raise NotImplementedError

    @staticmethod
    def _check_attempt(attempt: int) -> int:
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"invalid attempt {attempt!r}: a whole number >= 1")
        return attempt


class FixedBackoff(Backoff):
    """The same delay after every failed attempt. ``FixedBackoff(0)`` retries at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = _seconds("delay", seconds)

    def delay(self, attempt: int) -> float:
        self._check_attempt(attempt)
        return self.seconds

    def __repr__(self) -> str:
        return f"FixedBackoff({self.seconds!r})"


class LinearBackoff(Backoff):
    """``initial + increment * (attempt - 1)`` seconds, at most ``max_delay``."""

    def __init__(self, initial: float = 1.0, increment: float = 1.0, max_delay: float = 300.0) -> None:
        self.initial = _seconds("initial delay", initial)
        self.increment = _seconds("increment", increment)
        self.max_delay = _seconds("max_delay", max_delay)

    def delay(self, attempt: int) -> float:
        n = self._check_attempt(attempt)
        return min(self.initial + self.increment * (n - 1), self.max_delay)

    def __repr__(self) -> str:
        return f"LinearBackoff(initial={self.initial!r}, increment={self.increment!r}, max_delay={self.max_delay!r})"


class ExponentialBackoff(Backoff):
    """``base * factor ** (attempt - 1)`` seconds, at most ``max_delay``, then jittered.

    ``jitter`` is a fraction: the capped delay is multiplied by a random number in
    ``[1 - jitter, 1 + jitter]`` so that messages that failed together do not all come
    back together. The result is never negative; with jitter it may exceed ``max_delay``
    by up to ``max_delay * jitter``. ``rng`` (a :class:`random.Random`) makes it reproducible.
    """

    def __init__(
        self,
        base: float = 1.0,
        factor: float = 2.0,
        max_delay: float = 300.0,
        jitter: float = 0.1,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.base = _seconds("base delay", base)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (
            math.isfinite(factor) and factor >= 1
        ):
            raise ConfigurationError(f"invalid factor {factor!r}: a finite number >= 1")
        self.factor = float(factor)
        self.max_delay = _seconds("max_delay", max_delay)
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ConfigurationError(f"invalid jitter {jitter!r}: a fraction from 0 to 1")
        self.jitter = float(jitter)
        self._rng = rng if rng is not None else random.Random()

    def raw_delay(self, attempt: int) -> float:
        """The capped delay before jitter."""
        n = self._check_attempt(attempt)
        try:
            value = self.base * self.factor ** (n - 1)
        except OverflowError:  # a huge attempt number: the cap applies anyway
            return self.max_delay
        return min(value, self.max_delay)

    def delay(self, attempt: int) -> float:
        value = self.raw_delay(attempt)
        if self.jitter:
            value *= 1.0 + self._rng.uniform(-self.jitter, self.jitter)
        return max(0.0, value)

    def __repr__(self) -> str:
        return (
            f"ExponentialBackoff(base={self.base!r}, factor={self.factor!r}, "
            f"max_delay={self.max_delay!r}, jitter={self.jitter!r})"
        )


#: Config keys read by :func:`backoff_from_config`, as written in config.ini.
BACKOFF_KEYS = ("backoff", "retryDelay", "retryIncrement", "backoffFactor", "maxDelay", "jitter")
_KINDS = ("fixed", "linear", "exponential")
#: Which parameter keys each kind accepts.
_APPLIES = {
    "fixed": ("retryDelay",),
    "linear": ("retryDelay", "retryIncrement", "maxDelay"),
    "exponential": ("retryDelay", "backoffFactor", "maxDelay", "jitter"),
}


def backoff_from_config(section: Mapping[str, str], source: str) -> Backoff | None:
    """The strategy configured in ``section`` (a config section's keys and raw values), or
    None when it names none (the worker class's ``backoff`` then applies).

    Keys (case-insensitive): ``backoff`` = fixed | linear | exponential (default: fixed when
    only parameter keys are given); ``retryDelay`` = the fixed delay, the linear initial
    delay or the exponential base; ``retryIncrement`` (linear); ``backoffFactor``
    (exponential); ``maxDelay`` (linear, exponential); ``jitter`` (exponential, a fraction).
    Missing parameters take the constructors' defaults (fixed: 0 seconds).

    ``source`` prefixes error messages, e.g. ``"config.ini: [worker.ANPR]"``. A bad value, or
    a key that does not apply to the chosen kind, raises :class:`ConfigurationError` naming it.
    """
    canonical = {k.lower(): k for k in BACKOFF_KEYS}
    given: dict[str, tuple[str, str]] = {}  # canonical key -> (key as written, raw value)
    for key, raw in section.items():
        name = canonical.get(key.lower())
        if name is not None:
            given[name] = (key, raw)
    if not given:
        return None
    kind = "fixed"
    if "backoff" in given:
        key, raw = given.pop("backoff")
        kind = raw.strip().lower()
        if kind not in _KINDS:
            raise ConfigurationError(f"{source} {key} = {raw!r} is not a backoff; valid: {', '.join(_KINDS)}")
    for name, (key, _raw) in given.items():
        if name not in _APPLIES[kind]:
            raise ConfigurationError(
                f"{source} {key} does not apply to backoff = {kind}; it accepts: {', '.join(_APPLIES[kind])}"
            )

    def number(name: str) -> float | None:
        if name not in given:
            return None
        key, raw = given[name]
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(f"{source} {key} = {raw!r} is not a number") from None

    def build(make: Callable[..., Backoff], **params: float | None) -> Backoff:
        try:
            return make(**{k: v for k, v in params.items() if v is not None})
        except ConfigurationError as exc:
            keys = ", ".join(f"{given[n][0]} = {given[n][1]!r}" for n in given)
            raise ConfigurationError(f"{source} {keys}: {exc}") from None

    if kind == "fixed":
        return build(FixedBackoff, seconds=number("retryDelay") or 0.0)
    if kind == "linear":
        return build(
            LinearBackoff,
            initial=number("retryDelay"),
            increment=number("retryIncrement"),
            max_delay=number("maxDelay"),
        )
    return build(
        ExponentialBackoff,
        base=number("retryDelay"),
        factor=number("backoffFactor"),
        max_delay=number("maxDelay"),
        jitter=number("jitter"),
    )
