"""Peer for exports: dlt's ``rest_api`` source into dlt's ``filesystem`` destination.

How dlt's docs say to pull a paginated REST API into files: a ``rest_api_source`` with bearer
auth and a ``json_link`` paginator following JSON:API's ``links.next``, the records under
``data``, loaded by a pipeline into a local ``filesystem`` bucket as ``jsonl`` (the NDJSON
runs) or ``csv``. Best reasonable settings: ``page[size]=500`` (the server's maximum), the
server's default order (creation order: stable pages without asking the server to sort),
``max_table_nesting=0`` (one table; nested objects kept as JSON instead of child tables, the
closest to one line per attempt), file compression off, telemetry off. dlt follows ``next``
links, so its pages are fetched one after another (no pages in flight).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("DATA_WRITER__DISABLE_COMPRESSION", "true")

import dlt
from dlt.sources.rest_api import rest_api_source

from benchmarks.peers.child import config, report


def main() -> None:
    cfg = config()
    work = Path(cfg["work"])
    source = rest_api_source(
        {
            "client": {
                "base_url": cfg["url"].rstrip("/") + "/",
                "auth": {"type": "bearer", "token": cfg["token"]},
                "paginator": {"type": "json_link", "next_url_path": "links.next"},
            },
            "resources": [
                {
                    "name": "attempts",
                    "endpoint": {
                        "path": "attempts",
                        "params": {"page[size]": 500},
                        "data_selector": "data",
                    },
                }
            ],
        },
        max_table_nesting=0,
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_export",
        destination=dlt.destinations.filesystem(bucket_url=str(work / "out")),
        dataset_name="synap",
        pipelines_dir=str(work / "pipelines"),
    )
    fmt = "jsonl" if cfg["format"] == "ndjson" else "csv"
    info = pipeline.run(source, loader_file_format=fmt)
    files = sorted((work / "out" / "synap" / "attempts").glob(f"*.{fmt}"))
    report(cfg, files=[str(f) for f in files], loads=len(info.loads_ids))


if __name__ == "__main__":
    main()
