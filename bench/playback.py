"""HLS playback, measured: `python -m bench.playback` (about a minute; --quick for a shorter run).

Everything runs on 127.0.0.1: the fake upstream in this process serving real mp3 (made by ffmpeg), speccyd
as a real `speccyd serve` subprocess with its own temp data dir (so its RSS is its own). Every loop is
bounded in count and time.

1. Cache miss of a long text, the upstream waiting 500 ms before each call's first byte: time until the
   first segment is listed in the playlist, vs time until the first byte of the progressive stream, both
   from the POST (alternating, medians). Goal: HLS <= 1.2 x progressive + 50 ms.
2. 20 readers follow a generating file as a player does (reload the playlist, fetch each new segment):
   playlist reloads per second, and the same playlist under wrk's load with 20 connections (when wrk is
   installed); peak RSS of speccyd meanwhile. Goal: RSS <= 100 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.streaming import HOST, KEY, LATENCY, Speccyd, bounded, row, rss_mb, sampler
from speccyd.media import id3
from tests.fake_upstream import FakeUpstream, serve_fake

CLIP_SECONDS = 10.0  # what one upstream call of ~1000 characters is, in speech
POLL = 0.005  # playlist polling interval when timing the first segment (its resolution)


def clip(seconds: float, frequency: int) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "clip.mp3"
        source = f"sine=frequency={frequency}:sample_rate=24000:duration={seconds}"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "1", "-c:a", "libmp3lame",
             "-b:a", "64k", str(path)],
            check=True, timeout=60,
        )  # fmt: skip
        return path.read_bytes()


def document(paragraphs: int, tag: str) -> str:
    sentence = "Sentence {i} of a long specification, read aloud by Speccy while the rest is generated."
    paragraph = " ".join(sentence.format(i=i) for i in range(10))  # ~900 characters: one upstream call each
    return "\n\n".join(f"{tag} part {p}. {paragraph}" for p in range(paragraphs))


async def generate(session: aiohttp.ClientSession, server: Speccyd, auth: dict[str, str], text: str) -> dict[str, str]:
    async with session.post(f"{server.base}/tts/generate", json={"text": text}, headers=auth) as r:
        created: dict[str, str] = await r.json()
        if r.status != 202:
            raise RuntimeError(f"expected a cache miss, got {r.status}: {created}")
    return created


async def finished(session: aiohttp.ClientSession, server: Speccyd, auth: dict[str, str], content_hash: str) -> None:
    """Wait (bounded) for a generation to end, so the next round does not queue for upstream slots behind it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with session.get(f"{server.base}/tts/{content_hash}/status", headers=auth) as r:
            if (await r.json())["status"] != "generating":
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("a generation did not finish within 60 s")


async def first_segment(session: aiohttp.ClientSession, server: Speccyd, auth: dict[str, str], text: str) -> float:
    """Seconds from the POST until a playlist lists a segment (polled every POLL seconds, bounded)."""
    start = time.perf_counter()
    created = await generate(session, server, auth, text)
    url = server.base + created["playlist_url"]
    deadline = start + 30
    while time.perf_counter() < deadline:
        async with session.get(url) as r:
            if "#EXTINF" in await r.text():
                elapsed = time.perf_counter() - start
                await finished(session, server, auth, created["content_hash"])
                return elapsed
        await asyncio.sleep(POLL)
    raise RuntimeError("no segment listed within 30 s")


async def first_byte(session: aiohttp.ClientSession, server: Speccyd, auth: dict[str, str], text: str) -> float:
    """Seconds from the POST until the progressive stream's first byte of audio (past speccyd's ID3 tag of a
    joined mp3, which is there at once and is not sound)."""
    start = time.perf_counter()
    created = await generate(session, server, auth, text)
    received = b""
    async with session.get(server.base + created["url"]) as r:
        async for block in r.content.iter_any():
            received += block
            tag = id3.tag_size(received[:10])
            if tag is not None and len(received) > tag:
                elapsed = time.perf_counter() - start
                break
        else:
            raise RuntimeError("the stream ended before its first audio byte")
    await finished(session, server, auth, created["content_hash"])
    return elapsed


async def follow(session: aiohttp.ClientSession, base: str, playlist_url: str, stop: asyncio.Event) -> tuple[int, int]:
    """One player: reload the playlist, fetch every segment it has not fetched yet; (reloads, segments)."""
    fetched: set[str] = set()
    reloads = 0
    while not stop.is_set():
        async with session.get(base + playlist_url) as r:
            text = await r.text()
        reloads += 1
        folder = playlist_url.split("?")[0].rsplit("/", 1)[0]
        for uri in re.findall(r"^segments/\S+$", text, re.MULTILINE):
            if uri not in fetched:
                async with session.get(f"{base}{folder}/{uri}") as r:
                    await r.read()
                fetched.add(uri)
        if "#EXT-X-ENDLIST" in text:
            break
    return reloads, len(fetched)


