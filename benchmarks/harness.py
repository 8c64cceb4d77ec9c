"""The machinery of ``python -m benchmarks``: servers, child processes, counters, medians.

Every variant runs in its own interpreter (``python -m benchmarks.peers.<name> '<config>'``);
the parent reaps it with ``os.wait4`` and so reads the child's own rusage: CPU (user + system)
and peak RSS. The servers are standalone processes too (``python -m synap_bulk sandbox``, and
for the blind limiter ``python -m benchmarks.blind_limiter`` in front of one); their CPU over
the child's run comes from ``/proc/<pid>/stat``, their counters from ``/_sandbox/stats``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common, nginx_limiter

ROOT = common.ROOT

TOKEN = common.TOKEN
#: Set (to anything) to use benchmarks/blind_limiter.py even where nginx is installed.
NO_NGINX = "BENCH_NO_NGINX"


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a running process has used (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_json(url: str, token: str | None = TOKEN, method: str = "GET") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (nginx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass
class Server:
    """The processes serving one run: the sandbox, and maybe a limiter in front of it."""

    url: str  # what the client talks to (…/v3)
    sandbox_url: str
    token: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    limiter_url: str | None = None
    nginx: Any = None  # a benchmarks.nginx_limiter.Nginx when nginx is the blind limiter
    limiter: str = ""  # which blind limiter: "nginx limit_req" or "blind_limiter.py"

    def cpu_s(self) -> float:
        pids = [p.pid for p in self.procs]
        if self.nginx is not None:
            pids += [self.nginx.proc.pid, *children(self.nginx.proc.pid)]
        return sum(proc_cpu_s(pid) for pid in pids)

    def reset(self) -> None:
        """Fresh seed, zero counters, full buckets (``POST /_sandbox/reset``), before a run."""
        root = self.sandbox_url.rsplit("/v3", 1)[0]
        get_json(f"{root}/_sandbox/reset", self.token, method="POST")
        if self.nginx is not None:
            self.nginx.reset()
        elif self.limiter_url is not None:
            get_json(self.limiter_url.rsplit("/v3", 1)[0] + "/_limiter/reset", None, "POST")

    def stats(self) -> dict[str, Any]:
        root = self.sandbox_url.rsplit("/v3", 1)[0]
        doc: dict[str, Any] = get_json(f"{root}/_sandbox/stats", self.token)
        if self.nginx is not None:
            doc = {**doc, **self.nginx.stats()}
        elif self.limiter_url is not None:
            lim = get_json(self.limiter_url.rsplit("/v3", 1)[0] + "/_limiter/stats", None)
            doc = {**doc, "requests": lim["requests"], "throttled": lim["throttled"]}
        return doc


def _start_limiter(upstream: str, rate: float, burst: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "benchmarks.blind_limiter", "--upstream", upstream]
    cmd += ["--rate", str(rate), "--burst", str(burst)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        proc.wait()
        raise SystemExit(f"the blind limiter did not start ({line!r})")
    return proc, line.split("listening on ", 1)[1].strip()


@contextlib.contextmanager
def server(
    args: list[str], token: str = TOKEN, blind: tuple[float, float] | None = None
) -> Iterator[Server]:
    """A standalone sandbox with ``args`` (plus a blind limiter of (rate, burst) in front)."""
    proc, url = common.start_sandbox(*args, token=token)
    srv = Server(url=url, sandbox_url=url, token=token, procs=[proc])
    try:
        if blind is not None and nginx_limiter.available() and not os.environ.get(NO_NGINX):
            srv.nginx = nginx_limiter.Nginx(url.split("//", 1)[1].split("/", 1)[0], *blind)
            srv.url = srv.limiter_url = srv.nginx.url
            srv.limiter = "nginx limit_req"
        elif blind is not None:
            lim, lim_url = _start_limiter(url.rsplit("/v3", 1)[0], *blind)
            srv.procs.append(lim)
            srv.url = srv.limiter_url = lim_url
            srv.limiter = "benchmarks/blind_limiter.py"
        yield srv
    finally:
        if srv.nginx is not None:
            srv.nginx.stop()
        for p in reversed(srv.procs):
            common.stop_sandbox(p)


def run_child(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run ``cmd`` to its end; its last stdout line (JSON) plus its rusage.

    Adds ``rusage_cpu_s`` (user + system of the whole process) and ``peak_rss_mb``; a child
    that fails or overruns ``timeout`` gives ``{"error": ...}``.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        lines = out.read().strip().splitlines()
        if proc.returncode != 0 or not lines:
            why = "timeout" if elapsed >= timeout else f"exit {proc.returncode}"
            return {"error": f"{why}: {err.read()[-800:].strip()}", "process_wall_s": elapsed}
    result: dict[str, Any] = json.loads(lines[-1])
    result["rusage_cpu_s"] = ru.ru_utime + ru.ru_stime
    # The child's own VmHWM when it said it (see peers/child.py), else its rusage.
    own = result.pop("own_peak_rss_mb", None)
    result["peak_rss_mb"] = own if own is not None else ru.ru_maxrss / 1024
    result["process_wall_s"] = elapsed
    return result


def peer_cmd(module: str, cfg: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", f"benchmarks.peers.{module}", json.dumps(cfg)]


def have(package: str) -> bool:
    """Whether ``package`` can be imported here (the bench extra may be missing)."""
    import importlib.util

    return importlib.util.find_spec(package) is not None


METRICS = (
    "wall_s",
    "x_ideal",
    "cpu_s",
    "cpu_ms_per_op",
    "cpu_x_bare",
    "peak_rss_mb",
    "requests",
    "429s",
    "duplicates",
    "missing",
    "misreported",
    "in_doubt",
    "ops_per_s",
    "server_cpu_s",
    "server_cpu_share",
    "process_wall_s",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every metric over a variant's runs (errors left out)."""
    good = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": len(good), "errors": [r["error"] for r in runs if "error" in r]}
    for key in METRICS:
        values = [r[key] for r in good if r.get(key) is not None]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return out
