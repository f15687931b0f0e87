"""The bot's settings: a TOML file (tomllib) into one frozen, typed `Settings`.

Every key has a default, so an empty file (or none) is a valid configuration apart from
the token. The token may also come from the environment variable DISCORD_TOKEN, which
wins over the file. It is never shown: `repr(settings)` hides it, and `redact()` masks it
in any text (the logging filter uses that).

A bad configuration raises `ConfigError` whose `str()` is one line naming the file, the
key and the problem; `python -m bot` prints it and exits with status 2.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

TOKEN_ENV = "DISCORD_TOKEN"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_RESULTS_PER_PAGE = 10  # Discord: at most 10 embeds per message, one image each
MiB = 1024 * 1024


class ConfigError(Exception):
    """A configuration that cannot be used; str(e) is the one line to print."""


@dataclass(frozen=True)
class Settings:
    # -- Discord ------------------------------------------------------------------------------
    token: str = field(default="", repr=False)
    prefix: str = "!"
    message_content: bool = True  # ask for the privileged intent; false: /find and @mention only
    sync_commands: bool = True
    allowed_channels: tuple[int, ...] = ()
    # -- the engine -----------------------------------------------------------------------------
    collection: Path = Path("collection")
    model: str = ""  # "" = the model that built the collection
    device: str = "auto"
    threads: int = 0  # 0 = torch's default
    queue_size: int = 512
    # -- where the vectors live: "faiss" (embedded, in the collection folder) or "milvus" ---------
    store: str = "faiss"
    milvus_uri: str = ""  # "" = a Milvus Lite file in the collection folder
    milvus_token_env: str = ""  # NAME of the environment variable holding the Milvus token
    milvus_token: str = field(default="", repr=False)  # read from that variable, never a key
    # -- the encoder service (python -m index serve): "" = load the model in this process ------
    encoder_url: str = ""
    encoder_token_env: str = "CLIPFIND_ENCODER_TOKEN"  # NAME of the variable holding its token
    encoder_token: str = field(default="", repr=False)  # read from that variable, never a key
    # -- results and paging ------------------------------------------------------------------------
    results_per_page: int = 5
    paging_timeout_s: float = 300.0
    thumbnail_size: int = 512
    # -- abuse limits --------------------------------------------------------------------------------
    cooldown_rate: int = 3  # queries per user ...
    cooldown_per_s: float = 30.0  # ... per this many seconds; rate 0 turns the cooldown off
    max_attachment_bytes: int = 8 * MiB
    max_image_pixels: int = 40_000_000
    url_timeout_s: float = 10.0
    url_max_bytes: int = 8 * MiB
    # -- the server image library --------------------------------------------------------------
    library_root: Path = Path("libraries")  # one collection per server, under this folder
    library_include_global: bool = False  # a server's searches also see `collection`
    library_max_bytes: int = 8 * MiB  # larger posted images are not indexed
    # -- logging ---------------------------------------------------------------------------------------
    log_level: str = "INFO"

    def redact(self, text: str) -> str:
        """`text` with the tokens masked (no-op when there is none)."""
        for secret in (self.token, self.milvus_token, self.encoder_token):
            if secret and secret in text:
                text = text.replace(secret, "[token hidden]")
        return text

    @property
    def store_options(self) -> dict[str, Any]:
        """Engine.open's store arguments (store, milvus_uri, milvus_token)."""
        return {"store": self.store, "milvus_uri": self.milvus_uri or None,
                "milvus_token": self.milvus_token or None}


