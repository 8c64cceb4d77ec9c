"""The token and who it acts as: where the token is read from (:data:`TokenSource`) and
:class:`Identity`, the portal and user a token acts as (never the token itself)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from msgspec import Struct

from .errors import MissingToken

__all__ = ["Identity", "TokenSource"]


TokenSource = Literal["job token", "job token_file", "SYNAP_TOKEN"]


def _read_token(
    token: str | None, token_file: str | os.PathLike[str] | None
) -> tuple[str, TokenSource]:
    """The token and where it came from: ``token``, else ``token_file``, else ``SYNAP_TOKEN``.

    What the job names explicitly wins over what the environment happens to hold, so a
    staging job is never sent to production by a variable left over in a shell.
    """
    source: TokenSource
    if token is not None:
        value, source = token, "job token"
    elif token_file is not None:
        try:
            value = Path(token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise MissingToken(f"cannot read the token file {token_file}: {exc.strerror}") from None
        source = "job token_file"
        if not value.strip():
            raise MissingToken(f"the token file {token_file} is empty")
    else:
        value, source = os.environ.get("SYNAP_TOKEN", ""), "SYNAP_TOKEN"
    value = value.strip()
    if not value:
        raise MissingToken("no token: pass token=, give a token file, or set SYNAP_TOKEN")
    if any(c in value for c in "\r\n\0"):
        raise MissingToken("the token contains a line break or NUL character")
    return value, source


class Identity(Struct, frozen=True, kw_only=True):
    """Who a token acts as: its portal and (where the API says) its user. Never the token."""

    portal_id: str
    portal_name: str = ""
    user_id: str = ""
    user_name: str = ""
    user_email: str = ""

    def describe(self) -> str:
        """``Ada Admin <ada@x.org> (id u1) on portal Sandbox (id p1)``."""
        who = ""
        if self.user_id:
            name = self.user_name or self.user_email or self.user_id
            mail = f" <{self.user_email}>" if self.user_email and self.user_name else ""
            who = f"{name}{mail} (id {self.user_id}) on "
        portal = self.portal_name or self.portal_id
        return f"{who}portal {portal} (id {self.portal_id})"
