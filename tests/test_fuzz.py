"""Hostile input, generated: whatever a client sends, the answer is never a 5xx, never a traceback, and every
error is the JSON envelope. SPECCY_FUZZ_EXAMPLES=1000 runs a longer search than CI's 40 per test.

A new endpoint gets a test here: its bodies, path parameters and headers, checked with `check`."""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speccyd.tts import FORMATS, MODELS, VOICES
from tests.conftest import AppClient, sign_in

FUZZ = settings(
    max_examples=int(os.environ.get("SPECCY_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)

header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
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
    query=st.dictionaries(st.sampled_from(["exp", "sig", "x"]), header_text, max_size=3),
)
async def test_headers_and_queries_on_downloads(
    client: AppClient, authorization: str, range_header: str, query: dict[str, str]
) -> None:
    """Any Authorization, Range and query string on a real file: a 2xx or 4xx envelope."""
    headers = await sign_in(client)
    response = await client.post("/tts/generate", json={"text": "fuzzed download"}, headers=headers)
    file_id = (await response.json())["file_id"]
    await check(await client.get(f"/files/{file_id}", params=query, headers={"Authorization": authorization}))
    await check(await client.get(f"/files/{file_id}", headers={**headers, "Range": range_header}))
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
