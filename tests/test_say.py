"""`speccyd say`: the terminal client against a real `speccyd serve` process on loopback."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from speccyd.cli import app
from tests.conftest import AppClient
from tests.fake_upstream import FakeUpstream, Fault
from tests.server_process import ServerProcess


@pytest.fixture
async def serve_process(upstream_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A `speccyd serve` subprocess on 127.0.0.1 with a free port, talking to the fake upstream."""
    async with ServerProcess(tmp_path / "server", upstream_url, tmp_path / "serve.log") as server:
        await server.start()
        yield server.url


async def say(*args: str, key: str | None = "sk-test-alice", cwd: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    if key is not None:
        env["OPENAI_API_KEY"] = key
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "speccyd", "say", *args,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.process
async def test_say_against_a_serve_process_saves_the_upstream_audio_then_hits_the_cache(
    serve_process: str, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Both real executables: the audio saved is the upstream's exact bytes; saying it again hits the cache."""
    args = ("Hello from the terminal.", "--server", serve_process, "--voice", "nova")
    code, output = await say(*args, "-o", "out.mp3", cwd=tmp_path)
    assert code == 0, output
    assert "saved out.mp3 (4,000 bytes, generated" in output
    assert fake.speech_calls[0].body is not None
    assert fake.speech_calls[0].body["voice"] == "nova"
    assert (tmp_path / "out.mp3").read_bytes() == FakeUpstream.audio_for(fake.speech_calls[0].body, 4000)
    code, output = await say(*args, "-o", "again.mp3", cwd=tmp_path)
    assert code == 0, output
    assert "from the server's cache" in output
    assert len(fake.speech_calls) == 1


async def say_in_process(*args: str, key: str | None = "sk-test-alice", cwd: Path) -> tuple[int, str]:
    """The same command in a worker thread (its own event loop), against the in-process server."""
    env = {"OPENAI_API_KEY": key or ""}
    result = await asyncio.to_thread(CliRunner().invoke, app, ["say", *args, "-o", str(cwd / "speech.mp3")], env=env)
    return result.exit_code, result.output


@pytest.fixture
def server(client: AppClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_say_format_follows_the_output_suffix(server: str, fake: FakeUpstream, tmp_path: Path) -> None:
    """-o speech.wav asks for wav; an unknown suffix is refused before anything is sent."""
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["say", "Wave", "--server", server, "-o", str(tmp_path / "speech.wav")],
        env={"OPENAI_API_KEY": "sk-test-alice"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert fake.speech_calls[0].body is not None and fake.speech_calls[0].body["response_format"] == "wav"
    assert (tmp_path / "speech.wav").stat().st_size == 4000
    result = CliRunner().invoke(app, ["say", "Nope", "-o", "speech.mp4"], env={"OPENAI_API_KEY": "sk-test-alice"})
    assert result.exit_code == 2
    assert "suffix must be one of" in result.output


async def test_say_reads_the_text_from_stdin(server: str, fake: FakeUpstream, tmp_path: Path) -> None:
    """`speccyd say -` speaks what arrives on standard input."""
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["say", "-", "--server", server, "-o", str(tmp_path / "piped.mp3")],
        input="Text from a pipe.\n", env={"OPENAI_API_KEY": "sk-test-alice"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert fake.speech_calls[0].body is not None and fake.speech_calls[0].body["input"] == "Text from a pipe.\n"


async def test_say_reports_refusals_clearly(server: str, fake: FakeUpstream, tmp_path: Path) -> None:
    """No key, a refused key, a bad voice and a failed generation each end with the server's reason."""
    code, output = await say_in_process("Hi", "--server", server, key=None, cwd=tmp_path)
    assert (code, "OPENAI_API_KEY" in output) == (2, True)
    code, output = await say_in_process("Hi", "--server", server, key="sk-wrong", cwd=tmp_path)
    assert code == 1 and "rejected this API key" in output
    code, output = await say_in_process("Hi", "--server", server, "--voice", "nobody", cwd=tmp_path)
    assert code == 1 and "voice must be one of" in output
    fake.faults.append(Fault(status=400, message="not allowed upstream"))
    code, output = await say_in_process("Refused text", "--server", server, cwd=tmp_path)
    assert code == 1 and "not allowed upstream" in output
    assert not list(tmp_path.glob("*.mp3")) and not list(tmp_path.glob(".*.part"))


def test_say_reports_an_unreachable_server(tmp_path: Path) -> None:
    """A server that is not there is a one-line error, not a traceback."""
    result = CliRunner().invoke(app, ["say", "Hi", "--server", "http://127.0.0.1:9"], env={"OPENAI_API_KEY": "sk-x"})
    assert result.exit_code == 1
    assert "cannot reach http://127.0.0.1:9" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
