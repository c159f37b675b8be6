"""One Settings object, from CLI flags > SPECCY_<KEY> environment > config.toml > defaults."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from speccyd.config.units import parse_duration, parse_size

ENV_PREFIX = "SPECCY_"
CONFIG_FILE = "config.toml"


class SettingsError(Exception):
    """A setting that cannot be used; the message names the key and where the value came from."""


def _int(low: int, high: int | None = None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        if isinstance(value, str):
            if not value.strip().lstrip("-").isdigit():
                raise ValueError(f"expected a whole number, got {value!r}")
            value = int(value)
        if not isinstance(value, int):
            raise ValueError("expected a whole number")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def _switch(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"on", "true", "yes", "1"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"off", "false", "no", "0"}:
        return False
    raise ValueError(f"expected 'on' or 'off', got {value!r}")


def _rate_limit(value: object) -> int:
    """Requests per minute per user; 0 means off."""
    if isinstance(value, str) and value.strip().lower() in {"off", "0"}:
        return 0
    return _int(1)(value)


def _url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a URL string")
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _host(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a host name or IP address")
    return value.strip()


def _interfaces(value: object) -> tuple[str, ...]:
    """ "all", or IP addresses as a TOML list or a comma-separated string."""
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return ()
        items: list[object] = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("expected 'all' or a list of IP addresses")
    addresses = []
    for item in items:
        try:
            addresses.append(str(ipaddress.ip_address(str(item).strip())))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    if not addresses:
        raise ValueError("expected 'all' or at least one IP address")
    return tuple(addresses)


def _name(value: object) -> str:
    """A DNS-SD instance name: up to 63 bytes of UTF-8 (RFC 6763, section 4.1.1)."""
    if not isinstance(value, str):
        raise ValueError("expected a name")
    name = value.strip() or _host_name()
    if len(name.encode()) > 63:
        raise ValueError(f"must be at most 63 bytes of UTF-8, got {len(name.encode())}")
    return name


def _host_name() -> str:
    import socket

    # "mini.local" or "nas.example.lan" → "mini": the instance name people recognise.
    return socket.gethostname().split(".")[0] or "speccyd"


def _optional_path(value: object) -> Path | None:
    if not isinstance(value, str):
        raise ValueError("expected a file path")
    return Path(value).expanduser() if value.strip() else None


def _log_level(value: object) -> str:
    levels = ("debug", "info", "warning", "error")
    if not isinstance(value, str) or value.strip().lower() not in levels:
        raise ValueError(f"expected one of {', '.join(levels)}, got {value!r}")
    return value.strip().lower()


def _limit(value: object) -> int:
    """A whole-number limit; 0 or "off" means none."""
    if isinstance(value, str) and value.strip().lower() in {"off", "none"}:
        return 0
    return _int(0)(value)


def _price(value: object) -> float:
    """US dollars per million characters (or tokens)."""
    if isinstance(value, bool):
        raise ValueError("expected a price in USD (per million characters or tokens)")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"expected a price in USD (per million characters or tokens), got {value!r}") from None
    if not isinstance(value, int | float) or value < 0 or value != value:
        raise ValueError("expected a price of 0 or more USD")
    return float(value)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/@-]{0,99}")
OPENAI_MODELS = "tts-1, tts-1-hd, gpt-4o-mini-tts"
OPENAI_VOICES = "alloy, ash, ballad, coral, echo, fable, nova, onyx, sage, shimmer, verse, marin, cedar"


def _names(value: object, *, allow_empty: bool = False) -> tuple[str, ...]:
    """Model or voice names, as a TOML list or a comma-separated string; each a plain token."""
    items = value if isinstance(value, list) else value.split(",") if isinstance(value, str) else None
    if items is None or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a list of names, as a TOML list or separated by commas")
    names = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a usable name (letters, digits and . _ : + / @ -, at most 100)")
    if not names and not allow_empty:
        raise ValueError("expected at least one name")
    return names


def _log_format(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() not in {"text", "json"}:
        raise ValueError(f"expected 'text' or 'json', got {value!r}")
    return value.strip().lower()


def _listen(value: object) -> str:
    """ "off", or host:port for a separate metrics listener ([::1]:9420 for IPv6)."""
    if not isinstance(value, str):
        raise ValueError("expected 'off' or host:port")
    value = value.strip()
    if value.lower() in {"off", ""}:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9420, got {value!r}")
    return value


def _import_size(value: object) -> int:
    size = parse_size(value)
    if size == 0:
        raise ValueError("must be a size such as '64MB' (imports cannot be unlimited)")
    return size


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Spec:
    parse: Callable[[object], Any]
    default: str
    doc: str


# The single table of settings: parsing, defaults and the comments written into config.toml.
SPECS: dict[str, Spec] = {
    "host": Spec(_host, "0.0.0.0", "Address to listen on; 0.0.0.0 serves the whole LAN."),
    "port": Spec(_int(0, 65535), "8420", "TCP port (0 picks a free one and logs it)."),
    "openai_base_url": Spec(
        _url, "https://api.openai.com/v1", "Upstream OpenAI-compatible API (OPENAI_BASE_URL is honoured too)."
    ),
    "retention": Spec(parse_duration, "7d", "How long audio is kept after its last request (s, m, h, d)."),
    "cleanup_interval": Spec(parse_duration, "10m", "How often expired audio is deleted."),
    "max_text_chars": Spec(_int(1), "100000", "Longest text accepted by POST /tts/generate."),
    "session_ttl": Spec(parse_duration, "30d", "Lifetime of a session token issued by /auth/verify."),
    "upstream_concurrency": Spec(_int(1, 256), "4", "Upstream calls in flight at once, for all users."),
    "upstream_attempts": Spec(_int(1, 20), "4", "Tries per upstream call for 429, 5xx and network errors."),
    "retry_backoff": Spec(parse_duration, "1s", "First retry delay; doubles each attempt (capped at 30s)."),
    "upstream_timeout": Spec(parse_duration, "60s", "Longest wait for the upstream to send the next bytes."),
    "rate_limit": Spec(_rate_limit, "60", "Generate requests per minute per user; 'off' disables."),
    "auth_rate_limit": Spec(_int(1), "10", "Failed sign-ins per minute per client address before 429."),
    "shutdown_timeout": Spec(parse_duration, "10s", "How long in-flight responses may take at shutdown."),
    "mdns": Spec(_switch, "on", "Advertise _speccy._tcp on the LAN (on/off)."),
    "mdns_interfaces": Spec(_interfaces, "all", "'all' or a list of IP addresses to announce on."),
    "log_level": Spec(_log_level, "info", "debug, info, warning or error (SIGHUP reloads it)."),
    "upstream_max_chars": Spec(
        _int(50, 1_000_000), "4096", "Longest text sent in one upstream call; longer text is split (OpenAI: 4096)."
    ),
    "chunk_concurrency": Spec(
        _int(1, 64), "4", "Chunks of one long text generated at once (within upstream_concurrency)."
    ),
    "key_cache_ttl": Spec(
        parse_duration, "5m", "How long an OpenAI key checked for /v1 requests is trusted before asking again."
    ),
    "speech_wait": Spec(parse_duration, "5m", "Longest time POST /v1/audio/speech waits for its first audio bytes."),
    # --- what the upstream offers (another OpenAI-compatible server: Kokoro-FastAPI, speaches, LocalAI) ---
    "models": Spec(_names, OPENAI_MODELS, "Models requests may name (OpenAI's dated snapshots of them too)."),
    "voices": Spec(_names, OPENAI_VOICES, "Voices requests may name (the upstream's own voice names)."),
    "instruction_models": Spec(
        lambda v: _names(v, allow_empty=True), "gpt-4o-mini-tts", "Models that take `instructions` (empty: none)."
    ),
    # --- running it for a household (docs/operations.md) ---
    "log_format": Spec(_log_format, "text", "'text' for people, 'json' for one JSON object per line."),
    "daily_char_quota": Spec(_limit, "0", "Characters each user may have generated per UTC day; 0 or 'off' for none."),
    "storage_quota": Spec(parse_size, "off", "Audio each user may keep, e.g. '500MB'; 'off' for none."),
    "max_files": Spec(_limit, "0", "Audio files each user may keep; 0 or 'off' for none."),
    "price_tts_1": Spec(_price, "15", "USD per million characters for tts-1 (cost estimates only)."),
    "price_tts_1_hd": Spec(_price, "30", "USD per million characters for tts-1-hd (cost estimates only)."),
    "price_gpt_4o_mini_tts": Spec(
        _price, "15", "Estimated USD per million characters for gpt-4o-mini-tts when its tokens are not known."
    ),
    "price_gpt_4o_mini_tts_input_tokens": Spec(
        _price, "0.6", "USD per million text input tokens for gpt-4o-mini-tts (when the upstream reports them)."
    ),
    "price_gpt_4o_mini_tts_output_tokens": Spec(
        _price, "12", "USD per million audio output tokens for gpt-4o-mini-tts (when the upstream reports them)."
    ),
    "min_free_disk": Spec(parse_size, "1GB", "/healthz fails when the data dir's disk has less free space."),
    "metrics": Spec(_switch, "off", "Serve Prometheus metrics at GET /metrics on the main port (on/off)."),
    "metrics_listen": Spec(_listen, "off", "Serve /metrics on a separate host:port instead, e.g. 127.0.0.1:9420."),
    "name": Spec(_name, "", "Name the apps show for this server (empty: the host name)."),
    "tls_cert": Spec(_optional_path, "", "PEM certificate (chain) file; with tls_key, serve HTTPS only."),
    "tls_key": Spec(_optional_path, "", "PEM private key file for tls_cert."),
    "upstream_deadline": Spec(
        parse_duration, "5m", "Longest one upstream call may take in all, however steadily bytes trickle in."
    ),
    "client_timeout": Spec(
        parse_duration,
        "15s",
        "Longest a client may take to send a request's headers or body; also the idle keep-alive.",
    ),
    "max_import_size": Spec(
        _import_size, "64MB", "Largest audio file POST /files/import and `speccyd import` accept (e.g. '200MB')."
    ),
    "timeline_chars": Spec(
        _int(50, 1_000_000),
        "1000",
        "Longest piece of text on the read-along timeline; one upstream call each (docs/streaming.md).",
    ),
}


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str
    port: int
    openai_base_url: str
    retention: float
    cleanup_interval: float
    max_text_chars: int
    session_ttl: float
    upstream_concurrency: int
    upstream_attempts: int
    retry_backoff: float
    upstream_timeout: float
    rate_limit: int
    auth_rate_limit: int
    shutdown_timeout: float
    mdns: bool
    mdns_interfaces: tuple[str, ...]
    log_level: str
    upstream_max_chars: int
    chunk_concurrency: int
    key_cache_ttl: float
    speech_wait: float
    models: tuple[str, ...]
    voices: tuple[str, ...]
    instruction_models: tuple[str, ...]
    log_format: str
    daily_char_quota: int
    storage_quota: int
    max_files: int
    price_tts_1: float
    price_tts_1_hd: float
    price_gpt_4o_mini_tts: float
    price_gpt_4o_mini_tts_input_tokens: float
    price_gpt_4o_mini_tts_output_tokens: float
    min_free_disk: int
    metrics: bool
    metrics_listen: str
    name: str
    tls_cert: Path | None
    tls_key: Path | None
    upstream_deadline: float
    client_timeout: float
    max_import_size: int
    timeline_chars: int

    @property
    def db_path(self) -> Path:
        return self.data_dir / "speccyd.db"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("SPECCY_DATA_DIR"):
        return Path(env["SPECCY_DATA_DIR"]).expanduser()
    import platformdirs  # imported here so `speccyd --help` stays fast

    return Path(platformdirs.user_data_dir("speccyd", appauthor=False))


def _read_config(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SettingsError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise SettingsError(f"{path}: cannot read ({e.strerror})") from None


def load_settings(
    data_dir: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every key from its highest-precedence source, naming that source in any error."""
    env = os.environ if env is None else env
    data_dir = (data_dir or default_data_dir(env)).expanduser().absolute()
    raw: dict[str, tuple[object, str]] = {key: (spec.default, "default") for key, spec in SPECS.items()}

    config_path = data_dir / CONFIG_FILE
    for key, value in _read_config(config_path).items():
        if key not in SPECS:
            raise SettingsError(f"{key}: unknown setting (from {config_path})")
        raw[key] = (value, str(config_path))

    if env.get("OPENAI_BASE_URL"):
        raw["openai_base_url"] = (env["OPENAI_BASE_URL"], "environment OPENAI_BASE_URL")
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == "SPECCY_DATA_DIR":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in SPECS:
            raise SettingsError(f"{key}: unknown setting (from environment {name})")
        raw[key] = (value, f"environment {name}")

    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = (value, f"option --{key.replace('_', '-')}")

    values: dict[str, Any] = {}
    for key, (value, source) in raw.items():
        try:
            values[key] = SPECS[key].parse(value)
        except ValueError as e:
            raise SettingsError(f"{key}: {e} (from {source})") from None
    for key in ("tls_cert", "tls_key"):
        # Relative paths in config.toml mean "inside the data dir", so a moved data dir keeps working.
        if values[key] is not None and not values[key].is_absolute():
            values[key] = data_dir / values[key]
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise SettingsError("tls_cert and tls_key: set both to serve HTTPS, or neither")
    return Settings(data_dir=data_dir, **values)


def config_template() -> str:
    """The config.toml that `init` writes: every key, commented out at its default."""
    lines = [
        "# speccyd configuration. Uncomment a line to change it.",
        "# Precedence: command-line flag > environment SPECCY_<KEY> > this file > default.",
        '# Durations take a unit: ms, s, m, h or d ("7d", "10m", "3s").',
        "",
    ]
    for key, spec in SPECS.items():
        lines.append(f"# {spec.doc}")
        default = f'"{spec.default}"' if not spec.default.isdigit() else spec.default
        lines.append(f"# {key} = {default}")
        lines.append("")
    return "\n".join(lines)


def set_config_values(path: Path, values: Mapping[str, str]) -> None:
    """Set string keys in config.toml, replacing the key's line (commented out or not) and keeping the rest."""
    import json

    lines = path.read_text().splitlines() if path.exists() else []
    for key, value in values.items():
        line = f"{key} = {json.dumps(value)}"  # a JSON string is a valid TOML basic string
        pattern = re.compile(rf"^\s*#?\s*{re.escape(key)}\s*=")
        for i, existing in enumerate(lines):
            if pattern.match(existing):
                lines[i] = line
                break
        else:
            lines.append(line)
    path.write_text("\n".join(lines) + "\n")
