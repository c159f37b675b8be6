"""Hostile input, generated: whatever a client sends, the answer is never a 5xx, never a traceback, and every
error is the JSON envelope. SPECCY_FUZZ_EXAMPLES=1000 runs a longer search than CI's 40 per test.

A new endpoint gets a test here: its bodies, path parameters and headers, checked with `check`."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speccyd.generation.speech import MODELS, VOICES
from speccyd.media.formats import FORMATS
from tests.conftest import AppClient, eventually, sign_in
from tests.fake_upstream import FakeUpstream

FUZZ = settings(
    max_examples=int(os.environ.get("SPECCY_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)

# All of Unicode in header values but control characters (the client library refuses to send them; the raw
# socket tests send every byte instead) and lone surrogates (no UTF-8); queries take control characters too.
header_text = st.text(st.characters(exclude_categories=("Cs", "Cc"), include_characters="\t"), max_size=200)
query_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
# Lone surrogates included: JSON can carry them ("\ud800") and Python decodes them into str.
any_text = st.text(st.characters(exclude_categories=()), max_size=300)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
speech_bodies = st.fixed_dictionaries(
    {},
    optional={
        "text": any_text | json_values,
        "voice": st.sampled_from(VOICES) | json_values,
        "model": st.sampled_from(MODELS) | json_values,
        "format": st.sampled_from(FORMATS) | json_values,
        "speed": st.floats() | st.integers() | json_values,
        "instructions": any_text | json_values,
    },
)
path_segment = st.text(max_size=80).map(lambda s: urllib.parse.quote(s, safe=""))
hex_ids = st.text("0123456789abcdef", min_size=32, max_size=32)
range_headers = header_text | st.from_regex(r"\Abytes ?= ?-?[0-9]{0,6}-?[0-9]{0,6}(,-?[0-9]{0,5}-[0-9]{0,5})?\Z")


async def check(response: Any) -> None:
    """The contract for every answer, good or bad."""
    text = (await response.read()).decode("utf-8", "replace")  # a 2xx may be audio
    assert response.status < 500, f"{response.status}: {text[:300]}"
    assert "Traceback" not in text and 'File "/' not in text
    if response.status >= 400:
        assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
        body = json.loads(text)
        assert set(body) == {"error"}
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)


@FUZZ
@given(body=speech_bodies | json_values)
async def test_generate_bodies(client: AppClient, body: Any) -> None:
    """Any JSON body to POST /tts/generate: 2xx or a 4xx envelope."""
    headers = await sign_in(client)
    await check(await client.post("/tts/generate", json=body, headers=headers))


@FUZZ
@given(raw=st.binary(max_size=500), content_type=st.sampled_from(["application/json", "text/plain", "", "x/y"]))
async def test_raw_bodies_on_every_post(client: AppClient, raw: bytes, content_type: str) -> None:
    """Arbitrary bytes as the body of every POST endpoint: never a 5xx."""
    headers = await sign_in(client)
    for path in ("/tts/generate", "/auth/verify"):
        await check(await client.post(path, data=raw, headers={**headers, "Content-Type": content_type}))


@FUZZ
@given(token=st.text(max_size=600) | json_values, extra=st.dictionaries(st.text(max_size=10), json_values, max_size=3))
async def test_sign_in_bodies(make_client: Any, token: Any, extra: dict[str, Any]) -> None:
    """Any openai_token to POST /auth/verify: 200 for a good key, else a 4xx envelope."""
    client = await make_client(auth_rate_limit=1000)
    await check(await client.post("/auth/verify", json={**extra, "openai_token": token}))


@FUZZ
@given(segment=path_segment | hex_ids, method=st.sampled_from(["GET", "DELETE", "POST", "PUT", "HEAD", "PATCH"]))
async def test_path_parameters(client: AppClient, segment: str, method: str) -> None:
    """Any string in any path parameter, with any method: never a 5xx."""
    headers = await sign_in(client)
    for template in ("/files/{}", "/tts/{}", "/tts/{}/status", "/{}", "/auth/{}", "/user/{}"):
        response = await client.request(method, template.format(segment), headers=headers)
        if method == "HEAD":
            assert response.status < 500
        else:
            await check(response)


@FUZZ
@given(
    authorization=header_text,
    range_header=range_headers,
    if_range=st.none() | header_text | st.sampled_from(["current", "Wed, 21 Oct 2099 07:28:00 GMT", 'W/"x"']),
    query=st.dictionaries(st.sampled_from(["exp", "sig", "x"]), query_text, max_size=3),
)
async def test_headers_and_queries_on_downloads(
    client: AppClient, authorization: str, range_header: str, if_range: str | None, query: dict[str, str]
) -> None:
    """Any Authorization, Range, If-Range and query string on a real file: a 2xx or 4xx envelope."""
    headers = await sign_in(client)
    response = await client.post("/tts/generate", json={"text": "fuzzed download"}, headers=headers)
    file_id = (await response.json())["file_id"]
    await check(await client.get(f"/files/{file_id}", params=query, headers={"Authorization": authorization}))
    await check(await client.get(f"/files/{file_id}", headers={**headers, "Range": range_header}))
    if if_range is not None:
        if if_range == "current":  # the file's own ETag: the Range applies, and a bad one must be our 416
            if_range = (await client.get(f"/files/{file_id}", headers=headers)).headers["ETag"]
        odd = {**headers, "Range": range_header, "If-Range": if_range}
        await check(await client.get(f"/files/{file_id}", headers=odd))
    await check(await client.get("/user/usage", headers={"Authorization": authorization}))


HOSTILE_JSON = [
    '{"text": "hi", "speed": 1' + "0" * 5000 + "}",  # Python refuses ints over 4,300 digits with ValueError
    '{"text": "hi", "speed": 1e999}',
    '{"text": "hi", "speed": NaN}',
    '{"text": "hi", "speed": -Infinity}',
    '{"text": "\\ud800 lone surrogate"}',
    '{"text": "hi", "instructions": "\\udfff", "model": "gpt-4o-mini-tts"}',
    '{"text": "hi", "voice": "\\ud800"}',
    '{"text": "a", "text": "b"}',
    "[" * 100_000 + "]" * 100_000,
    '{"text": "\\u0000"}',
    '"just a string"',
    "",
    "\ufeff{}",
]


@pytest.mark.parametrize("raw", HOSTILE_JSON, ids=range(len(HOSTILE_JSON)))
async def test_hostile_json_documents(client: AppClient, raw: str) -> None:
    """Huge numbers, NaN, lone surrogates, deep nesting and duplicate keys: a 2xx or a 4xx envelope."""
    headers = {**(await sign_in(client)), "Content-Type": "application/json"}
    await check(await client.post("/tts/generate", data=raw.encode("utf-8", "surrogatepass"), headers=headers))
    token_body = raw.replace('"text"', '"openai_token"')
    await check(await client.post("/auth/verify", data=token_body.encode("utf-8", "surrogatepass"), headers=headers))


# --- the endpoints added after the core: /v1, the library, the contract, metrics, live streams, long text ---


async def check_openai(response: Any) -> None:
    """The contract under /v1: never a 5xx or a traceback; every error in OpenAI's envelope."""
    text = (await response.read()).decode("utf-8", "replace")
    assert response.status < 500, f"{response.status}: {text[:300]}"
    assert "Traceback" not in text and 'File "/' not in text
    if response.status >= 400:
        assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
        body = json.loads(text)
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["type"], str)


