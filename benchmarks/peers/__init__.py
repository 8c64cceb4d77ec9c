"""The variants ``python -m benchmarks`` runs, each in its own process.

Every module here is a child: ``python -m benchmarks.peers.<name> '<json config>'``. It does the
work the config describes against the server at ``config["url"]``, then prints one JSON line
(:func:`benchmarks.peers.child.report`). The peers are written as a competent user would write
them with each tool, with its best reasonable settings documented at the top of its file; none
of them knows anything about the sandbox beyond what the real API documents.
"""
