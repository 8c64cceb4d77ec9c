"""The client against a hostile or broken server: echoed secrets, loops, huge answers."""

from __future__ import annotations

import base64

import pytest

from synap_bulk.errors import BadRequest
from synap_bulk.redact import REDACTED, redact
from synap_bulk.resources import User
from synap_bulk.transport import RawResponse

from .test_client import TOKEN, fail, make, script

LONG = "syn_live_4f9b2c7d1e8a6f3b0c5d9e2a7f1b4c8d"

# Every form of the token a server might echo back, and what must never be in the output.
B64_BEARER = base64.b64encode(f"Bearer {TOKEN}".encode()).decode()
B64_TOKEN = base64.b64encode(TOKEN.encode()).decode()
SLICE = TOKEN[3:15]
FORBIDDEN = [TOKEN, SLICE, B64_BEARER, B64_TOKEN, "very-sec", "secret-t"]


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {LONG}",
        f"token={LONG}&x=1",
        f"got {base64.b64encode(f'Bearer {LONG}'.encode()).decode()} from the proxy",
        f"basic {base64.b64encode(f'user:{LONG}'.encode()).decode()}",
        f"token ...{LONG[5:17]}... is invalid",
        f"urlsafe {base64.urlsafe_b64encode(b'xy' + LONG.encode()).decode()}",
    ],
)
def test_redact_cuts_every_form_of_the_secret(text: str) -> None:
    """The token, Bearer token, their base64 (any alignment) and 8+ char slices all go."""
    out = redact(text, LONG)
    assert REDACTED in out
    for i in range(len(LONG) - 7):
        assert LONG[i : i + 8] not in out
    b64 = base64.b64encode(LONG.encode()).decode()
    assert b64[4:12] not in out


def test_redact_leaves_other_text_alone() -> None:
    """Text without the secret comes back unchanged, short overlaps included."""
    text = "email already registered (syn_ not a token; 4f9b2c7)"
    assert redact(text, LONG) == text
    assert redact("", LONG) == "" and redact("abc", "") == "abc"


def test_redact_a_short_secret_whole() -> None:
    """A secret shorter than a fragment is still redacted where it appears whole."""
    assert redact("key=abc123 ok", "abc123") == f"key={REDACTED} ok"


@pytest.mark.parametrize(
    "echo",
    [
        f"bad header Authorization: Bearer {TOKEN}",
        f"bad header {B64_BEARER}",
        f"unknown key {B64_TOKEN}",
        f"token ...{SLICE}... revoked",
    ],
)
async def test_a_400_that_echoes_the_token_never_carries_it(echo: str) -> None:
    """Detail, title, code, source and meta of an echoing 400 reach the exception redacted."""
    answer = fail(
        400,
        title=echo,
        detail=echo,
        code=echo,
        pointer=f"/data/{echo}",
        parameter=echo,
        meta={"traceId": echo, "echo": [echo, {"k": echo}]},
    )
    client, _, _ = make(script(answer))
    async with client:
        with pytest.raises(BadRequest) as info:
            await client.get("users", "1", User)
    exc = info.value
    texts = [str(exc), repr(exc), str(exc.trace_id), *exc.details()]
    for err in exc.errors:
        assert err.source is not None
        texts += [str(err.detail), str(err.title), str(err.code), str(err.meta)]
        texts += [str(err.source.pointer), str(err.source.parameter)]
    for text in texts:
        for bad in FORBIDDEN:
            assert bad not in text, (bad, text)
    assert REDACTED in str(exc)


async def test_a_non_jsonapi_body_that_echoes_the_token_never_carries_it() -> None:
    """The excerpt of an HTML error page is redacted too (base64 and slices included)."""
    page = f"<html><body>echo {B64_BEARER} and {SLICE}</body></html>".encode()
    client, _, _ = make(script(RawResponse(400, {}, page)))
    async with client:
        with pytest.raises(BadRequest) as info:
            await client.get("users", "1", User)
    for bad in FORBIDDEN:
        assert bad not in str(info.value)
    assert info.value.body_excerpt is not None and REDACTED in info.value.body_excerpt
