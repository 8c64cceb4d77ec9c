"""nginx ``limit_req`` in front of the sandbox, when nginx is installed (else the harness uses
``benchmarks/blind_limiter.py``, which does the same arithmetic in Python).

The config is the one an operator would write: one zone for everyone, ``rate=100r/s``,
``limit_req ... burst=10 nodelay``, ``limit_req_status 429``, so a throttled request gets
nginx's own HTML error page, no ``Retry-After``, no rate-limit headers. Control routes
(``/_sandbox/...``) are proxied unlimited. nginx runs in the foreground (``daemon off``) as the
harness's child, with its files in a temporary folder; its counters come from its access log
(one status per line).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CONF = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format status_only '$status';
    access_log {dir}/access.log status_only;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    limit_req_zone $server_name zone=bench:1m rate={rate}r/s;
    upstream sandbox {{ server {upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        server_name bench;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        location /v3/ {{
            limit_req zone=bench burst={burst} nodelay;
            limit_req_status 429;
            proxy_pass http://sandbox;
        }}
        location / {{
            access_log off;
            proxy_pass http://sandbox;
        }}
    }}
}}
"""


def available() -> str | None:
    return shutil.which("nginx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Nginx:
    """A foreground nginx proxying to ``upstream`` (host:port) with a limit_req zone."""

    def __init__(self, upstream: str, rate: float, burst: float) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.port = _free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(
            CONF.format(
                dir=self.dir, rate=int(rate), burst=int(burst), upstream=upstream, port=self.port
            )
        )
        binary = available() or "nginx"
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.dir), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/v3"
        self._offset = 0
        deadline = time.monotonic() + 10
        while True:  # ready when it proxies a control route
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_sandbox/config", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # an answer from the sandbox (401 without a token): nginx is up
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"nginx did not start; see {self.dir}/error.log") from None
                time.sleep(0.05)

    def _statuses(self) -> list[str]:
        log = self.dir / "access.log"
        return log.read_text().split()[self._offset :] if log.exists() else []

    def stats(self) -> dict[str, int]:
        lines = self._statuses()
        return {"requests": len(lines), "throttled": sum(s == "429" for s in lines)}

    def reset(self) -> None:
        """Counters from here on; the zone drains within burst / rate seconds by itself."""
        self._offset += len(self._statuses())
        time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