openai_bodies = st.fixed_dictionaries(
    {},
    optional={
        "input": any_text | json_values,
        "voice": st.sampled_from(VOICES) | json_values,
        "model": st.sampled_from(MODELS) | json_values,
        "response_format": st.sampled_from(FORMATS) | json_values,
        "speed": st.floats() | st.integers() | json_values,
        "instructions": any_text | json_values,
        "stream_format": st.sampled_from(["audio", "sse"]) | json_values,
    },
)
KEY_HEADER = {"Authorization": "Bearer sk-test-fuzz-0123456789"}


@FUZZ
@given(body=openai_bodies | json_values)
async def test_openai_speech_bodies(make_client: Any, body: Any) -> None:
    """Any JSON body to POST /v1/audio/speech with a good key: audio, or a 4xx in OpenAI's envelope."""
    client = await _cached_client(make_client)
    await check_openai(await client.post("/v1/audio/speech", json=body, headers=KEY_HEADER))


@FUZZ
@given(
    authorization=header_text | st.sampled_from(["Bearer", "Bearer a.b.c", "Bearer " + "x" * 600, "Basic Zm9v"]),
    raw=st.binary(max_size=200),
)
async def test_openai_authorization_values(make_client: Any, authorization: str, raw: bytes) -> None:
    """Any Authorization (and any raw body) on /v1/audio/speech: 401/400/429 in OpenAI's envelope."""
    client = await _cached_client(make_client)
    body = {"model": "tts-1", "voice": "alloy", "input": "fuzzed key"}
    await check_openai(await client.post("/v1/audio/speech", json=body, headers={"Authorization": authorization}))
    await check_openai(await client.post("/v1/audio/speech", data=raw, headers=KEY_HEADER))


_CLIENT: list[tuple[Any, AppClient]] = []  # (the make_client fixture it came from, the client)