async def wrk(url: str, seconds: int) -> float | None:
    """wrk's requests/s on `url` with 20 connections (None when wrk is not installed)."""
    tool = shutil.which("wrk")
    if tool is None:
        return None
    process = await asyncio.create_subprocess_exec(
        tool, "-t2", "-c20", f"-d{seconds}s", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), seconds + 30)
    found = re.search(r"Requests/sec:\s+([\d.]+)", output.decode())
    if found is None or "Non-2xx" in output.decode():
        raise RuntimeError(f"wrk failed:\n{output.decode()}")
    return float(found.group(1))


async def main(quick: bool) -> int:
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is needed to make the mp3 the fake upstream serves (apt-get install -y ffmpeg)")
    fake = FakeUpstream(latency=LATENCY)
    fake.clips = {"mp3": [clip(CLIP_SECONDS, 300 + 100 * i) for i in range(3)]}
    runner, upstream = await serve_fake(fake, HOST)
    missed = 0
    with tempfile.TemporaryDirectory(prefix="speccyd-bench-") as tmp:
        server = Speccyd(Path(tmp) / "data", upstream)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                await server.ready(session)
                print(f"speccyd RSS at start: {rss_mb(server.process.pid):.0f} MB")
                async with session.post(f"{server.base}/auth/verify", json={"openai_token": KEY}) as r:
                    auth = {"Authorization": f"Bearer {(await r.json())['session_token']}"}

                # 1. first listed segment vs first progressive byte, alternating, each a new miss
                runs = 3 if quick else 7
                hls: list[float] = []
                progressive: list[float] = []
                for i in range(runs):
                    progressive.append(
                        await bounded("progressive", first_byte(session, server, auth, document(8, f"p{i}")))
                    )
                    hls.append(await bounded("hls", first_segment(session, server, auth, document(8, f"h{i}"))))
                first_hls, first_byte_s = statistics.median(hls), statistics.median(progressive)
                goal = 1.2 * first_byte_s + 0.05
                print(
                    f"\nCache miss of a long text (upstream waits {LATENCY * 1000:.0f} ms per call; median of {runs})"
                )
                print(f"  {'first audio byte of the progressive stream':<52} {first_byte_s * 1000:>9.1f} ms")
                row("first segment listed in the playlist", f"{first_hls * 1000:.1f} ms", f"<= {goal * 1000:.0f} ms",
                    first_hls <= goal)  # fmt: skip
                print(f"  {'ratio':<52} {first_hls / first_byte_s:>11.2f}x")
                missed += first_hls > goal

                # 2. 20 readers following a generating file; the playlist under wrk; RSS
                print(f"  (speccyd RSS now {rss_mb(server.process.pid):.0f} MB)")
                fake.latency, fake.chunk_size, fake.chunk_delay = LATENCY, 2000, 0.05  # each call ~2.5 s
                seconds = 5 if quick else 10
                created = await generate(session, server, auth, document(40, "follow"))
                stop = asyncio.Event()
                peak = asyncio.create_task(sampler(server.process.pid)(stop))
                started = time.perf_counter()
                players = [
                    asyncio.create_task(follow(session, server.base, created["playlist_url"], stop)) for _ in range(20)
                ]
                await asyncio.sleep(seconds)
                stop.set()
                results = await bounded("readers", asyncio.gather(*players))
                elapsed = time.perf_counter() - started
                reloads = sum(r for r, _ in results)
                under_wrk = await wrk(server.base + created["playlist_url"], seconds)
                rss = await peak
                async with session.get(f"{server.base}/tts/{created['content_hash']}/status", headers=auth) as r:
                    state = (await r.json())["status"]
                print(f"\n20 readers following a generating file for {elapsed:.1f} s (it was still {state!r} after)")
                print(f"  {'playlist reloads/s (20 players fetching segments)':<52} {reloads / elapsed:>9.0f}")
                print(f"  {'segments fetched per player':<52} {statistics.median(s for _, s in results):>9.0f}")
                if under_wrk is not None:
                    print(f"  {'playlist reloads/s under wrk -c20':<52} {under_wrk:>9.0f}")
                else:
                    print("  wrk not installed (apt-get install -y wrk): its figure is left out")
                row("peak RSS of speccyd", f"{rss:.0f} MB", "<= 100 MB", rss <= 100)
                missed += rss > 100
                print(f"  (idle RSS now {rss_mb(server.process.pid):.0f} MB)")
        finally:
            server.stop()
            await runner.cleanup()
    print(f"\n{'all goals met' if not missed else f'{missed} goal(s) missed'}")
    return 1 if missed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and a shorter load")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
