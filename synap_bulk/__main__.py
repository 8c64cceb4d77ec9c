"""``python -m synap_bulk``: the command line."""

from .cli import main

raise SystemExit(main())
