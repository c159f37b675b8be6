"""Boot-time services: the shipped systemd unit and launchd plist, and `speccyd service install/uninstall`."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

from speccyd.cli import app
from speccyd.ops.unitfiles import (
    LAUNCHD_LOG_DIR,
    launchd_plist,
    plan_install,
    running_command,
    systemd_socket,
    systemd_unit,
)
from tests.conftest import eventually, sign_in
from tests.fake_upstream import FakeUpstream
from tests.server_process import LOOPBACK_MDNS, SPECCYD, ServerProcess, clean_env

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_UNIT = ROOT / "systemd" / "speccyd.service"
SHIPPED_SOCKET = ROOT / "systemd" / "speccyd.socket"
SHIPPED_PLIST = ROOT / "launchd" / "com.speccy.speccyd.plist"


def speccyd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SPECCYD), *args], env=env or clean_env(), capture_output=True, text=True, timeout=60, check=False
    )


def invoke(*args: str, **env: str) -> tuple[int, str, str]:
    """`speccyd ARGS` in this process: exit code, stdout, stderr."""
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def split_units(dry_run: str) -> dict[str, str]:
    """`service install --dry-run` output with several files ("# PATH" before each) as {file name: text}."""
    units: dict[str, str] = {}
    name = ""
    for line in dry_run.splitlines(keepends=True):
        if line.startswith("# /"):
            name = Path(line[2:].strip()).name
            units[name] = ""
        else:
            units[name] += line
    return units


def test_shipped_files_are_what_install_renders() -> None:
    """systemd/speccyd.service and .socket and launchd/com.speccy.speccyd.plist match the installer's output."""
    assert SHIPPED_UNIT.read_text() == systemd_unit(["/usr/local/bin/speccyd"], Path("/var/lib/speccyd"), system=True)
    assert SHIPPED_SOCKET.read_text() == systemd_socket("0.0.0.0", 8420)
    expected = launchd_plist(["/usr/local/bin/speccyd"], Path("/usr/local/var/speccyd"), LAUNCHD_LOG_DIR, "_speccyd")
    assert SHIPPED_PLIST.read_text() == expected


