"""One redaction for everything the client prints or raises: the token never leaves in text.

A server may echo what it received (``Authorization: Bearer <token>``, the header base64-encoded
by a proxy, a slice of the token in a "token ... is invalid" message). :func:`redact` replaces the
token, any piece of it of :data:`MIN_FRAGMENT` characters or more, and the same for its base64
(standard and URL-safe, at every byte alignment, so ``base64("Bearer " + token)`` and
``base64("user:" + token)`` are covered too) with ``<redacted>``.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

__all__ = ["MIN_FRAGMENT", "REDACTED", "redact", "redact_value"]

REDACTED = "<redacted>"
#: The shortest piece of a secret that is redacted on its own.
MIN_FRAGMENT = 8


def _b64_cores(data: bytes) -> list[str]:
    """The base64 text that ``data`` contributes wherever it sits in a longer encoded string.

    For each of the three byte alignments, encode ``data`` behind that many filler bytes and keep
    only the characters that depend on ``data`` alone (whole 3-byte groups).
    """
    cores: list[str] = []
    for pad in range(3):
        encoded = base64.b64encode(bytes(pad) + data).decode("ascii")
        first = 4 if pad else 0  # the group mixing filler and data
        whole = (pad + len(data)) // 3 * 4  # characters of complete groups
        core = encoded[first:whole]
        cores += [core, core.replace("+", "-").replace("/", "_")]
    return cores


@lru_cache(maxsize=8)
def _windows(secret: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """(every MIN_FRAGMENT-long piece of the secret and of its encodings, the whole forms)."""
    raw = secret.encode("utf-8")
    forms = [
        secret,
        *_b64_cores(raw),
        base64.b64encode(f"Bearer {secret}".encode()).decode("ascii"),
        base64.b64encode(raw).decode("ascii"),
    ]
    n = MIN_FRAGMENT
    pieces = {f[i : i + n] for f in forms for i in range(len(f) - n + 1)}
    whole = tuple(sorted({f for f in forms if f}, key=len, reverse=True))
    return frozenset(pieces), whole


def redact(text: str, secret: str) -> str:
    """``text`` with the secret, ``Bearer <secret>``, their base64 and any piece of the secret
    (or of its base64) of 8+ characters replaced by ``<redacted>``."""
    if not secret or not text:
        return text
    text = text.replace(f"Bearer {secret}", REDACTED)
    pieces, whole = _windows(secret)
    for form in whole:
        if len(form) < MIN_FRAGMENT:  # a short secret: only the whole of it is redacted
            text = text.replace(form, REDACTED)
    n = MIN_FRAGMENT
    if len(text) < n or not pieces:
        return text
    # Mark every character covered by a window that is a piece of the secret; any fragment of
    # n+ characters is a run of such windows, so runs of marks are exactly what to cut out.
    covered = [False] * len(text)
    hit = False
    for i in range(len(text) - n + 1):
        if text[i : i + n] in pieces:
            hit = True
            for j in range(i, i + n):
                covered[j] = True
    if not hit:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def redact_value(value: Any, secret: str) -> Any:
    """``value`` (JSON data: str, list, dict, number...) with :func:`redact` applied to every
    string in it, keys included."""
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, list | tuple):
        return [redact_value(v, secret) for v in value]
    if isinstance(value, dict):
        return {redact(str(k), secret): redact_value(v, secret) for k, v in value.items()}
    return value
