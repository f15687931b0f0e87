"""bot/config.py: every key, its default, and each kind of bad input."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from bot import config
from bot.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_from_an_empty_file(tmp_path):
    s = config.load(write(tmp_path, ""), env={})
    assert s.prefix == "!"
    assert s.results_per_page == 5
    assert s.allowed_channels == ()
    assert s.token == ""
    assert s.collection == tmp_path / "collection"  # relative to the config file
    assert s.log_level == "INFO"


def test_every_key_is_read(tmp_path):
    p = write(tmp_path, """
token = "abc.def"
prefix = "?"
message_content = false
sync_commands = false
allowed_channels = [123, "456"]
collection = "/data/coll"
model = "ViT-B-32:laion2b_s34b_b79k"
device = "CPU"
threads = 4
queue_size = 64
results_per_page = 10
paging_timeout_s = 60
thumbnail_size = 256
cooldown_rate = 2
cooldown_per_s = 10
max_attachment_bytes = 1048576
max_image_pixels = 1000000
url_timeout_s = 3
url_max_bytes = 2097152
library_root = "/data/libs"
library_include_global = true
library_max_bytes = 4096
log_level = "debug"
""")
    s = config.load(p, env={})
    assert s == Settings(token="abc.def", prefix="?", message_content=False, sync_commands=False,
                         allowed_channels=(123, 456), collection=Path("/data/coll"),
                         model="ViT-B-32:laion2b_s34b_b79k", device="cpu", threads=4,
                         queue_size=64, results_per_page=10, paging_timeout_s=60.0,
                         thumbnail_size=256, cooldown_rate=2, cooldown_per_s=10.0,
                         max_attachment_bytes=1048576, max_image_pixels=1000000,
                         url_timeout_s=3.0, url_max_bytes=2097152, library_root=Path("/data/libs"),
                         library_include_global=True, library_max_bytes=4096,
                         log_level="DEBUG")


def test_env_token_wins_and_is_never_shown(tmp_path):
    p = write(tmp_path, 'token = "from-file"\n')
    assert config.load(p, env={}).token == "from-file"
    s = config.load(p, env={"DISCORD_TOKEN": "from-env"})
    assert s.token == "from-env"
    assert "from-env" not in repr(s) and "from-env" not in str(s)
    assert s.redact("x from-env y") == "x [token hidden] y"


@pytest.mark.parametrize("text, key, words", [
    ("colour = 1\n", "colour", "unknown key"),
    ("results_per_page = 11\n", "results_per_page", "between 1 and 10"),
    ("results_per_page = 0\n", "results_per_page", "between 1 and 10"),
    ('results_per_page = "5"\n', "results_per_page", "must be an integer"),
    ("results_per_page = 2.5\n", "results_per_page", "must be an integer"),
    ("sync_commands = 1\n", "sync_commands", "true or false"),
    ("prefix = 5\n", "prefix", "must be a string"),
    ('prefix = ""\n', "prefix", "1 to 10 characters"),
    ('prefix = "! "\n', "prefix", "without spaces"),
    ('device = "tpu"\n', "device", "auto, cpu, cuda"),
    ('log_level = "LOUD"\n', "log_level", "one of DEBUG"),
    ("paging_timeout_s = -1\n", "paging_timeout_s", "between"),
    ("paging_timeout_s = nan\n", "paging_timeout_s", "finite"),
    ("cooldown_per_s = true\n", "cooldown_per_s", "must be a number"),
    ("allowed_channels = 5\n", "allowed_channels", "list of channel ids"),
    ('allowed_channels = ["general"]\n', "allowed_channels", "list of channel ids"),
    ("allowed_channels = [-3]\n", "allowed_channels", "positive"),
    ("max_attachment_bytes = 10\n", "max_attachment_bytes", "between"),
    ('collection = ""\n', "collection", "must not be empty"),
    ("token = 42\n", "token", "must be a string"),
])
def test_bad_values_name_the_key(tmp_path, text, key, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p, env={})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(p))
    assert f"'{key}'" in msg and words in msg


def test_syntax_error_unreadable_and_missing(tmp_path):
    with pytest.raises(ConfigError, match="TOML syntax error"):
        config.load(write(tmp_path, "prefix = \n"), env={})
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="is a folder"):
        config.load(tmp_path, env={})
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(tmp_path / "bin.toml", env={})


def test_unreadable_file(tmp_path):
    p = write(tmp_path, "")
    with pytest.raises(ConfigError, match="cannot read the file"):
        config.load(p / "inside-a-file.toml", env={})  # NotADirectoryError, as root too


def test_bad_token_type_does_not_echo_the_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, "token = 123456789\n"), env={})
    assert "123456789" not in str(e.value)


def test_example_config_documents_every_key_with_its_default():
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    # Every key appears commented out with its default value.
    uncommented = "\n".join(line.removeprefix("# ") for line in text.splitlines()
                            if re.match(r"# [a-z_]+ = ", line))
    documented = tomllib.loads(uncommented)
    defaults = Settings()
    assert set(documented) == set(config._RULES)
    for key, value in documented.items():
        if key in ("collection", "library_root"):
            assert value == str(getattr(defaults, key))
        elif key == "allowed_channels":
            assert tuple(value) == defaults.allowed_channels
        else:
            assert value == getattr(defaults, key), key
    # ... and the file as shipped (all commented) is a valid config.
    assert config.from_mapping(tomllib.loads(text), env={}) == config.from_mapping({}, env={})


def test_store_keys(tmp_path):
    s = config.load(write(tmp_path, ""), env={})
    assert (s.store, s.milvus_uri, s.milvus_token) == ("faiss", "", "")
    assert s.store_options == {"store": "faiss", "milvus_uri": None, "milvus_token": None}
    p = write(tmp_path, 'store = "Milvus"\nmilvus_uri = "http://127.0.0.1:19530"\n'
                        'milvus_token_env = "MY_MILVUS"\n')
    s = config.load(p, env={"MY_MILVUS": "root:s3cret"})
    assert s.store_options == {"store": "milvus", "milvus_uri": "http://127.0.0.1:19530",
                               "milvus_token": "root:s3cret"}
    assert "s3cret" not in repr(s) and s.redact("token root:s3cret") == "token [token hidden]"
    # a Milvus Lite file is a path, relative to the config file
    lite = config.load(write(tmp_path, 'store = "milvus"\nmilvus_uri = "data/lite.db"\n'), env={})
    assert lite.milvus_uri == str(tmp_path / "data" / "lite.db")


@pytest.mark.parametrize("text, words", [
    ('store = "redis"', ["key 'store'", "faiss or milvus", "redis"]),
    ("store = 1", ["key 'store'", "string"]),
    ('milvus_token_env = "MISSING_VAR"', ["key 'milvus_token_env'", "MISSING_VAR", "not set"]),
    ('milvus_token_env = "root:hunter2"', ["key 'milvus_token_env'", "NAME", "never"]),
    ('milvus_token = "hunter2"', ["key 'milvus_token'", "environment variable",
                                  "milvus_token_env"]),
])
def test_bad_store_keys_are_one_line_naming_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text + "\n"), env={})
    msg = str(e.value)
    assert "\n" not in msg and "hunter2" not in msg
    for w in words:
        assert w in msg, (w, msg)