async def _cached_client(make_client: Any, **overrides: object) -> AppClient:
    """One app per test function (hypothesis reuses the fixture across examples); sign-in limit out of the way."""
    if not _CLIENT or _CLIENT[0][0] is not make_client:
        _CLIENT[:] = [(make_client, await make_client(auth_rate_limit=100_000, **overrides))]
    return _CLIENT[0][1]


query_values = (
    st.text(max_size=30)
    | st.integers(-(10**20), 10**20).map(str)
    | st.sampled_from(
        ["", "0", "1e3", "+5", " 5", "5 ", "0x10", "١٢", "\uff11", "9" * 19, "1000", "1001", "%00", "NaN"]
    )
)


@FUZZ
@given(since=query_values, limit=query_values, extra=st.sampled_from(["", "&since=1", "&limit=2&limit=3"]))
async def test_library_queries(client: AppClient, since: str, limit: str, extra: str) -> None:
    """Any since/limit on GET /files: a page, or 400/410 in the envelope."""
    headers = await sign_in(client)
    query = urllib.parse.urlencode({"since": since, "limit": limit}) + extra
    response = await client.get(f"/files?{query}", headers=headers)
    await check(response)
    if response.status == 200:
        body = await response.json()
        assert set(body) == {"files", "deleted", "next_cursor", "has_more"}


@FUZZ
@given(segment=path_segment | hex_ids, query=st.dictionaries(query_text, query_text, max_size=3))
async def test_meta_models_contract_and_metrics(make_client: Any, segment: str, query: dict[str, str]) -> None:
    """Any id in /files/{id}/meta and /v1/models/{id}, any query on /openapi.json and /metrics: no 5xx."""
    client = await _cached_client(make_client, metrics="on")
    headers = await sign_in(client)
    await check(await client.get(f"/files/{segment}/meta", headers=headers))
    await check_openai(await client.get(f"/v1/models/{segment}"))
    for path in ("/openapi.json", "/metrics"):
        response = await client.get(path, params=query)
        assert response.status == 200
        await check(response)


if_range_headers = header_text | st.sampled_from(
    ['"0-0"', 'W/"x"', "Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2099 07:28:00 GMT", "", '"', "W/"]
)


@FUZZ
@given(range_header=range_headers, if_range=if_range_headers, method=st.sampled_from(["GET", "HEAD"]))
async def test_live_stream_with_odd_range_headers(
    client: AppClient, fake: FakeUpstream, range_header: str, if_range: str, method: str
) -> None:
    """A file still generating, asked for with any Range and If-Range: a plain 200 live stream, never an error."""
    headers = await sign_in(client)
    fake.gate.clear()  # the generation waits upstream until the request has been answered
    try:
        _LIVE_TEXTS.append(f"live fuzz {len(_LIVE_TEXTS)}")
        response = await client.post("/tts/generate", json={"text": _LIVE_TEXTS[-1]}, headers=headers)
        file_id = (await response.json())["file_id"]
        odd = {**headers, "Range": range_header, "If-Range": if_range}
        live = await client.request(method, f"/files/{file_id}", headers=odd)
        assert live.status == 200, live.status
        assert live.headers["Content-Type"] == "audio/mpeg"
        live.close()
    finally:
        fake.gate.set()


_LIVE_TEXTS: list[str] = []

# Pieces of hostile Unicode: huge combining sequences, bidi controls, NULs, ZWJ emoji, odd spaces, surrogates.
hostile_pieces = st.sampled_from(
    [
        "a" + "\u0301" * 300,
        "\u202e\u2067\u200f\u200e\u061c",
        "\x00",
        "\x00" * 40,
        "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 10,
        "\u3000\u2028\u2029\x1c\x1d\x85",
        "\ufeff\u200b\u2060",
        "```\n",
        "\n\n",
        ". ",
        "\ud800",
        "\udfff\ud800",
        "word ",
        "\U0010ffff",
    ]
)
hostile_texts = st.lists(hostile_pieces | st.text(max_size=40), min_size=1, max_size=40).map("".join)


@FUZZ
@given(text=hostile_texts, path=st.sampled_from(["/tts/generate", "/v1/audio/speech"]))
async def test_long_hostile_unicode_text_is_chunked_or_refused(make_client: Any, text: str, path: str) -> None:
    """Long text of combining runs, bidi marks, NULs and lone surrogates: refused with a 400, or generated in
    chunks to the end; never a 5xx, never an internal error while generating."""
    client = await _cached_client(make_client, upstream_max_chars=60)
    headers = {**(await sign_in(client)), "Content-Type": "application/json"}
    if path == "/tts/generate":
        body = {"text": text, "format": "pcm"}
    else:
        body = {"input": text, "model": "tts-1", "voice": "alloy", "response_format": "pcm"}
    # surrogatepass: JSON "\ud800" escapes are what a client sends for a lone surrogate.
    raw = json.dumps(body).encode("utf-8", "surrogatepass")
    response = await client.post(path, data=raw, headers=headers)
    if path != "/tts/generate":
        await check_openai(response)
        return
    await check(response)
    if response.status >= 400:
        assert (await response.json())["error"]["code"] in {"invalid_text", "invalid_json"}
        return
    content_hash = (await response.json())["content_hash"]

    async def finished() -> dict[str, Any] | None:
        status = await (await client.get(f"/tts/{content_hash}/status", headers=headers)).json()
        return status if status["status"] != "generating" else None

    final = await eventually(finished, what="the hostile text's generation")
    assert final["status"] == "ready", final


