"""Configuration: lookup order, validation of every key, keyword overrides, the example file."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import platformdirs
import pytest

from queue_engine import QueueFactory
from queue_engine.config import ENV_VAR, Config, find_config_file, load_config
from queue_engine.errors import ConfigurationError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.ini.example"
REDIS_COMPONENT_KEYS = ("redisHost", "redisPort", "redisDb", "redisUsername", "redisPassword")
INI_KEYS = (
    "queueType", "cacheRoot", "fsync", "fsyncInterval", "lockTimeout", "segmentSize", "lease",
    "redisUrl", "redisPrefix", "redisTimeout", "fileMode", *REDIS_COMPONENT_KEYS,
)
SYSTEM_CONFIG = Path("/etc/qengine/config.ini")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real config can leak in: empty cwd, per-user config dir under tmp_path, no env var."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    user_root = tmp_path / "user-config"
    monkeypatch.setattr(platformdirs, "user_config_dir", lambda appname=None, *a, **k: str(user_root / str(appname)))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return tmp_path


def write_ini(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


def queue_ini(path: Path, **keys: object) -> Path:
    return write_ini(path, "[queue]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))


# -- lookup order --------------------------------------------------------------------------

LEVELS = ("explicit", "env", "cwd", "user")


@pytest.mark.parametrize("winner", LEVELS)
def test_lookup_order_first_existing_wins(winner: str, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every level from the winner down gets a file with a distinct lease; the winner's must be used.
    paths = {
        "explicit": isolated / "explicit" / "given.ini",
        "env": isolated / "env" / "from-env.ini",
        "cwd": Path.cwd() / "config.ini",
        "user": isolated / "user-config" / "qengine" / "config.ini",
    }
    for level in LEVELS[LEVELS.index(winner):]:
        queue_ini(paths[level], lease=float(LEVELS.index(level) + 1))
    if winner in ("explicit", "env"):
        monkeypatch.setenv(ENV_VAR, str(paths["env"]))
    config = load_config(paths["explicit"] if winner == "explicit" else None)
    assert config.lease == LEVELS.index(winner) + 1
    assert config.source == paths[winner].resolve()


@pytest.mark.skipif(SYSTEM_CONFIG.exists(), reason=f"{SYSTEM_CONFIG} exists on this machine")
def test_no_file_anywhere_gives_defaults() -> None:
    assert find_config_file() is None
    config = load_config()
    assert config.source is None
    assert config == Config()


def test_missing_explicit_file_is_an_error_even_if_others_exist(isolated: Path) -> None:
    queue_ini(Path.cwd() / "config.ini", fsync="never")
    missing = isolated / "nope.ini"
    with pytest.raises(ConfigurationError, match=re.escape(str(missing))):
        load_config(missing)


def test_explicit_directory_is_not_a_config_file(isolated: Path) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(str(isolated))):
        load_config(isolated)


def test_env_var_naming_a_missing_file_is_an_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue_ini(Path.cwd() / "config.ini", fsync="never")
    monkeypatch.setenv(ENV_VAR, str(isolated / "gone.ini"))
    with pytest.raises(ConfigurationError, match=ENV_VAR):
        load_config()


def test_empty_env_var_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    queue_ini(Path.cwd() / "config.ini", fsync="never")
    monkeypatch.setenv(ENV_VAR, "")
    assert load_config().fsync == "never"


def test_file_without_queue_section_gives_defaults(isolated: Path) -> None:
    path = write_ini(isolated / "other.ini", "[database]\nhost = db\n")
    config = load_config(path)
    assert config.source == path.resolve()
    assert config.fsync == "batch" and config.lease == 300.0
    assert config.parser.get("database", "host") == "db"  # other sections stay readable


def test_unparsable_file_names_the_file(isolated: Path) -> None:
    path = write_ini(isolated / "broken.ini", "queueType = file\n")  # no section header
    with pytest.raises(ConfigurationError, match=re.escape(str(path))):
        load_config(path)


# -- values ---------------------------------------------------------------------------------


def test_every_key_is_read(isolated: Path) -> None:
    path = queue_ini(
        isolated / "c.ini",
        queueType="file", cacheRoot=isolated / "q", fsync="always", fsyncInterval=0.25,
        lockTimeout=0, segmentSize=65536, lease=12.5,
    )
    config = load_config(path)
    assert (config.queue_type, config.cache_root, config.fsync) == ("file", isolated / "q", "always")
    assert (config.fsync_interval, config.lock_timeout, config.segment_size, config.lease) == (0.25, 0.0, 65536, 12.5)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("queueType", "rabbitmq", "not a known queue type"),
        ("queueType", "", "not a known queue type"),
        ("cacheRoot", "", "not a usable path"),
        ("fsync", "sometimes", "valid: always, batch, never"),
        ("fsync", "always ; inline comment", "valid: always, batch, never"),
        ("fsyncInterval", "soon", "not a number"),
        ("fsyncInterval", "0", ">= 0.001"),
        ("fsyncInterval", "nan", "finite"),
        ("fsyncInterval", "inf", "finite"),
        ("lockTimeout", "-1", ">= 0"),
        ("lockTimeout", "30s", "not a number"),
        ("segmentSize", "1024", ">= 65536"),
        ("segmentSize", "16MB", "not a whole number"),
        ("segmentSize", "1.5e6", "not a whole number"),
        ("segmentSize", "99999999999999999999999", "<= 1073741824"),
        ("lease", "0", ">= 0.001"),
        ("lease", "-5", ">= 0.001"),
    ],
)
def test_bad_value_names_key_value_and_file(key: str, value: str, says: str, isolated: Path) -> None:
    path = queue_ini(isolated / "bad.ini", **{key: value})
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text and key in text and repr(value) in text and says in text


def test_unknown_key_lists_the_valid_ones(isolated: Path) -> None:
    path = queue_ini(isolated / "typo.ini", queueTyp="file")
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    text = str(info.value)
    assert "queueTyp" in text and str(path) in text
    for key in INI_KEYS:
        assert key in text


def test_unknown_queue_type_lists_the_valid_ones(isolated: Path) -> None:
    path = queue_ini(isolated / "apc.ini", queueType="apc")
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    valid = str(info.value).partition("valid: ")[2].split(", ")
    assert valid == QueueFactory.queue_types() and {"file", "cache"} <= set(valid)


@pytest.mark.parametrize("spelling", ["cache", "CACHE", " Cache "])
def test_cache_is_accepted_as_the_file_backend(spelling: str, isolated: Path) -> None:
    config = load_config(queue_ini(isolated / "php.ini", queueType=spelling))
    assert config.queue_type == "cache"
    assert "cache" in QueueFactory.queue_types()


def test_cache_builds_the_file_backend(isolated: Path) -> None:
    try:
        module = importlib.import_module("queue_engine.backends.file")
    except ModuleNotFoundError as exc:  # only the backend's own absence skips; other import errors fail
        if exc.name is None or not "queue_engine.backends.file".startswith(exc.name):
            raise
        pytest.skip(f"queue_engine.backends.file is not written yet ({exc})")
    file_queue_manager = getattr(module, "FileQueueManager", None)
    if file_queue_manager is None:
        pytest.skip("queue_engine.backends.file does not define FileQueueManager yet")
    path = queue_ini(isolated / "php.ini", queueType="cache", cacheRoot=isolated / "q")
    with QueueFactory.get_queue_manager(path) as manager:
        assert isinstance(manager, file_queue_manager)


@pytest.mark.parametrize(
    ("written", "raw", "field", "value"),
    [
        ("queuetype", "cache", "queue_type", "cache"),
        ("QUEUETYPE", "cache", "queue_type", "cache"),
        ("FSYNC", "never", "fsync", "never"),
        ("fsyncinterval", "2", "fsync_interval", 2.0),
        ("LockTimeout", "2", "lock_timeout", 2.0),
        ("SEGMENTSIZE", "65536", "segment_size", 65536),
        ("Lease", "2", "lease", 2.0),
    ],
)
def test_keys_are_case_insensitive(written: str, raw: str, field: str, value: object, isolated: Path) -> None:
    config = load_config(queue_ini(isolated / "case.ini", **{written: raw}))
    assert getattr(config, field) == value


def test_cacheroot_key_is_case_insensitive(isolated: Path) -> None:
    config = load_config(queue_ini(isolated / "case.ini", CACHEROOT=isolated / "elsewhere"))
    assert config.cache_root == isolated / "elsewhere"


def test_relative_cacheroot_is_relative_to_the_config_file(isolated: Path) -> None:
    path = queue_ini(isolated / "etc" / "config.ini", cacheRoot="data/queues")
    assert Path.cwd() != path.parent
    assert load_config(path).cache_root == (isolated / "etc" / "data" / "queues").resolve()


def test_relative_cacheroot_in_found_cwd_file(isolated: Path) -> None:
    queue_ini(Path.cwd() / "config.ini", cacheRoot="../q")
    assert load_config().cache_root == (isolated / "q").resolve()


def test_cacheroot_expands_home_and_variables(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(isolated / "home"))
    monkeypatch.setenv("QENGINE_TEST_ROOT", str(isolated / "var"))
    assert load_config(queue_ini(isolated / "a.ini", cacheRoot="~/q")).cache_root == isolated / "home" / "q"
    path = queue_ini(isolated / "b.ini", cacheRoot="$QENGINE_TEST_ROOT/q")
    assert load_config(path).cache_root == isolated / "var" / "q"


def test_percent_in_values_is_literal(isolated: Path) -> None:
    # No interpolation: a path with % must not be an error.
    assert load_config(queue_ini(isolated / "p.ini", cacheRoot=isolated / "100%")).cache_root == isolated / "100%"


# -- keyword overrides --------------------------------------------------------------------


def test_keyword_settings_beat_the_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = queue_ini(isolated / "env.ini", fsync="always", lease=5, cacheRoot=isolated / "fromfile")
    monkeypatch.setenv(ENV_VAR, str(path))
    config = load_config(fsync="never", lease=7, cache_root=isolated / "fromkw")
    assert (config.fsync, config.lease, config.cache_root) == ("never", 7.0, isolated / "fromkw")
    assert config.source == path.resolve()


def test_keyword_settings_apply_to_a_config_object() -> None:
    base = Config(fsync="always")
    assert load_config(base) is base
    assert load_config(base, lease=3).lease == 3.0
    assert base.lease == 300.0  # immutable


def test_unknown_keyword_setting_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(cache_dir="/tmp/q")
    text = str(info.value)
    assert "cache_dir" in text
    for name in ("queue_type", "cache_root", "fsync", "fsync_interval", "lock_timeout", "segment_size", "lease"):
        assert name in text


@pytest.mark.parametrize(
    ("setting", "value"),
    [("fsync", "sometimes"), ("queue_type", "rabbitmq"), ("lease", 0), ("segment_size", 10), ("lock_timeout", True)],
)
def test_keyword_settings_are_validated(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(str(value)))):
        load_config(**{setting: value})


def test_none_keyword_setting_means_not_given(isolated: Path) -> None:
    path = write_ini(isolated / "c.ini", "[queue]\ncacheRoot = /srv/from-file\n")
    assert load_config(path, cache_root=None).cache_root == Path("/srv/from-file")


@pytest.mark.parametrize("quoted", ['"/srv/q"', "'/srv/q'"])
def test_php_style_quoted_values_are_unquoted(isolated: Path, quoted: str) -> None:
    path = write_ini(isolated / "php.ini", f"[queue]\ncacheRoot = {quoted}\nfsync = \"always\"\n")
    config = load_config(path)
    assert (config.cache_root, config.fsync) == (Path("/srv/q"), "always")


def test_redis_url_and_components_are_exclusive(isolated: Path) -> None:
    path = write_ini(isolated / "r.ini", "[queue]\nredisUrl = redis://h:1/0\nredisPort = 6380\n")
    with pytest.raises(ConfigurationError, match=r"give redisUrl or .* not both \(found redisUrl and redisPort\)"):
        load_config(path)
    with pytest.raises(ConfigurationError, match="not both"):
        load_config(redis_url="redis://h:1/0", redis_host="other")
    assert load_config(redis_host="h", redis_port=6380).redis_port == 6380


def test_redis_url_error_never_echoes_a_password(isolated: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(redis_url="http://user:s3cret@host/0")
    assert "s3cret" not in str(info.value)


def test_redis_backend_without_redis_py_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from queue_engine import QueueFactory

    monkeypatch.setitem(sys.modules, "redis", None)  # what an install without the extra looks like
    for name in [n for n in sys.modules if n.startswith("queue_engine.backends.redis")]:
        monkeypatch.delitem(sys.modules, name)  # imported by earlier tests: import it afresh
    with pytest.raises(ConfigurationError, match=r"needs the 'redis' package: pip install 'qengine\[redis\]'"):
        QueueFactory.get_queue_manager(queue_type="redis")


def test_relative_keyword_cache_root_is_resolved_once(isolated: Path) -> None:
    config = load_config(cache_root="rel")
    assert config.cache_root == (isolated / "cwd" / "rel").resolve()


def test_case_variant_duplicate_key_is_an_error(isolated: Path) -> None:
    path = write_ini(isolated / "d.ini", "[queue]\nqueueType = file\nqueuetype = cache\n")
    with pytest.raises(ConfigurationError, match=r"queuetype repeats \[queue\] queueType"):
        load_config(path)


def test_default_section_does_not_leak_into_queue(isolated: Path) -> None:
    path = write_ini(isolated / "d.ini", "[DEFAULT]\nfoo = 1\n[queue]\nfsync = never\n")
    assert load_config(path).fsync == "never"


def test_utf8_bom_is_accepted(isolated: Path) -> None:
    path = isolated / "bom.ini"
    path.write_bytes(b"\xef\xbb\xbf[queue]\nfsync = always\n")
    assert load_config(path).fsync == "always"


def test_keyword_error_names_the_keyword(isolated: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^setting lock_timeout = 'soon' is not a number$"):
        load_config(lock_timeout="soon")


def test_explicit_directory_is_not_a_file(isolated: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not a file"):
        load_config(isolated)


# -- the example file ---------------------------------------------------------------------


def _example_settings() -> dict[str, str]:
    """``;key = value`` lines of the example's [queue] section (the commented-out defaults)."""
    settings: dict[str, str] = {}
    section = None
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"\s*\[(\w+)\]\s*", line)
        if header:
            section = header.group(1)
            continue
        match = re.fullmatch(r";(\w+) = (.+)", line)
        if match and section == "queue":
            settings[match.group(1)] = match.group(2)
    return settings


def test_example_loads_as_is() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE


def test_example_documents_every_key_with_its_default(isolated: Path) -> None:
    # the [queue] keys config.py reads, and those other modules read: each must be documented
    from queue_engine.config import _LATER_KEYS_CASED, _keys

    assert sorted(_keys()) == sorted(INI_KEYS)
    settings = _example_settings()
    # the Redis components exclude redisUrl, so they are documented in prose, not as defaults
    assert sorted(settings) == sorted(set(INI_KEYS + _LATER_KEYS_CASED) - set(REDIS_COMPONENT_KEYS))
    for component in REDIS_COMPONENT_KEYS:
        assert component in EXAMPLE.read_text(encoding="utf-8")
    uncommented = queue_ini(isolated / "example.ini", **settings)
    config = load_config(uncommented)
    defaults = Config()
    for name in ("queue_type", "fsync", "fsync_interval", "lock_timeout", "segment_size", "lease"):
        assert getattr(config, name) == getattr(defaults, name), name
    assert config.cache_root.is_absolute()


def test_repr_of_a_config_never_shows_a_redis_password(isolated: Path) -> None:
    config = load_config(redis_url="redis://app:s3cret@host:6379/0")
    assert "s3cret" not in repr(config)
