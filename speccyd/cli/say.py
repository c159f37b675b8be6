"""`speccyd say`: generate speech on a speccyd server through its public API, as the apps do."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from speccyd.cli.common import fail
from speccyd.config.units import parse_duration


def say(
    text: Annotated[str, typer.Argument(help="The text to speak; '-' reads it from standard input.")],
    server: Annotated[str, typer.Option("--server", help="The speccyd server's URL.")] = "http://127.0.0.1:8420",
    voice: Annotated[str, typer.Option("--voice", help="Voice, e.g. alloy, nova, coral.")] = "alloy",
    model: Annotated[str, typer.Option("--model", help="tts-1, tts-1-hd or gpt-4o-mini-tts.")] = "tts-1",
    speed: Annotated[float, typer.Option("--speed", help="0.25 to 4.0.")] = 1.0,
    instructions: Annotated[
        str | None, typer.Option("--instructions", help="How to speak (gpt-4o-mini-tts only).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to save the audio; its suffix picks the format.")
    ] = None,
    timeout: Annotated[str, typer.Option("--timeout", help="Longest wait for the audio (e.g. 90s, 10m).")] = "10m",
) -> None:
    """Sign in with OPENAI_API_KEY, generate speech on a speccyd server and save it: a terminal test."""
    import asyncio
    import os

    from speccyd.media.formats import FORMATS

    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        fail("set OPENAI_API_KEY to the OpenAI key to sign in with", 2)
    if text == "-":
        text = sys.stdin.read()
    output = output or Path("speech.mp3")
    fmt = output.suffix.lstrip(".").lower() or "mp3"
    if fmt not in FORMATS:
        fail(f"cannot save {output.name}: the suffix must be one of {', '.join(FORMATS)}", 2)
    try:
        wait = parse_duration(timeout)
    except ValueError as e:
        fail(f"--timeout: {e}", 2)
    _check_writable(output)  # before any network: a local problem is told as one, not as "cannot reach"
    request: dict[str, Any] = {"text": text, "voice": voice, "model": model, "format": fmt, "speed": speed}
    if instructions:
        request["instructions"] = instructions
    asyncio.run(_say(server, key, request, output, wait))


def _check_writable(output: Path) -> None:
    import os
    import secrets

    from speccyd.config.text import describe

    if output.is_dir():
        fail(f"cannot save the audio to {output}: it is a directory", 2)
    probe = output.with_name(f".{output.name}.{secrets.token_hex(4)}.probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as e:
        fail(f"cannot save the audio to {output}: {describe(e)}")


async def _say(server: str, key: str, request: dict[str, Any], output: Path, wait: float) -> None:
    import aiohttp
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn

    from speccyd.cli.client import ClientError, LocalFileError, SpeccyClient
    from speccyd.config.text import describe

    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), DownloadColumn(), TransferSpeedColumn())
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=60)) as session:
            client = SpeccyClient(server, session)
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task(f"signing in to {server}", total=None)
                await client.sign_in(key)
                progress.update(task, description="requesting speech")
                file = await client.generate(request)
                cached = file["status"] == "ready"
                file = await client.wait_ready(
                    file, wait, lambda s: progress.update(task, description=f"generating ({s:.0f}s)")
                )
                progress.update(task, description=f"saving {output.name}")
                size = await client.download(
                    file, output, lambda done, total: progress.update(task, completed=done, total=total)
                )
    except (ClientError, LocalFileError) as e:
        fail(str(e))
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        fail(f"cannot reach {server}: {describe(e)}")
    origin = "from the server's cache" if cached else "generated"
    console.print(f"saved {output} ({size:,} bytes, {origin}; file {file['file_id']})")