# key -> (kind, low, high); kinds: str, bool, int, float, path, channels, level, device
_RULES: dict[str, tuple[str, float | None, float | None]] = {
    "token": ("str", None, None),
    "prefix": ("prefix", None, None),
    "message_content": ("bool", None, None),
    "sync_commands": ("bool", None, None),
    "allowed_channels": ("channels", None, None),
    "collection": ("path", None, None),
    "model": ("str", None, None),
    "device": ("device", None, None),
    "threads": ("int", 0, 256),
    "queue_size": ("int", 1, 1_000_000),
    "store": ("store", None, None),
    "milvus_uri": ("uri", None, None),
    "milvus_token_env": ("envname", None, None),
    "encoder_url": ("http", None, None),
    "encoder_token_env": ("envname", None, None),
    "results_per_page": ("int", 1, MAX_RESULTS_PER_PAGE),
    "paging_timeout_s": ("float", 1, 86_400),
    "thumbnail_size": ("int", 64, 2048),
    "cooldown_rate": ("int", 0, 1000),
    "cooldown_per_s": ("float", 0.1, 86_400),
    "max_attachment_bytes": ("int", 1024, 500 * MiB),
    "max_image_pixels": ("int", 10_000, 500_000_000),
    "url_timeout_s": ("float", 0.5, 300),
    "url_max_bytes": ("int", 1024, 500 * MiB),
    "library_root": ("path", None, None),
    "library_include_global": ("bool", None, None),
    "library_max_bytes": ("int", 1024, 500 * MiB),
    "log_level": ("level", None, None),
}
_FROM_ENV = {"milvus_token", "encoder_token"}  # secrets: read from variables the config names
assert set(_RULES) | _FROM_ENV == {f.name for f in fields(Settings)}


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def _check(key: str, value: Any, base: Path) -> Any:
    kind, low, high = _RULES[key]

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"key '{key}': {problem}")

    def in_range(v: float) -> None:
        if (low is not None and v < low) or (high is not None and v > high):
            raise bad(f"must be between {low:g} and {high:g}, got {v:g}")

    if kind in ("str", "prefix", "device", "level", "path", "store", "uri", "envname", "http"):
        if not isinstance(value, str):
            raise bad(f"must be a string, got {_type_name(value)}")
        if kind == "store":
            if value.strip().lower() not in ("faiss", "milvus"):
                raise bad(f"must be faiss or milvus, got {value!r}")
            return value.strip().lower()
        if kind == "uri":  # a server URL as is; a Milvus Lite file relative to the config
            v = value.strip()
            if not v or "://" in v:
                return v
            p = Path(v).expanduser()
            return str(p if p.is_absolute() else base / p)
        if kind == "http":
            v = value.strip()
            if v and not re.fullmatch(r"https?://[^\s/?#]+/?", v):
                raise bad(f"must be http://HOST:PORT (or https://), got {value!r}")
            return v
        if kind == "envname":
            if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
                raise bad(f"must be the NAME of an environment variable (the token itself "
                          f"never goes in the config), got {len(value)} characters")
            return value
        if kind == "prefix":
            if not value.strip() or value != value.strip() or len(value) > 10:
                raise bad(f"must be 1 to 10 characters without spaces, got {value!r}")
        elif kind == "device":
            d = value.strip().lower()
            ok = d in ("auto", "cpu", "cuda", "mps") or (
                d.startswith("cuda:") and d[5:].isdigit())
            if not ok:
                raise bad(f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
            return d
        elif kind == "level":
            if value.upper() not in LOG_LEVELS:
                raise bad(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
            return value.upper()
        elif kind == "path":
            if not value.strip():
                raise bad("must not be empty")
            p = Path(value).expanduser()
            return p if p.is_absolute() else base / p
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {_type_name(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, got {_type_name(value)}")
        in_range(value)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(f"must be a number, got {_type_name(value)}")
        if not math.isfinite(value):
            raise bad(f"must be a finite number, got {value}")
        in_range(value)
        return float(value)
    if kind == "channels":
        if not isinstance(value, list):
            raise bad(f"must be a list of channel ids, got {_type_name(value)}")
        out = []
        for v in value:
            if isinstance(v, str) and v.strip().isdigit():
                v = int(v.strip())
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise bad(f"must be a list of channel ids (positive integers), got {v!r}")
            out.append(v)
        return tuple(out)
    raise AssertionError(kind)


def from_mapping(data: dict[str, Any], *, base: Path | None = None,
                 env: dict[str, str] | None = None) -> Settings:
    """Settings from a parsed TOML table; relative paths are resolved against `base`."""
    base = base if base is not None else Path.cwd()
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _FROM_ENV:
            raise ConfigError(f"key '{key}': the token never goes in the config; put it "
                              f"in an environment variable and name that with {key}_env")
        if key not in _RULES:
            near = [k for k in _RULES if k.split("_")[0] == key.split("_")[0]]
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            raise ConfigError(f"key '{key}': unknown key{hint}; see config.example.toml")
        values[key] = _check(key, value, base)
    if "collection" not in values:
        values["collection"] = base / Settings.collection
    if "library_root" not in values:
        values["library_root"] = base / Settings.library_root
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        values["token"] = token
    else:
        values["token"] = str(values.get("token", "")).strip()
    name = values.get("milvus_token_env", "")
    if name:
        values["milvus_token"] = env.get(name, "").strip()
        if not values["milvus_token"]:
            raise ConfigError(f"key 'milvus_token_env': the environment variable {name} "
                              "is not set (it should hold the Milvus token)")
    if values.get("encoder_url"):  # missing: the service answers 401, named at start
        values["encoder_token"] = env.get(values.get("encoder_token_env")
                                          or Settings.encoder_token_env, "").strip()
    return Settings(**values)


def load(path: Path | None, *, env: dict[str, str] | None = None) -> Settings:
    """Read a TOML file (None: defaults only; relative paths against the working folder)."""
    if path is None:
        return from_mapping({}, env=env)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; copy config.example.toml to start") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a TOML file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from None
    try:
        return from_mapping(data, base=path.resolve().parent, env=env)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