fence_texts = st.lists(st.sampled_from(["```\n", "~~~py\n", "  ```\n", "text\n", "\n", "a. b\n", "```"]), max_size=60)


@FUZZ
@given(pieces=fence_texts, position=st.integers(0, 400))
def test_fence_lookup_by_bisection_matches_a_scan_of_every_fence(pieces: list[str], position: int) -> None:
    """Whether a cut lies inside a code fence is found by bisection (a scan of every fence per cut took 13 s of
    CPU for 100,000 characters of fences); it answers exactly as the scan does."""
    from speccyd.generation.chunking import _FENCE, _Splitter

    text = "".join(pieces)
    splitter = _Splitter(text, 10)
    fences = [(m.start(), m.end()) for m in _FENCE.finditer(text)]
    assert splitter._outside_fences(position) == (not any(a < position < b for a, b in fences))


# Header bytes past ASCII (obs-text) reach the app as surrogate escapes; control characters and DEL are left out,
# since aiohttp's parser refuses those itself (a plain 400 before speccyd sees the request).
header_bytes = st.binary(min_size=1, max_size=80).map(lambda b: bytes(c for c in b if c >= 0x21 and c != 0x7F) or b"x")


@FUZZ
@given(token=header_bytes, scheme=st.sampled_from([b"Bearer ", b"bearer ", b"Bearer a.b.", b""]))
async def test_raw_authorization_bytes_on_every_authenticated_endpoint(
    make_client: Any, token: bytes, scheme: bytes
) -> None:
    """Any bytes (UTF-8 or not) in Authorization, sent on the wire: 401 in the right envelope, never a 500."""
    client = await _cached_client(make_client)
    for method, path in (("GET", "/user/usage"), ("GET", "/files"), ("GET", f"/files/{'0' * 32}"),
                         ("POST", "/v1/audio/speech")):  # fmt: skip
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n".encode()
                     + b"Authorization: " + scheme + token + b"\r\n\r\n{}")  # fmt: skip
        answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        assert status < 500, answer[:400]
        assert b"Traceback" not in body
        if status >= 400:
            error = json.loads(body)["error"]
            wanted = {"message", "type", "param", "code"} if path.startswith("/v1/") else {"code", "message"}
            assert set(error) == wanted


_READY: list[tuple[AppClient, str, str]] = []  # (client, Authorization, a ready file's id)


@FUZZ
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"Range", b"If-Range", b"If-None-Match", b"If-Modified-Since", b"Accept-Encoding"]),
            header_bytes | st.sampled_from([b"bytes=0-", b"bytes=99999999-", b'"\xff"', b"W/\xfe"]),
        ),
        min_size=1,
        max_size=4,
    )
)
async def test_raw_header_bytes_on_a_download(make_client: Any, headers: list[tuple[bytes, bytes]]) -> None:
    """Any bytes in Range, If-Range and the conditional headers of a download: an answer (never a dropped
    connection), never a 5xx, errors in the envelope."""
    client = await _cached_client(make_client)
    if not _READY or _READY[0][0] is not client:
        auth = await sign_in(client)
        response = await client.post("/tts/generate", json={"text": "raw headers"}, headers=auth)
        body = await response.json()
        await eventually(lambda: _is_ready(client, auth, body["content_hash"]), what="the file for raw header fuzzing")
        _READY[:] = [(client, auth["Authorization"], body["file_id"])]
    _, authorization, file_id = _READY[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    writer.write(f"GET /files/{file_id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {authorization}\r\n"
                 .encode() + extra + b"\r\n")  # fmt: skip
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]  # an answer, not a connection dropped mid-request
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head[9:12])
    assert status < 500, answer[:400]
    if status >= 400:
        assert set(json.loads(body)["error"]) == {"code", "message"}


async def _is_ready(client: AppClient, auth: dict[str, str], content_hash: str) -> bool:
    status = await (await client.get(f"/tts/{content_hash}/status", headers=auth)).json()
    return bool(status["status"] == "ready")
