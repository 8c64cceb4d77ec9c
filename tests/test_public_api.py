"""The package's public surface: what ``synap_bulk`` exports is what ``__all__`` says."""

from __future__ import annotations

import pytest

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


def _synap_types(hint: object) -> set[type]:
    """The synap_bulk classes named anywhere in a type hint (inside generics and unions too)."""
    import typing

    found: set[type] = set()
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and hint.__module__.startswith("synap_bulk") and origin is None:
        found.add(hint)
    if (
        origin is not None
        and isinstance(origin, type)
        and origin.__module__.startswith("synap_bulk")
    ):
        found.add(origin)
    for arg in typing.get_args(hint):
        found |= _synap_types(arg)
    return found


def test_every_type_a_client_call_takes_or_returns_comes_from_the_root() -> None:
    """Each class in the signature of a public SynapClient method (its overloads included) is
    exported from the package root under its own name, so no caller imports a submodule."""
    import inspect
    import typing

    from synap_bulk import SynapClient

    named: set[type] = set()
    for name, member in inspect.getmembers(SynapClient, callable):
        if name.startswith("_") and name != "__init__":
            continue
        for fn in (member, *typing.get_overloads(member)):
            for hint in typing.get_type_hints(fn, vars(synap_bulk.client)).values():
                named |= _synap_types(hint)
    assert named, "no synap_bulk types found in the client's signatures"
    missing = sorted(
        f"{t.__module__}.{t.__qualname__}"
        for t in named
        if getattr(synap_bulk, t.__name__, None) is not t
    )
    assert missing == []


def test_resources_and_documents_come_from_the_root() -> None:
    """What a caller passes to paginate/create (resources, NewResource, the registration
    attributes, the type names) and catches (the errors) is importable from synap_bulk."""
    from synap_bulk import (
        TYPE_USER_REGISTRATION,
        ApiError,
        NewResource,
        ResourcePatch,
        User,
        UserRegistrationAttributes,
        jsonapi,
        resources,
    )

    assert User is resources.User and NewResource is jsonapi.NewResource
    assert ResourcePatch is jsonapi.ResourcePatch and ApiError.__module__ == "synap_bulk.errors"
    assert UserRegistrationAttributes is resources.UserRegistrationAttributes
    assert TYPE_USER_REGISTRATION == "UserRegistration"


async def test_paginate_takes_the_type_second_with_keyword_defaults() -> None:
    """client.paginate("users", User) works with nothing else said; params, page_size and
    parallel are keywords, and the older positional (path, params, tp) form still works."""
    from synap_bulk import SynapClient, User
    from synap_bulk.sandbox import Sandbox, SandboxConfig

    sb = Sandbox(SandboxConfig(seed=1, users=9, groups=1, exams=0))
    async with sb, SynapClient(sb.url, token=sb.token) as client:
        plain = [u.id async for u in client.paginate("users", User)]
        sized = [u.id async for u in client.paginate("users", User, page_size=2, parallel=3)]
        older = [u.id async for u in client.paginate("users", None, User, 4)]
        paged = [len(p.data) async for _, p in client.pages("users", User, page_size=5)]
        with pytest.raises(TypeError):
            client.paginate("users")  # type: ignore[call-overload]
    assert len(plain) >= 9 and sized == plain and older == plain
    assert sum(paged) == len(plain) and paged[0] == 5
