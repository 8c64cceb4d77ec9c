"""The benchmarks: ``python -m benchmarks`` (the harness, beside the peers) and the older
single-purpose scripts (``python benchmarks/<name>.py``)."""
