"""Peer: a plain ``requests`` loop, one registration after another, sleeping on Retry-After.

What a competent user writes first: one ``requests.Session`` (keep-alive), each row POSTed in
turn; on a 429 sleep what ``Retry-After`` says (1 s when it is missing or not a number) and send
again; on a 5xx or a dropped connection retry up to 5 times with 0.5 s, 1 s, 2 s ... backoff
(``urllib3.Retry`` would not retry a POST by default, so the loop does it by hand). Anything
else is a failed row. Told a rate (``config["rate"]``), it also spaces its sends 1/rate apart.
Settings: timeout 30 s, 5 retries.
"""

from __future__ import annotations

import time

import requests

from benchmarks.peers.child import RETRYABLE, body, config, headers, report, retry_after, rows


def main() -> None:
    cfg = config()
    url = f"{cfg['url']}/user-registrations"
    gap = 1.0 / cfg["rate"] if isinstance(cfg.get("rate"), (int, float)) else 0.0
    ok: list[str] = []
    failed: list[str] = []
    session = requests.Session()
    session.headers.update(headers(cfg))
    next_send = time.monotonic()
    for row in rows(cfg):
        data = body(row)
        errors = 0
        while True:
            if gap:
                now = time.monotonic()
                if now < next_send:
                    time.sleep(next_send - now)
                next_send = max(now, next_send) + gap
            try:
                resp = session.post(url, data=data, timeout=30)
            except requests.RequestException:
                status = 0
            else:
                status = resp.status_code
            if status == 429:
                time.sleep(retry_after(resp.headers.get("Retry-After")))
                continue
            if (status == 0 or status in RETRYABLE) and errors < 5:
                time.sleep(0.5 * 2**errors)
                errors += 1
                continue
            (ok if status == 201 else failed).append(row["emailAddress"])
            break
    report(cfg, ok=ok, failed=failed)


if __name__ == "__main__":
    main()
