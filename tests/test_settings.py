"""Settings: defaults, precedence of sources, and errors that name the key and its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from speccyd.config.settings import SPECS, Settings, SettingsError, config_template, load_settings
from speccyd.config.units import parse_duration


def test_defaults(tmp_path: Path) -> None:
    """With no config, no environment and no flags every key has its documented default."""
    s = load_settings(tmp_path, env={})
    assert (s.host, s.port) == ("0.0.0.0", 8420)
    assert s.openai_base_url == "https://api.openai.com/v1"
    assert s.retention == 7 * 86400
    assert s.cleanup_interval == 600
    assert s.max_text_chars == 100_000
    assert s.session_ttl == 30 * 86400
    assert s.upstream_concurrency == 4
    assert s.rate_limit == 60
    assert s.mdns is True
    assert s.mdns_interfaces == ()
    assert s.log_level == "info"


def test_precedence_flag_env_config_default(tmp_path: Path) -> None:
    """A flag beats SPECCY_ env, which beats config.toml, which beats the default."""
    (tmp_path / "config.toml").write_text('port = 1111\nretention = "1d"\nlog_level = "debug"\n')
    env = {"SPECCY_PORT": "2222", "SPECCY_RETENTION": "2h"}
    s = load_settings(tmp_path, {"port": 3333}, env=env)
    assert s.port == 3333
    assert s.retention == 7200
    assert s.log_level == "debug"


def test_openai_base_url_env_is_honoured_below_speccy_env(tmp_path: Path) -> None:
    """The SDK's OPENAI_BASE_URL is used, but SPECCY_OPENAI_BASE_URL wins over it."""
    s = load_settings(tmp_path, env={"OPENAI_BASE_URL": "http://127.0.0.1:1/v1/"})
    assert s.openai_base_url == "http://127.0.0.1:1/v1"
    s = load_settings(
        tmp_path, env={"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "SPECCY_OPENAI_BASE_URL": "http://127.0.0.1:2"}
    )
    assert s.openai_base_url == "http://127.0.0.1:2"


@pytest.mark.parametrize(
    ("text", "seconds"), [("3s", 3), ("10m", 600), ("1.5h", 5400), ("7d", 604800), ("250ms", 0.25)]
)
def test_durations(text: str, seconds: float) -> None:
    """Durations take s, m, h, d (and ms) units."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "7 days", "-3s", "0s", "", "s", "3x"])
def test_bad_durations(text: str) -> None:
    """A duration without a known unit, or not positive, is refused."""
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        ("colour = 1\n", {}, "colour: unknown setting (from "),
        ('retention = "forever"\n', {}, "retention: cannot parse duration"),
        ("", {"SPECCY_PORT": "70000"}, "port: must be between 0 and 65535, got 70000 (from environment SPECCY_PORT)"),
        ("", {"SPECCY_PORT": "eighty"}, "port: expected a whole number"),
        ("", {"SPECCY_COLOUR": "red"}, "colour: unknown setting (from environment SPECCY_COLOUR)"),
        ("", {"SPECCY_MDNS": "maybe"}, "mdns: expected 'on' or 'off'"),
        ("", {"SPECCY_MDNS_INTERFACES": "10.0.0.1,eth0"}, "mdns_interfaces: 'eth0' is not an IP address"),
        ("", {"SPECCY_OPENAI_BASE_URL": "ftp://x"}, "openai_base_url: expected an http:// or https:// URL"),
        ("", {"SPECCY_RATE_LIMIT": "lots"}, "rate_limit: expected a whole number"),
        ("", {"SPECCY_LOG_LEVEL": "loud"}, "log_level: expected one of"),
        ("port = [", {}, "not valid TOML"),
    ],
)
def test_bad_values_name_key_and_source(tmp_path: Path, config: str, env: dict[str, str], message: str) -> None:
    """Every bad value is reported in one line naming the key and where it came from."""
    (tmp_path / "config.toml").write_text(config)
    with pytest.raises(SettingsError) as raised:
        load_settings(tmp_path, env=env)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_special_values(tmp_path: Path) -> None:
    """rate_limit 'off' disables; mdns_interfaces takes a TOML list or a comma list."""
    (tmp_path / "config.toml").write_text('rate_limit = "off"\nmdns_interfaces = ["127.0.0.1", "::1"]\n')
    s = load_settings(tmp_path, env={})
    assert s.rate_limit == 0
    assert s.mdns_interfaces == ("127.0.0.1", "::1")
    s = load_settings(tmp_path, env={"SPECCY_MDNS_INTERFACES": "127.0.0.1, 127.0.0.2"})
    assert s.mdns_interfaces == ("127.0.0.1", "127.0.0.2")


def test_config_template_lists_every_key_and_parses(tmp_path: Path) -> None:
    """The config.toml that init writes mentions every key, and uncommented it gives the defaults."""
    template = config_template()
    for key in SPECS:
        assert f"# {key} = " in template
    uncommented = "\n".join(line[2:] for line in template.splitlines() if " = " in line and line.startswith("# "))
    (tmp_path / "config.toml").write_text(uncommented)
    assert load_settings(tmp_path, env={}) == load_settings(tmp_path / "other", env={}).replace(data_dir=tmp_path)


def test_settings_fields_match_specs() -> None:
    """Every key in the table is a Settings field and vice versa."""
    assert set(Settings.__dataclass_fields__) - {"data_dir"} == set(SPECS)


def test_readme_documents_every_setting() -> None:
    """README's configuration table has a row for every key."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [key for key in SPECS if f"| `{key}` |" not in readme]
    assert missing == []
