"""Run at boot: the systemd unit and the launchd plist for `speccyd service install`, and where they go."""

from __future__ import annotations

import os
import plistlib
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "speccyd.service"
SOCKET_NAME = "speccyd.socket"
LABEL = "com.speccy.speccyd"
SYSTEM_DATA_DIR = Path("/var/lib/speccyd")  # systemd's StateDirectory=speccyd
LAUNCHD_LOG_DIR = Path("/Library/Logs/speccyd")
# Longer than the default shutdown_timeout (10s) so in-flight downloads finish before a SIGKILL.
STOP_TIMEOUT = 30
# systemd kills a service that sends no WATCHDOG=1 for this long once started (speccyd pings every 15 s from its
# event loop): a hung loop is restarted within a minute, while no pause of a healthy server comes near it.
WATCHDOG = 30
# Start-up (READY=1) includes database migrations and the sweep of the audio dir, which take a while for a
# large library on a slow NAS disk; systemd's default of 90 s would kill such a start half way.
START_TIMEOUT = 300


@dataclass(frozen=True)
class UnitText:
    path: Path
    text: str


@dataclass(frozen=True)
class ServiceFile:
    path: Path
    text: str
    enable: list[str]  # the commands that start it now and at every boot
    disable: list[str]  # the commands that stop it, before the file is removed
    notes: list[str]
    log_dir: Path | None = None  # launchd opens log files but does not create their directory
    log_owner: str | None = None
    also: tuple[UnitText, ...] = ()  # written beside it: the socket unit

    @property
    def files(self) -> list[UnitText]:
        return [UnitText(self.path, self.text), *self.also]


def running_command() -> list[str]:
    """How to start the speccyd that is running now: the frozen binary, the console script, or `python -m`."""
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).resolve())]
    script = Path(sys.argv[0])
    if script.name == "speccyd" and script.is_file():
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "speccyd"]


def _systemd_quote(word: str) -> str:
    if word and not any(c in word for c in " \t\"'\\$%;"):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%")
    return f'"{escaped}"'


_SYSTEM_HARDENING = """\
# An unprivileged user that exists only while the service runs; /var/lib/speccyd is its own.
DynamicUser=yes
StateDirectory={state_directory}
StateDirectoryMode=0700
UMask=0077
# Nothing on the host is writable except the state directory; nothing in /home, /root or /run/user is visible.
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
PrivateUsers=yes
ProtectProc=invisible
ProcSubset=pid
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
# AF_NETLINK: listing interfaces and addresses for mDNS uses rtnetlink (getifaddrs).
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# CPython without its optional JIT never needs writable+executable memory.
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
"""


def systemd_unit(command: list[str], data_dir: Path, *, system: bool, socket: bool = True) -> str:
    exec_start = " ".join(_systemd_quote(w) for w in [*command, "serve", "--data-dir", str(data_dir)])
    lines = [
        "[Unit]",
        "Description=speccyd, the text-to-speech server for the Speccy apps",
        "Wants=network-online.target",
        "After=network-online.target",
    ]
    if socket:
        lines += [
            # The socket unit holds the listening socket: while this service restarts, connections wait in it.
            f"Requires={SOCKET_NAME}",
            f"After={SOCKET_NAME}",
        ]
    lines += [
        "",
        "[Service]",
        # READY=1 once serving, STOPPING=1 at shutdown, RELOADING=1 around SIGHUP, WATCHDOG=1 from the loop.
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2s",
        f"TimeoutStartSec={START_TIMEOUT}s",
        f"TimeoutStopSec={STOP_TIMEOUT}s",
        f"WatchdogSec={WATCHDOG}s",
    ]
    text = "\n".join(lines) + "\n"
    if system:
        state_directory = data_dir.relative_to("/var/lib")
        text += _SYSTEM_HARDENING.format(state_directory=state_directory)
        target = "multi-user.target"
    else:
        # A user manager cannot apply most sandboxing without user namespaces; keep what always holds.
        text += "UMask=0077\nNoNewPrivileges=yes\n"
        target = "default.target"
    return text + f"\n[Install]\nWantedBy={target}\n"


def systemd_socket(host: str, port: int) -> str:
    """The socket unit for `host`:`port` (speccyd's own defaults: 0.0.0.0:8420, IPv4 only, as it binds itself)."""
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host {host!r}: a socket unit listens on an IP address; set host to one") from None
    if port == 0:
        raise ValueError("port 0: a socket unit needs a fixed port; set port (default 8420)")
    listen = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    lines = [
        "[Unit]",
        "Description=speccyd's listening socket (connections wait here while the service restarts)",
        "",
        "[Socket]",
        f"ListenStream={listen}",
    ]
    if address.version == 6:
        lines.append("BindIPv6Only=ipv6-only")  # as speccyd binds [::] itself; IPv4 comes in another ListenStream=
    lines += [
        # Connections that arrive while the service restarts queue here, up to this many.
        "Backlog=4096",
        "FileDescriptorName=speccyd",
        f"Service={UNIT_NAME}",
        "",
        "[Install]",
        "WantedBy=sockets.target",
    ]
    return "\n".join(lines) + "\n"


