"""``Sandbox``: the app on a real 127.0.0.1 socket, in-process (tests) or standalone (CLI)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from .app import SandboxApp, State
from .behaviour import SandboxStats
from .config import SandboxConfig, apply_changes
from .store import Store

__all__ = ["Sandbox"]


class Sandbox:
    """A seeded Synap simulator listening on ``config.host`` (an ephemeral port by default).

    ``clock`` (monotonic seconds) drives the rate limit, ``wall`` (epoch seconds) the timestamps
    and ``sleep`` the injected latency, so tests can move time and record delays without waiting.

    With ``config.state`` the data is loaded from that file (when it exists) as the sandbox is
    constructed, every answered write is journaled to it, and :meth:`stop` compacts it; a bad
    state file raises :class:`~synap_bulk.sandbox.persist.SandboxStateError` here.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._state = State(config or SandboxConfig(), clock, wall, sleep)
        self._app = SandboxApp(self._state)
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the socket and start serving; ``url`` is valid afterwards."""
        cfg = self._state.config
        state_file = self._state.store.state_file
        if state_file is not None:
            state_file.open()  # again, after a stop()
        # A short shutdown: in-flight handlers (maybe asleep in injected latency) get 2 s.
        runner = web.AppRunner(
            self._app.build(), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, backlog=1024, reuse_address=True)
        await site.start()
        self._runner = runner
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = int(sockets[0].getsockname()[1]) if sockets else cfg.port
        self._state.root = f"http://{cfg.host}:{self._port}"

    async def stop(self) -> None:
        """Stop serving; with a state file, fold its journal into a new snapshot and release it
        (a later :meth:`start` takes it up again)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._state.store.close()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ inspection and control

    @property
    def root(self) -> str:
        """``http://127.0.0.1:<port>`` (the control routes live under it)."""
        return self._state.root

    @property
    def url(self) -> str:
        """The client's base URL: ``http://127.0.0.1:<port>/v3``."""
        return self._state.root + "/v3"

    @property
    def port(self) -> int:
        return self._port

    @property
    def token(self) -> str:
        """The valid personal access token (never print it)."""
        return self._state.config.token

    @property
    def config(self) -> SandboxConfig:
        return self._state.config

    @property
    def store(self) -> Store:
        """The live in-memory data, for assertions (``sb.store.user_by_email(...)``)."""
        return self._state.store

    def statistics(self) -> SandboxStats:
        """What the sandbox saw so far (the same figures as ``GET /_sandbox/stats``)."""
        return self._state.counters.snapshot(self._state.store.counts())

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change behaviour at run time, exactly like ``PATCH /_sandbox/config``.

        Shape fields (seed, users, ...) take effect at the next :meth:`reset`.
        """
        new = apply_changes(self._state.config, changes)
        self._state.set_config(new)
        return new

    def reset(self) -> None:
        """Reseed the store from the current config and zero every counter and bucket."""
        self._state.reset()
