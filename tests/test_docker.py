"""The Docker image (packaging/Dockerfile), built and run for real on a private engine.

No registry is reachable, so the base is Debian of the host's release made by mmdebstrap (cached under
.cache/docker/), passed as BASE. The engine is a dockerd of the test's own with no bridge: every container runs
with `--network host`, speccyd bound to 127.0.0.1, the fake upstream on 127.0.0.1. The test skips, saying why,
where that engine cannot start (not root, no dockerd, no mmdebstrap, a kernel without what it needs).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import eventually, generate, sign_in, wait_status
from tests.docker_engine import ROOT, Docker, Engine, Unavailable, debian_base, free_port, host_ca_bundle
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.docker

IMAGE = "speccyd-test:latest"
PUID, PGID = 1234, 2345  # neither root's nor the usual 1000, so a wrong owner cannot pass by chance
SIZE_GOAL = 150_000_000  # bytes the image may add to its base

# Lists every file and symlink of an image with its size and mtime (run by the image's python3), less what the
# engine puts into every container it runs.
LIST_FILES = """
import json, os
skip = {"/proc", "/sys", "/dev", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/etc/mtab", "/.dockerenv"}
found = {}
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
    for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
        path = os.path.join(top, name)
        if path not in skip:
            st = os.lstat(path)
            found[path] = [st.st_size, int(st.st_mtime)]
print(json.dumps(found))
"""


@dataclass
class Image:
    tag: str
    base: str
    base_seconds: float
    build_seconds: float


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    """A private dockerd for this file's tests, stopped (and its layers deleted) after the last one."""
    engine = Engine(tmp_path_factory.mktemp("docker"))
    try:
        client = engine.start()
    except Unavailable as e:
        pytest.skip(f"no Docker engine: {e}")
    try:
        yield client
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def image(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """speccyd's image, built from this checkout on the Debian base, as a user builds it."""
    try:
        base, base_seconds = debian_base(docker)
    except Unavailable as e:
        pytest.skip(f"no base image: {e}")
    # pip in the build stage reads PyPI through this machine's network; the host's CA bundle goes in as a
    # BuildKit secret (this machine's proxy re-signs TLS), so it is never in a layer. The build's RUN steps
    # need a network, and this engine has no bridge: --network host.
    secret = [f"--secret=id=pip-ca,src={ca}"] if (ca := host_ca_bundle()) else []
    started = time.monotonic()
    log = tmp_path_factory.mktemp("build") / "build.log"
    result = docker.run(
        "build", "--progress=plain", "--network=host", "--file=packaging/Dockerfile", f"--build-arg=BASE={base}",
        *secret, f"--tag={IMAGE}", str(ROOT),
        timeout=900, check=False,
    )  # fmt: skip
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"docker build failed ({log}):\n{(result.stdout + result.stderr)[-4000:]}"
    built = Image(IMAGE, base, base_seconds, time.monotonic() - started)
    print(f"base {base} in {built.base_seconds:.0f}s, image built in {built.build_seconds:.0f}s")
    return built


def files_of(docker: Docker, image: str) -> dict[str, list[int]]:
    result = docker.run("run", "--rm", "--network=host", "--entrypoint=python3", image, "-c", LIST_FILES, timeout=120)
    files: dict[str, list[int]] = json.loads(result.stdout)
    return files


def test_image_adds_only_speccyd_to_its_base(docker: Docker, image: Image) -> None:
    """The image is its base plus the venv and the entrypoint: no compiler, pip, test extras, cache or CA bundle."""
    base, final = files_of(docker, image.base), files_of(docker, image.tag)
    added = {path for path, stat in final.items() if base.get(path) != stat}
    ours = ("/usr/local/bin/docker-entrypoint",)
    assert sorted(p for p in added if not p.startswith("/opt/speccyd/") and p not in ours) == []
    assert set(ours) <= added
    unwanted = re.compile(
        r"/site-packages/(pip|setuptools|wheel|_?pytest|hypothesis|mypy|ruff|PyInstaller|schemathesis)\b"
    )
    assert sorted({m.group(1) for p in added if (m := unwanted.search(p))}) == []
    compilers = {"cc", "gcc", "c++", "g++", "clang"}
    assert [p for p in final if Path(p).name in compilers and "/bin/" in p] == []

    sizes = [int(docker.run("image", "inspect", "--format={{.Size}}", tag).stdout) for tag in (image.tag, image.base)]
    print(f"image {sizes[0] / 1e6:.1f} MB, {(sizes[0] - sizes[1]) / 1e6:.1f} MB over its base")
    assert sizes[0] - sizes[1] <= SIZE_GOAL

    config = json.loads(docker.run("image", "inspect", "--format={{json .Config}}", image.tag).stdout)
    env = dict(item.split("=", 1) for item in config["Env"])
    assert (env["SPECCY_DATA_DIR"], env["PUID"], env["PGID"]) == ("/data", "1000", "1000")
    assert not [name for name in env if name.startswith("PIP_")]
    assert "/data" in config["Volumes"]
    assert config["Cmd"] == ["speccyd", "serve"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/opt/speccyd/bin/speccyd", "healthcheck"]


async def test_container_serves_stops_cleanly_and_keeps_its_volume(
    docker: Docker, image: Image, tmp_path: Path, upstream_url: str, fake: FakeUpstream
) -> None:
    """Healthy, it generates and serves audio, exits 0 at once on docker stop, and restarted serves the same file."""
    data = tmp_path / "data"
    data.mkdir()  # owned by root, as a new share is; a file left by `docker exec` as root, too:
    (data / "left-by-root.txt").write_text("")
    port = free_port()
    name = f"speccyd-test-{os.getpid()}"
    env = {
        "PUID": PUID, "PGID": PGID, "SPECCY_HOST": "127.0.0.1", "SPECCY_PORT": port,
        "SPECCY_OPENAI_BASE_URL": upstream_url, "SPECCY_RETRY_BACKOFF": "10ms", "SPECCY_RATE_LIMIT": "off",
        # mDNS on, but only on loopback: nothing is multicast on the machine's real interfaces.
        "SPECCY_MDNS": "on", "SPECCY_MDNS_INTERFACES": "127.0.0.1",
    }  # fmt: skip
    run = [
        "run", "--detach", f"--name={name}", "--network=host", f"--volume={data}:/data",
        "--security-opt=no-new-privileges",  # as compose.yaml runs it
        "--health-interval=1s",  # the image's own check, asked every second instead of every 30
        *[f"--env={key}={value}" for key, value in env.items()], image.tag,
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"

    async def logs() -> str:
        return (await docker.arun("logs", name, check=False))[1]

    async def healthy() -> None:
        async def check() -> bool:
            state = await docker.state(name)
            if not state["Running"]:
                raise AssertionError(f"the container exited with {state['ExitCode']}:\n{await logs()}")
            return bool(state["Health"]["Status"] == "healthy")

        try:
            await eventually(check, timeout=60, what="docker to report the container healthy")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{await logs()}") from None

    async def stop() -> float:
        started = time.monotonic()
        await docker.arun("stop", "--time=10", name, timeout=30)
        seconds = time.monotonic() - started
        state = await docker.state(name)
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False), await logs()
        return seconds

    def owners() -> set[tuple[int, int]]:
        paths = [data, *data.rglob("*")]
        return {(p.lstat().st_uid, p.lstat().st_gid) for p in paths}

    try:
        await docker.arun(*run)
        await healthy()
        async with aiohttp.ClientSession(base_url=base_url) as http:
            async with http.get("/healthz") as response:
                assert response.status == 200
            headers = await sign_in(http, "sk-test-docker")
            status, job = await generate(http, headers, text="Contained.")
            assert status == 202
            await wait_status(http, headers, job["content_hash"])
            audio = FakeUpstream.audio_for(fake.speech_calls[0].body or {}, fake.audio_size)
            async with http.get(job["url"]) as response:
                assert response.status == 200
                assert await response.read() == audio

        # The entrypoint exec'd speccyd: PID 1 is speccyd itself, as PUID:PGID, without capabilities.
        _, status_1 = await docker.arun("exec", name, "cat", "/proc/1/status")
        _, cmdline = await docker.arun("exec", name, "cat", "/proc/1/cmdline")
        assert cmdline.split("\0")[1:3] == ["/opt/speccyd/bin/speccyd", "serve"], cmdline
        assert re.search(rf"^Uid:\s+{PUID}\s+{PUID}\s", status_1, re.M), status_1
        assert re.search(rf"^Gid:\s+{PGID}\s+{PGID}\s", status_1, re.M), status_1
        assert re.search(r"^CapEff:\s+0+$", status_1, re.M), status_1

        # Admin commands go through the entrypoint, so they run as PUID:PGID like the server (docs/home-server.md).
        _, usage = await docker.arun("exec", name, "docker-entrypoint", "speccyd", "usage", "--json")
        assert json.loads(usage)["since"] == "30d", usage

        async def announced() -> bool:
            return "announcing" in await logs()

        await eventually(announced, timeout=20, what="the mDNS announcement")  # zeroconf works in the image

        seconds = await stop()
        print(f"docker stop took {seconds:.2f}s")
        assert seconds < 5, f"docker stop took {seconds:.1f}s; speccyd should exit at once when idle"
        assert "stopped" in await logs()
        assert owners() == {(PUID, PGID)}

        await docker.arun("start", name)
        await healthy()
        async with aiohttp.ClientSession(base_url=base_url) as http:
            async with http.get(f"/files/{job['file_id']}", headers=headers) as response:  # the same session, too
                assert response.status == 200
                assert await response.read() == audio
            status, again = await generate(http, headers, text="Contained.")
            assert (status, again["file_id"]) == (200, job["file_id"])
        assert len(fake.speech_calls) == 1  # served from the volume, never generated again
        assert await stop() < 5
        assert owners() == {(PUID, PGID)}
        # A check every second, all healthy: none of them is in the access log, the requests above are.
        assert "GET /healthz" not in await logs()
        assert f"GET /files/{job['file_id']} 200" in await logs()

        # docker stop the instant the container starts, before speccyd has even been exec'd: as PID 1 the
        # signal would be dropped and Docker would kill it 10 s later; held pending, it is a clean stop.
        listened = (await logs()).count("listening on")
        await docker.arun("start", name)
        pid = int((await docker.arun("inspect", "--format={{.State.Pid}}", name))[1])

        def stop_signal_kept() -> bool:  # blocked by the entrypoint, or caught by speccyd serve
            status = Path(f"/proc/{pid}/status").read_text()
            masks = re.findall(r"^Sig(?:Blk|Cgt):\s*([0-9a-f]+)$", status, re.M)
            return any(int(mask, 16) & (1 << 14) for mask in masks)  # bit 14: SIGTERM (15)

        await eventually(stop_signal_kept, timeout=10, what="the entrypoint to hold SIGTERM")
        serving = (await logs()).count("listening on") > listened
        seconds = await stop()
        print(f"docker stop during start-up took {seconds:.2f}s (speccyd {'was' if serving else 'not yet'} serving)")
        assert seconds < 5, f"docker stop during start-up took {seconds:.1f}s"
        assert "Traceback" not in await logs()
    finally:
        await docker.arun("rm", "--force", name, check=False)


def test_entrypoint_refuses_root_and_honours_docker_user(docker: Docker, image: Image, tmp_path: Path) -> None:
    """PUID=0 or a non-numeric PUID stops with a clear error; `docker run --user` runs the command as that user."""
    for puid, message in (("0", "PUID=0 would run speccyd as root"), ("admin", "PUID must be a numeric id")):
        result = docker.run("run", "--rm", "--network=host", f"--env=PUID={puid}", image.tag, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr

    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, PUID, PGID)
    result = docker.run(
        "run", "--rm", "--network=host", f"--user={PUID}:{PGID}", f"--volume={data}:/data", image.tag,
        "speccyd", "init", timeout=120,
    )  # fmt: skip
    assert (data / "speccyd.db").stat().st_uid == PUID, result.stderr


def test_compose_runs_the_image_on_the_host_network_with_a_volume() -> None:
    """compose.yaml: host network (Bonjour), /data volume, PUID/PGID, a restart policy, the image's healthcheck."""
    compose: dict[str, Any] = yaml.safe_load((ROOT / "packaging" / "compose.yaml").read_text())
    service = compose["services"]["speccyd"]
    assert service["network_mode"] == "host"
    assert any(volume.endswith(":/data") for volume in service["volumes"])
    assert {"PUID", "PGID"} <= set(service["environment"])
    assert service["restart"] in ("unless-stopped", "always")
    assert "healthcheck" not in service  # the image's HEALTHCHECK applies
    assert (ROOT / "packaging" / service["build"]["context"] / service["build"]["dockerfile"]).resolve().is_file()