def launchd_plist(command: list[str], data_dir: Path, log_dir: Path, user: str | None) -> str:
    plist: dict[str, object] = {
        "Label": LABEL,
        "ProgramArguments": [*command, "serve", "--data-dir", str(data_dir)],
        "RunAtLoad": True,
        # Restarted whenever it exits, as a server that nobody watches should be.
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ProcessType": "Background",
        "ExitTimeOut": STOP_TIMEOUT,
        "Umask": 0o077,
        "StandardOutPath": str(log_dir / "speccyd.log"),
        "StandardErrorPath": str(log_dir / "speccyd.log"),
    }
    if user is not None:
        plist["UserName"] = user  # a LaunchDaemon runs at boot, without a login, as this user
    return plistlib.dumps(plist, sort_keys=False).decode()


def _invoking_user() -> tuple[str, Path]:
    """The person behind `sudo`, else the current user: who a Mac daemon should run as, and their home."""
    import pwd

    name = os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
    return name, Path(pwd.getpwnam(name).pw_dir)


def _home_warning(command: list[str]) -> list[str]:
    # ProtectHome=yes hides /home and /root from the service, and a dynamic user cannot read them anyway.
    if any(Path(word).is_relative_to(home) for word in command[:1] for home in ("/home", "/root")):
        return [
            f"warning: {command[0]} is inside a home directory, which the service cannot see; install speccyd "
            "outside (e.g. a venv in /opt/speccyd, or the single binary in /usr/local/bin) and run this again"
        ]
    return []


def plan_install(
    platform: str,
    system: bool,
    data_dir: Path | None,
    command: list[str],
    listen: tuple[str, int] | None = ("0.0.0.0", 8420),
) -> ServiceFile:
    """The files to write for `platform` ("systemd" or "launchd"), with their enable/disable commands.

    With `listen` (host, port), systemd gets a socket unit too, so restarts queue connections instead of
    refusing them; None installs the service alone (it binds its own port).
    """
    if platform == "systemd":
        units = f"{SOCKET_NAME} {UNIT_NAME}" if listen is not None else UNIT_NAME
        if system:
            directory = data_dir or SYSTEM_DATA_DIR
            if not directory.is_relative_to("/var/lib") or directory == Path("/var/lib"):
                raise ValueError(f"--data-dir {directory}: a system service keeps its data under /var/lib")
            unit_dir = Path("/etc/systemd/system")
            return ServiceFile(
                unit_dir / UNIT_NAME,
                systemd_unit(command, directory, system=True, socket=listen is not None),
                ["systemctl daemon-reload", f"systemctl enable --now {units}"],
                [f"systemctl disable --now {units}"],
                [f"logs: journalctl -u {UNIT_NAME} -f", f"data: {directory}", *_home_warning(command)],
                also=_socket_unit(unit_dir, listen),
            )
        from speccyd.config.settings import default_data_dir

        directory = data_dir or default_data_dir()
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        unit_dir = config / "systemd" / "user"
        return ServiceFile(
            unit_dir / UNIT_NAME,
            systemd_unit(command, directory, system=False, socket=listen is not None),
            [
                "systemctl --user daemon-reload",
                f"systemctl --user enable --now {units}",
                # Without lingering, a user service stops at logout and does not start at boot.
                f"loginctl enable-linger {_invoking_user()[0]}",
            ],
            [f"systemctl --user disable --now {units}"],
            [f"logs: journalctl --user -u {UNIT_NAME} -f", f"data: {directory}"],
            also=_socket_unit(unit_dir, listen),
        )
    if platform == "launchd":
        user, home = _invoking_user()
        directory = data_dir or home / "Library" / "Application Support" / "speccyd"
        if system:
            path = Path("/Library/LaunchDaemons") / f"{LABEL}.plist"
            text = launchd_plist(command, directory, LAUNCHD_LOG_DIR, user)
            domain = "system"
            notes = [f"logs: {LAUNCHD_LOG_DIR}/speccyd.log (the directory must be writable by {user})"]
        else:
            path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
            text = launchd_plist(command, directory, home / "Library" / "Logs" / "speccyd", None)
            domain = f"gui/{os.getuid()}"
            notes = [f"logs: {home}/Library/Logs/speccyd/speccyd.log", "runs while you are logged in"]
        return ServiceFile(
            path,
            text,
            [f"launchctl bootstrap {domain} {path}", f"launchctl enable {domain}/{LABEL}"],
            [f"launchctl bootout {domain}/{LABEL}"],
            [*notes, f"data: {directory}"],
            log_dir=LAUNCHD_LOG_DIR if system else home / "Library" / "Logs" / "speccyd",
            log_owner=user if system else None,
        )
    raise ValueError(f"unknown service platform {platform!r}")


def _socket_unit(unit_dir: Path, listen: tuple[str, int] | None) -> tuple[UnitText, ...]:
    return () if listen is None else (UnitText(unit_dir / SOCKET_NAME, systemd_socket(*listen)),)


def current_platform() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


def install(plan: ServiceFile) -> None:
    for unit in plan.files:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = unit.path.with_name(unit.path.name + ".tmp")
        tmp.write_text(unit.text)
        tmp.chmod(0o644)  # service managers refuse or warn about unit files others may write
        tmp.replace(unit.path)
    if plan.log_dir is not None:
        plan.log_dir.mkdir(parents=True, exist_ok=True)
        if plan.log_owner is not None and os.getuid() == 0:
            import shutil

            shutil.chown(plan.log_dir, plan.log_owner)
