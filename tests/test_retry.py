"""Retry strategies: the backoff math and reading them from config."""

from __future__ import annotations

import random
from typing import Any

import pytest

from queue_engine.errors import ConfigurationError
from queue_engine.retry import (
    Backoff,
    ExponentialBackoff,
    FixedBackoff,
    LinearBackoff,
    backoff_from_config,
)

SRC = "cfg.ini: [worker.ANPR]"


def test_fixed_is_constant() -> None:
    b = FixedBackoff(7.5)
    assert [b.delay(n) for n in (1, 2, 10, 1000)] == [7.5, 7.5, 7.5, 7.5]
    assert FixedBackoff(0).delay(3) == 0.0


def test_linear_grows_by_increment_and_is_capped() -> None:
    b = LinearBackoff(initial=2, increment=3, max_delay=10)
    assert [b.delay(n) for n in range(1, 6)] == [2, 5, 8, 10, 10]


def test_exponential_without_jitter_doubles_and_caps() -> None:
    b = ExponentialBackoff(base=1, factor=2, max_delay=20, jitter=0)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 20, 20]


def test_exponential_huge_attempt_is_capped_not_overflowing() -> None:
    b = ExponentialBackoff(base=1, factor=10, max_delay=60, jitter=0)
    assert b.delay(100_000) == 60


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 9])
def test_exponential_jitter_stays_within_fraction(attempt: int) -> None:
    b = ExponentialBackoff(base=2, factor=3, max_delay=100, jitter=0.25, rng=random.Random(attempt))
    raw = b.raw_delay(attempt)
    values = [b.delay(attempt) for _ in range(200)]
    assert all(raw * 0.75 <= v <= raw * 1.25 for v in values)
    assert len(set(values)) > 1  # it does vary


def test_exponential_full_jitter_is_never_negative() -> None:
    b = ExponentialBackoff(base=5, jitter=1.0, rng=random.Random(1))
    assert all(b.delay(n) >= 0 for n in range(1, 50) for _ in range(20))


def test_exponential_is_reproducible_with_rng() -> None:
    a = ExponentialBackoff(jitter=0.5, rng=random.Random(42))
    b = ExponentialBackoff(jitter=0.5, rng=random.Random(42))
    assert [a.delay(n) for n in range(1, 10)] == [b.delay(n) for n in range(1, 10)]


def test_default_exponential_parameters() -> None:
    b = ExponentialBackoff()
    assert (b.base, b.factor, b.max_delay, b.jitter) == (1.0, 2.0, 300.0, 0.1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedBackoff(-1),
        lambda: FixedBackoff(float("nan")),
        lambda: FixedBackoff(float("inf")),
        lambda: FixedBackoff("5"),  # type: ignore[arg-type]
        lambda: FixedBackoff(True),
        lambda: LinearBackoff(initial=-1),
        lambda: LinearBackoff(increment=-2),
        lambda: LinearBackoff(max_delay=float("nan")),
        lambda: ExponentialBackoff(base=-1),
        lambda: ExponentialBackoff(factor=0.5),
        lambda: ExponentialBackoff(factor=float("inf")),
        lambda: ExponentialBackoff(jitter=1.5),
        lambda: ExponentialBackoff(jitter=-0.1),
        lambda: ExponentialBackoff(max_delay=-3),
    ],
)
def test_bad_constructor_arguments_are_refused(make: Any) -> None:
    with pytest.raises(ConfigurationError, match="invalid"):
        make()


@pytest.mark.parametrize("attempt", [0, -1, True, 1.5])
def test_attempt_numbers_start_at_one(attempt: Any) -> None:
    for b in (FixedBackoff(1), LinearBackoff(), ExponentialBackoff()):
        with pytest.raises(ValueError, match="attempt"):
            b.delay(attempt)


def test_base_class_is_abstract_in_practice() -> None:
    with pytest.raises(NotImplementedError):
        Backoff().delay(1)


# -- from config ---------------------------------------------------------------------------
def test_config_without_backoff_keys_gives_none() -> None:
    assert backoff_from_config({}, SRC) is None
    assert backoff_from_config({"retries": "3", "timeLimit": "5"}, SRC) is None


def test_config_fixed() -> None:
    b = backoff_from_config({"backoff": "fixed", "retryDelay": "12"}, SRC)
    assert isinstance(b, FixedBackoff) and b.seconds == 12


def test_config_retry_delay_alone_means_fixed() -> None:
    b = backoff_from_config({"retryDelay": "30"}, SRC)
    assert isinstance(b, FixedBackoff) and b.delay(4) == 30


def test_config_linear() -> None:
    b = backoff_from_config({"backoff": "Linear", "retryDelay": "1", "retryIncrement": "4", "maxDelay": "6"}, SRC)
    assert isinstance(b, LinearBackoff)
    assert [b.delay(n) for n in (1, 2, 3)] == [1, 5, 6]


def test_config_exponential_keys_are_case_insensitive() -> None:
    b = backoff_from_config(
        {"BACKOFF": "exponential", "retrydelay": "3", "backofffactor": "4", "MaxDelay": "50", "jitter": "0"}, SRC
    )
    assert isinstance(b, ExponentialBackoff)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [3, 12, 48, 50]


def test_config_exponential_defaults() -> None:
    b = backoff_from_config({"backoff": "exponential"}, SRC)
    assert isinstance(b, ExponentialBackoff) and (b.base, b.factor, b.max_delay, b.jitter) == (1, 2, 300, 0.1)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"backoff": "random"}, r"cfg\.ini: \[worker\.ANPR\] backoff = 'random' is not a backoff; valid: fixed"),
        ({"retryDelay": "soon"}, r"cfg\.ini: \[worker\.ANPR\] retryDelay = 'soon' is not a number"),
        ({"backoff": "fixed", "maxDelay": "3"}, r"maxDelay does not apply to backoff = fixed"),
        ({"backoff": "linear", "jitter": "0.1"}, r"jitter does not apply to backoff = linear"),
        ({"backoff": "exponential", "retryIncrement": "2"}, r"retryIncrement does not apply to backoff = exponential"),
        ({"backoff": "exponential", "jitter": "2"}, r"cfg\.ini: \[worker\.ANPR\] jitter = '2': invalid jitter"),
        ({"retryDelay": "-5"}, r"retryDelay = '-5': invalid delay"),
        ({"backoff": "exponential", "backoffFactor": "0.5"}, r"backoffFactor = '0.5': invalid factor"),
    ],
)
def test_config_errors_name_the_key_and_file(section: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        backoff_from_config(section, SRC)
