"""Configuration: one place that reads ``config.ini``, the environment and keyword overrides.

Lookup order for the file (the first that exists wins):

1. the ``config`` argument / ``qengine --config PATH`` (must exist);
2. the ``QENGINE_CONFIG`` environment variable (must exist);
3. ``./config.ini``;
4. ``<platformdirs user config dir>/qengine/config.ini``;
5. ``/etc/qengine/config.ini``.

No file at all is fine: every key has a default. Keyword settings (snake_case, e.g.
``cache_root=...``) override the file.
"""

from __future__ import annotations

import configparser
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from .errors import ConfigurationError

__all__ = ["Config", "load_config", "find_config_file", "FSYNC_MODES", "QUEUE_TYPES"]

APP_NAME = "qengine"
ENV_VAR = "QENGINE_CONFIG"
FSYNC_MODES = ("always", "batch", "never")
#: Last place looked at (a module constant so tests and packagers can change it).
SYSTEM_CONFIG = Path("/etc") / APP_NAME / "config.ini"
#: Queue types the factory knows; ``cache`` is the original's name for the file backend.
QUEUE_TYPES = ("file", "cache")


def _default_cache_root() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


# Converters take ``where`` (e.g. "config.ini: [queue] fsync" or "setting fsync") and the raw
# text, and raise a ConfigurationError that names both.
def parse_float(where: str, raw: str, *, minimum: float = 0.0) -> float:
    """A finite float >= ``minimum`` or a ConfigurationError naming ``where`` and the value."""
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{where} = {raw!r} is not a number") from None
    if not (minimum <= value < float("inf")):
        raise ConfigurationError(f"{where} = {raw!r} must be a finite number >= {minimum}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(where: str, raw: str, *, hint: str = ": use true or false") -> bool:
    """true/false, 1/0, yes/no, on/off (any case), or a ConfigurationError ``<where> = <raw><hint>``."""
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ConfigurationError(f"{where} = {raw!r}{hint}")
    return value in _TRUE


def parse_int(where: str, raw: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """A whole number in [``minimum``, ``maximum``] or a ConfigurationError naming ``where`` and the value."""
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{where} = {raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigurationError(f"{where} = {raw!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{where} = {raw!r} must be <= {maximum}")
    return value


def parse_seconds(where: str, raw: str, *, maximum: float) -> float:
    """A finite number of seconds in (0, ``maximum``] or a ConfigurationError naming ``where`` and the value."""
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{where} = {raw!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise ConfigurationError(f"{where} = {raw!r} must be > 0 and <= {maximum:g} seconds")
    return value


@dataclass(frozen=True)
class Config:
    """Resolved settings. Build it with :func:`load_config`; it is immutable."""

    queue_type: str = "file"
    cache_root: Path = field(default_factory=_default_cache_root)
    #: ``always``: fsync every write before returning; ``batch``: a background flush every
    #: ``fsync_interval`` seconds; ``never``: leave it to the OS. See docs/DURABILITY in README.
    fsync: str = "batch"
    fsync_interval: float = 1.0
    #: Seconds to wait for a queue lock before raising LockTimeout.
    lock_timeout: float = 30.0
    #: Bytes after which the file backend starts a new log segment.
    segment_size: int = 16 * 1024 * 1024
    #: Default lease, in seconds, for ``reserve`` when the caller gives none.
    lease: float = 300.0
    #: Redis backend: a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, or the
    #: components below (host, port, db, username, password); never both.
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    redis_host: str | None = None
    redis_port: int | None = None
    redis_db: int | None = None
    redis_username: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    #: Prefix of every Redis key, so several applications can share one server.
    redis_prefix: str = "qengine"
    #: Seconds before a Redis connection or command gives up (StorageError, never a hang).
    redis_timeout: float = 5.0
    #: Mode of data files (folders get the matching search bits); 0o660 shares with the group.
    file_mode: int = 0o600
    #: The file the settings came from (None: defaults only).
    source: Path | None = None
    #: The whole parsed file, for sections later features read.
    parser: configparser.ConfigParser = field(default_factory=configparser.ConfigParser, compare=False, repr=False)

    def setting(self, section: str, key: str) -> str | None:
        """The raw value of ``[section] key`` in the file (key case-insensitive, one pair of
        PHP-style quotes stripped), or None. For keys that other modules own and validate."""
        if not self.parser.has_section(section):
            return None
        wanted = key.lower()
        return next((_unquote(v) for k, v in self.parser.items(section) if k.lower() == wanted), None)

    def find_section(self, name: str) -> str | None:
        """The section called ``name`` exactly, else the only one matching it case-insensitively.

        Per-queue sections (``[worker.QUEUE]``, ``[amqp.QUEUE]``) are looked up this way.
        """
        if self.parser.has_section(name):
            return name
        matches = [s for s in self.parser.sections() if s.lower() == name.lower()]
        return matches[0] if len(matches) == 1 else None

    def where(self, section: str, key: str) -> str:
        """``<file>: [section] key``, the prefix of error messages about that setting."""
        return f"{self.source if self.source is not None else 'configuration'}: [{section}] {key}"

    def with_overrides(self, **settings: Any) -> Config:
        """A copy with keyword settings applied and validated."""
        known = {f.name for f in fields(self)} - {"source", "parser"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigurationError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        # None means "not given": keep the file's value (callers pass optional arguments through)
        raw = {
            k: (oct(v) if k == "file_mode" and isinstance(v, int) else str(v))  # a mode is octal text
            for k, v in settings.items()
            if v is not None
        }
        # a relative cache_root is taken relative to the current directory, once, here: a
        # daemon that later changes directory must not look elsewhere
        values = _convert(raw, _keyword, Path.cwd())
        return replace(self, **values)


# ini key (as written, camelCase) -> (field name, converter(where, raw))
def _keys() -> dict[str, tuple[str, Callable[[str, str], Any]]]:
    return {
        "queueType": ("queue_type", _conv_queue_type),
        "cacheRoot": ("cache_root", _conv_path),
        "fsync": ("fsync", _conv_fsync),
        "fsyncInterval": ("fsync_interval", lambda w, v: parse_float(w, v, minimum=0.001)),
        "lockTimeout": ("lock_timeout", lambda w, v: parse_float(w, v, minimum=0.0)),
        "segmentSize": ("segment_size", lambda w, v: parse_int(w, v, minimum=64 * 1024, maximum=1 << 30)),
        "lease": ("lease", lambda w, v: parse_float(w, v, minimum=0.001)),
        "redisUrl": ("redis_url", _conv_redis_url),
        "redisHost": ("redis_host", _conv_text),
        "redisPort": ("redis_port", lambda w, v: _conv_port(w, v)),
        "redisDb": ("redis_db", lambda w, v: parse_int(w, v, minimum=0)),
        "redisUsername": ("redis_username", _conv_text),
        "redisPassword": ("redis_password", _conv_secret),
        "redisPrefix": ("redis_prefix", _conv_prefix),
        "redisTimeout": ("redis_timeout", lambda w, v: parse_float(w, v, minimum=0.001)),
        "fileMode": ("file_mode", _conv_file_mode),
    }


def _conv_file_mode(where: str, raw: str) -> int:
    try:
        value = int(raw.strip().lower().removeprefix("0o"), 8)
    except ValueError:
        raise ConfigurationError(f"{where} = {raw!r} is not an octal mode such as 0600 or 0660") from None
    if value & ~0o666 or value & 0o600 != 0o600:
        raise ConfigurationError(
            f"{where} = {raw!r}: the owner needs read and write (0600), and no execute bits (at most 0666)"
        )
    return value


_REDIS_COMPONENTS = ("redis_host", "redis_port", "redis_db", "redis_username", "redis_password")


def _conv_text(where: str, raw: str) -> str:
    value = raw.strip()
    if not value or "\x00" in value:
        raise ConfigurationError(f"{where} = {raw!r} must be non-empty text")
    return value


def _conv_secret(where: str, raw: str) -> str:
    if "\x00" in raw:
        raise ConfigurationError(f"{where} holds a NUL character")  # never echo a password
    return raw


def _conv_port(where: str, raw: str) -> int:
    value = parse_int(where, raw, minimum=1)
    if value > 65535:
        raise ConfigurationError(f"{where} = {raw!r} must be a port number from 1 to 65535")
    return value


def _conv_prefix(where: str, raw: str) -> str:
    value = raw.strip()
    if not value or any(c in value for c in "{}\x00 "):
        raise ConfigurationError(f"{where} = {raw!r}: non-empty, without braces or spaces")
    return value


def _conv_redis_url(where: str, raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("redis://", "rediss://", "unix://")):
        # the URL may hold a password: show only its scheme
        scheme = value.split(":", 1)[0] if ":" in value else value[:10]
        raise ConfigurationError(f"{where} must start with redis://, rediss:// or unix:// (got {scheme!r}...)")
    try:
        urlsplit(value).port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise ConfigurationError(f"{where} has a port out of range (1-65535)") from None
    return value


def _conv_queue_type(where: str, raw: str) -> str:
    value = raw.strip().lower()
    from .factory import QueueFactory  # the factory owns the registry of backends

    valid = QueueFactory.queue_types()
    if value not in valid:
        raise ConfigurationError(f"{where} = {raw!r} is not a known queue type; valid: {', '.join(valid)}")
    return value


def _conv_fsync(where: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in FSYNC_MODES:
        raise ConfigurationError(f"{where} = {raw!r}; valid: {', '.join(FSYNC_MODES)}")
    return value


def _conv_path(where: str, raw: str) -> Path:
    value = raw.strip()
    if not value or "\x00" in value:
        raise ConfigurationError(f"{where} = {raw!r} is not a usable path")
    return Path(os.path.expanduser(os.path.expandvars(value)))


def _unquote(value: str) -> str:
    """Strip one pair of matching quotes, as PHP's parse_ini_file does (``cacheRoot = "/srv/q"``)."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _convert(raw: Mapping[str, str], describe: Callable[[str], str], base_dir: Path) -> dict[str, Any]:
    """Convert raw values by field name; relative paths resolve against ``base_dir``."""
    by_field = {name: (key, conv) for key, (name, conv) in _keys().items()}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key, conv = by_field[name]
        out[name] = conv(describe(key if describe is not _keyword else name), value)
        if name == "cache_root" and not out[name].is_absolute():
            # normpath, not resolve(): a symlinked cacheRoot must stay visible to be refused
            out[name] = Path(os.path.normpath(base_dir / out[name]))
    return out


def _keyword(name: str) -> str:
    return f"setting {name}"


def find_config_file(config: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to use under the lookup order, or None when there is none."""
    if config is not None:
        path = Path(config)
        if not path.exists():
            raise ConfigurationError(f"config file {str(path)!r} does not exist")
        if not path.is_file():
            raise ConfigurationError(f"config file {str(path)!r} is not a file")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigurationError(f"{ENV_VAR}={env!r} names a config file that does not exist")
        return path
    for candidate in (
        Path("config.ini"),
        Path(platformdirs.user_config_dir(APP_NAME)) / "config.ini",
        SYSTEM_CONFIG,
    ):
        if candidate.is_file():
            return candidate
    return None


def load_config(config: str | os.PathLike[str] | Config | None = None, **settings: Any) -> Config:
    """Resolve the configuration (file, then keyword overrides) and validate every value.

    Raises :class:`ConfigurationError` naming the key and the file for a bad value, and
    listing the valid keys for an unknown one.
    """
    if isinstance(config, Config):
        return config.with_overrides(**settings) if settings else config
    path = find_config_file(config)
    # No DEFAULT section: its keys would otherwise appear in every section.
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00no-default")
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep camelCase keys
    base = Config()
    if path is not None:
        source = str(path)
        try:
            with open(path, encoding="utf-8-sig") as fh:  # -sig: files saved with a BOM
                parser.read_file(fh, source=source)
        except (configparser.Error, UnicodeDecodeError, OSError) as exc:
            raise ConfigurationError(f"{source}: cannot read config: {str(exc).splitlines()[0]}") from None
        raw: dict[str, str] = {}
        if parser.has_section("queue"):
            keys = _keys()
            lower = {k.lower(): k for k in keys}
            seen: dict[str, str] = {}
            for key, value in parser.items("queue"):
                canonical = lower.get(key.lower())
                if canonical is None:
                    if key.lower() in _LATER_KEYS:
                        continue  # read by the features that own them
                    valid = ", ".join(sorted(keys) + sorted(_LATER_KEYS_CASED))
                    raise ConfigurationError(f"{source}: unknown key [queue] {key}; valid: {valid}")
                if canonical in seen:
                    raise ConfigurationError(f"{source}: [queue] {key} repeats [queue] {seen[canonical]}")
                seen[canonical] = key
                raw[keys[canonical][0]] = _unquote(value)
        values = _convert(raw, lambda key: f"{source}: [queue] {key}", path.resolve().parent)
        base = replace(base, source=path.resolve(), parser=parser, **values)
    resolved = base.with_overrides(**settings) if settings else base
    _check_redis_form(resolved)
    return resolved


def _check_redis_form(config: Config) -> None:
    """``redisUrl`` or the components, never both (as the seed's URI-or-components rule)."""
    given = [name for name in _REDIS_COMPONENTS if getattr(config, name) is not None]
    if config.redis_url is not None and given:
        keys = {v[0]: k for k, v in _keys().items()}
        where = str(config.source) if config.source else "settings"
        raise ConfigurationError(
            f"{where}: give redisUrl or {', '.join(keys[n] for n in _REDIS_COMPONENTS)}, not both "
            f"(found redisUrl and {', '.join(keys[n] for n in given)})"
        )


# Keys that belong to [queue] but are read by other modules (workers, hooks, ...).
_LATER_KEYS_CASED: tuple[str, ...] = ("workersPath", "mode", "brokerActive", "manualMode", "spoolDir")
_LATER_KEYS = {k.lower() for k in _LATER_KEYS_CASED}
