"""The package's public surface: what ``synap_bulk`` exports is what ``__all__`` says."""

from __future__ import annotations

import synap_bulk


def test_all_names_exist_and_nothing_public_is_missing() -> None:
    """Every name in __all__ resolves, and every public re-export is listed in __all__."""
    for name in synap_bulk.__all__:
        assert hasattr(synap_bulk, name), name
    public = {
        n
        for n, v in vars(synap_bulk).items()
        if not n.startswith("_") and not isinstance(v, type(synap_bulk))
    }
    assert public - {"annotations"} == set(synap_bulk.__all__) - {"__version__"}


def test_client_and_errors_come_from_the_root() -> None:
    """The documented entry points are importable from the package root."""
    from synap_bulk import ApiError, SynapBulkError, SynapClient, load_job

    assert issubclass(ApiError, SynapBulkError)
    assert callable(load_job)
    assert SynapClient.__module__ == "synap_bulk.client"


def test_url_and_token_errors_are_in_the_tree_and_still_value_errors() -> None:
    """InsecureURL and MissingToken come from the root and errors.py, are still ValueErrors,
    and the names client.py always exported are the same classes."""
    from synap_bulk import InsecureURL, MissingToken, SynapBulkError, client, errors

    for cls in (InsecureURL, MissingToken):
        assert issubclass(cls, SynapBulkError) and issubclass(cls, ValueError)
        assert cls.__module__ == "synap_bulk.errors"
    assert (client.InsecureURL, client.MissingToken) == (errors.InsecureURL, errors.MissingToken)