def test_shipped_unit_is_hardened() -> None:
    """The unit runs unprivileged with the sandboxing the issue asks for and a bounded stop time."""
    lines = set(SHIPPED_UNIT.read_text().splitlines())
    for wanted in (
        "DynamicUser=yes", "StateDirectory=speccyd", "Restart=on-failure", "TimeoutStopSec=30s",
        "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes", "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK", "SystemCallFilter=@system-service",
        "UMask=0077", "ExecStart=/usr/local/bin/speccyd serve --data-dir /var/lib/speccyd",
        "Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "Requires=speccyd.socket", "After=speccyd.socket",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):  # fmt: skip
        assert wanted in lines


def test_shipped_socket_holds_the_default_port() -> None:
    """speccyd.socket listens where speccyd would (0.0.0.0:8420), names its descriptor, and starts at boot."""
    lines = set(SHIPPED_SOCKET.read_text().splitlines())
    for wanted in (
        "ListenStream=0.0.0.0:8420", "FileDescriptorName=speccyd", "Service=speccyd.service", "Backlog=4096",
        "WantedBy=sockets.target",
    ):  # fmt: skip
        assert wanted in lines


def test_socket_unit_follows_host_and_port() -> None:
    """An IPv6 host gets a bracketed, IPv6-only ListenStream; a host name or port 0 is refused with the reason."""
    assert "ListenStream=[::]:9000\nBindIPv6Only=ipv6-only\n" in systemd_socket("::", 9000)
    assert "ListenStream=192.168.1.20:8420\n" in systemd_socket("192.168.1.20", 8420)
    with pytest.raises(ValueError, match="a socket unit listens on an IP address"):
        systemd_socket("nas.local", 8420)
    with pytest.raises(ValueError, match="port 0"):
        systemd_socket("0.0.0.0", 0)
    code, _, err = invoke("service", "install", "--system", "--dry-run", "--platform", "systemd", SPECCY_PORT="0")
    assert code == 2
    assert "port 0: a socket unit needs a fixed port" in err
    code, out, err = invoke(
        "service", "install", "--system", "--dry-run", "--platform", "systemd", "--no-socket", SPECCY_PORT="0"
    )
    assert code == 0, err
    assert "Requires=speccyd.socket" not in out
    assert "Type=notify" in out


def test_shipped_plist_is_a_valid_launch_daemon() -> None:
    """The plist parses, runs as its own user at boot, stays alive, in the background, logging to /Library/Logs."""
    with SHIPPED_PLIST.open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "com.speccy.speccyd"
    assert plist["ProgramArguments"] == ["/usr/local/bin/speccyd", "serve", "--data-dir", "/usr/local/var/speccyd"]
    assert plist["UserName"] == "_speccyd"
    assert plist["KeepAlive"] is True
    assert plist["RunAtLoad"] is True
    assert plist["ProcessType"] == "Background"
    assert plist["StandardErrorPath"].startswith("/Library/Logs/speccyd/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit `service install --system` writes for this speccyd passes `systemd-analyze verify`."""
    result = speccyd("service", "install", "--system", "--dry-run", "--platform", "systemd")
    assert result.returncode == 0, result.stderr
    units = split_units(result.stdout)
    assert sorted(units) == ["speccyd.service", "speccyd.socket"]
    assert f"ExecStart={SPECCYD} serve --data-dir /var/lib/speccyd" in units["speccyd.service"]
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "speccyd.socket"), str(tmp_path / "speccyd.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_exposure_score_stays_low(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the unit's exposure at most 2.0 (1.1 with systemd 252)."""
    code, out, err = invoke("service", "install", "--system", "--dry-run", "--platform=systemd")
    assert code == 0, err
    path = tmp_path / "speccyd.service"
    path.write_text(split_units(out)["speccyd.service"])
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if "--offline" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-2000:]


def test_dry_run_prints_user_unit_and_enable_commands(tmp_path: Path) -> None:
    """`--user --dry-run` prints a user unit for this executable and data dir (and how to enable it), writes nothing."""
    code, out, err = invoke(
        "service", "install", "--user", "--dry-run", "--platform", "systemd",
        SPECCY_DATA_DIR=str(tmp_path / "data"), XDG_CONFIG_HOME=str(tmp_path / "config"),
    )  # fmt: skip
    assert code == 0, err
    assert f"# would write {tmp_path}/config/systemd/user/speccyd.service" in err
    assert f"ExecStart={' '.join(running_command())} serve --data-dir {tmp_path}/data" in out
    assert "WantedBy=default.target" in out
    assert "systemctl --user enable --now speccyd.socket speccyd.service" in err
    assert f"# would write {tmp_path}/config/systemd/user/speccyd.socket" in err
    assert "loginctl enable-linger" in err
    assert not (tmp_path / "config").exists()


def test_user_install_then_uninstall(tmp_path: Path) -> None:
    """`service install --user` writes the unit and its socket where systemd --user looks; `uninstall` removes both."""
    env = {"SPECCY_DATA_DIR": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    unit = tmp_path / "config" / "systemd" / "user" / "speccyd.service"
    socket_unit = unit.with_suffix(".socket")
    code, out, err = invoke("service", "install", "--user", "--platform", "systemd", SPECCY_PORT="9420", **env)
    assert code == 0, err
    assert f"wrote {unit}" in out
    assert f"wrote {socket_unit}" in out
    assert unit.stat().st_mode & 0o777 == 0o644
    assert socket_unit.stat().st_mode & 0o777 == 0o644
    assert f"--data-dir {tmp_path}/data" in unit.read_text()
    assert "ListenStream=0.0.0.0:9420" in socket_unit.read_text()
    code, out, err = invoke("service", "uninstall", "--user", "--platform", "systemd", **env)
    assert code == 0, err
    assert "systemctl --user disable --now speccyd.socket speccyd.service" in out
    assert not unit.exists()
    assert not socket_unit.exists()


def test_launchd_dry_run_is_a_plist_for_this_executable(tmp_path: Path) -> None:
    """On macOS (`--platform launchd`) the daemon plist parses and starts this speccyd with the data dir."""
    code, out, err = invoke(
        "service", "install", "--system", "--dry-run", "--platform", "launchd", "--data-dir", str(tmp_path)
    )
    assert code == 0, err
    plist = plistlib.loads(out.encode())
    assert plist["ProgramArguments"] == [*running_command(), "serve", "--data-dir", str(tmp_path)]
    assert plist["UserName"]
    assert plist["StandardErrorPath"] == "/Library/Logs/speccyd/speccyd.log"
    assert "launchctl bootstrap system /Library/LaunchDaemons/com.speccy.speccyd.plist" in err


def test_system_unit_refuses_data_dir_outside_var_lib() -> None:
    """A system unit keeps its state under /var/lib (StateDirectory); another --data-dir is a clear error."""
    code, _, err = invoke(
        "service", "install", "--system", "--dry-run", "--platform", "systemd", "--data-dir", "/srv/x"
    )
    assert code == 2
    assert "/var/lib" in err


def test_system_unit_warns_about_an_executable_in_a_home_directory() -> None:
    """A system unit for a speccyd inside /home or /root says the sandboxed service cannot run it."""
    plan = plan_install("systemd", True, None, ["/home/ann/.venv/bin/speccyd"])
    assert any(
        note.startswith("warning: /home/ann/.venv/bin/speccyd is inside a home directory") for note in plan.notes
    )
    assert not any("warning" in note for note in plan_install("systemd", True, None, ["/usr/bin/speccyd"]).notes)


MDWE_EXEC = Path(__file__).with_name("mdwe_exec.py")


async def test_serves_and_generates_without_writable_executable_memory(
    tmp_path: Path, upstream_url: str, fake: FakeUpstream
) -> None:
    """Under the kernel's MemoryDenyWriteExecute (PR_SET_MDWE) the server serves, announces and generates."""
    probe = subprocess.run([sys.executable, str(MDWE_EXEC), "/bin/true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"the kernel cannot forbid W+X memory here ({probe.stderr.strip()})")
    prefix = [sys.executable, str(MDWE_EXEC)]
    server = ServerProcess(tmp_path / "data", upstream_url, tmp_path / "log", env=LOOPBACK_MDNS, prefix=prefix)
    async with await server.start():
        async with aiohttp.ClientSession(base_url=server.url) as http:
            headers = await sign_in(http, "sk-test-mdwe")
            async with http.post("/tts/generate", json={"text": "No JIT."}, headers=headers) as response:
                assert response.status == 202

            await eventually(
                lambda: len(fake.speech_calls) == 1 and "announcing" in server.log,
                what="one upstream call and the mDNS registration",
            )
        assert await server.stop() == 0
    assert "Traceback" not in server.log
