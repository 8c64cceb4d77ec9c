"""The one rule for a base URL the token may be sent to.

https to any host; plain http only to the loopback (``localhost``, ``127.0.0.1``, ``::1``), where
the token never leaves the machine; and no query string or fragment. The client applies it when it
is made, and a job file when it is loaded (as a SpecError at the ``api.base_url`` line), so a job
that loads is not refused later by the client for its URL. Kept apart from the client so that
reading a job file needs no HTTP library.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import InsecureURL

__all__ = ["LOCAL_HOSTS", "check_base_url", "is_local"]

#: The hosts plain http may go to, as ``urlsplit(url).hostname`` spells them (IPv6 unbracketed).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_local(base_url: str) -> bool:
    """The embedded sandbox (``sandbox``) or a server on this machine (a standalone sandbox, a
    test server): not a real portal, whose limits the client must respect unasked."""
    if base_url == "sandbox":
        return True
    try:
        return (urlsplit(base_url).hostname or "") in LOCAL_HOSTS
    except ValueError:
        return False


def check_base_url(url: str) -> str:
    """``url`` without its trailing slashes if the token may go there; else :class:`InsecureURL`."""
    not_a_url = InsecureURL(f"base URL must be an http(s) URL with a host, got {url!r}")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. "http://[::1" (an unclosed IPv6 address)
        raise not_a_url from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise not_a_url
    if parts.scheme == "http" and hostname not in LOCAL_HOSTS:
        raise InsecureURL(
            f"refusing plain http to {hostname}: the token would travel in clear text; "
            "use https (plain http is allowed only to localhost, 127.0.0.1 and ::1)"
        )
    if parts.query or parts.fragment:
        raise InsecureURL("base URL must not carry a query string or fragment")
    return url.rstrip("/")
