"""The sandbox's handlers for portals, users, registrations, user groups and group memberships,
as a mixin of :class:`~synap_bulk.sandbox.app.SandboxApp` (which routes to them)."""

from __future__ import annotations

import re
from typing import Any

from ..jsonapi import ErrorObject
from ..resources import TYPE_USER, TYPE_USER_GROUP, TYPE_USER_REGISTRATION
from .collections import _updated_since
from .store import GroupRec, UserRec, iso
from .wire import (
    _P,
    ApiFailure,
    Ctx,
    Out,
    RouteHost,
    _doc,
    _encoder,
    _invalid,
    _linkage_list,
    _required,
    _resource_in,
    _self_or_staff,
    _sorted,
    _taken,
    err,
    fail,
    not_found,
)

__all__ = ["PeopleRoutes"]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class PeopleRoutes(RouteHost):
    """/v3 portals, users, user-registrations, user-groups and their members."""

    # ------------------------------------------------------------------ portals

    def portal_current(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self.state.store.portal.render()))

    def portal_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        portal = self.state.store.portal
        if m["id"] != portal.id:
            raise not_found("Portal", m["id"])
        return Out(200, _doc(portal.render()))

    # ------------------------------------------------------------------ users

    def _user(self, id_: str) -> UserRec:
        user = self.state.store.users.get(id_)
        if user is None:
            raise not_found("User", id_)
        return user

    def users_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        store = self.state.store
        q = ctx.request.query
        items: list[UserRec] | None = None
        email = q.get(_P.filter_email)
        if email is not None:
            u = store.user_by_email(email.strip())
            items = [u] if u else []
        ext = q.get(_P.filter_external_id)
        if ext is not None:
            u = store.user_by_external_id(ext)
            items = [x for x in (items if items is not None else [u] if u else []) if x is u]
        gid = q.get(_P.filter_user_group)
        if gid is not None:
            g = store.groups.get(gid)
            if items is None:
                items = [store.users[i] for i in g.members if i in store.users] if g else []
            else:
                items = [x for x in items if g is not None and x.id in g.members]
        if items is None:
            items = store.user_list()
        since = q.get(_P.filter_updated_since)
        if since is not None:
            items = _updated_since(items, since)
        items = _sorted(
            items,
            q,
            {
                "id": lambda u: u.id,
                "createdAt": lambda u: u.created_at,
                "updatedAt": lambda u: u.updated_at,
                "name": lambda u: u.name,
                "emailAddress": lambda u: u.email.lower(),
                "externalId": lambda u: u.external_id,
            },
        )
        allowed = (
            _P.filter_email,
            _P.filter_external_id,
            _P.filter_user_group,
            _P.filter_updated_since,
        )
        return self._page(ctx.request, items, UserRec.render, allowed)

    def user_me(self, ctx: Ctx, m: dict[str, str]) -> Out:
        """The acting user: the token's (the admin), or the Subject-User's."""
        return Out(200, _doc(ctx.actor.render()))

    def user_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        _self_or_staff(ctx, m["id"])
        return Out(200, _doc(self._user(m["id"]).render()))

    def user_update(self, ctx: Ctx, m: dict[str, str]) -> Out:
        _self_or_staff(ctx, m["id"])
        store = self.state.store
        user = self._user(m["id"])
        data = _resource_in(ctx.body, TYPE_USER, id_=user.id)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors: list[ErrorObject] = []
        ptr = "/data/attributes/"
        read_only = {
            "createdAt",
            "updatedAt",
            "lastSeen",
            "emailVerified",
            "firstName",
            "lastName",
            "userGroupsMetadata",
            "authData",
        }
        writable = {
            "name",
            "emailAddress",
            "externalId",
            "timeZone",
            "locale",
            "attr",
            "preferences",
            "marketingEmailsConsent",
            "profilePicture",
            "notificationConfig",
        }
        for key in attrs:
            if key in read_only:
                errors.append(
                    err(
                        400,
                        "Bad Request",
                        f"{key} is read-only",
                        code="read_only",
                        pointer=ptr + key,
                    )
                )
            elif key not in writable:
                errors.append(
                    err(
                        400,
                        "Bad Request",
                        f"unknown attribute {key}",
                        code="unknown_attribute",
                        pointer=ptr + key,
                    )
                )
        name = attrs.get("name", user.name)
        if not isinstance(name, str) or not name.strip():
            errors.append(_invalid(ptr + "name", "name must be a non-empty string"))
        email = attrs.get("emailAddress", user.email)
        if not isinstance(email, str) or not _EMAIL.match(email):
            errors.append(_invalid(ptr + "emailAddress", "not an email address"))
        elif store.by_email.get(email.lower(), user.id) != user.id:
            errors.append(_taken(ptr + "emailAddress", "email address"))
        ext = attrs.get("externalId", user.external_id)
        if ext is not None and (not isinstance(ext, str) or not ext):
            errors.append(_invalid(ptr + "externalId", "externalId must be a string or null"))
        elif ext is not None and store.by_external_id.get(ext, user.id) != user.id:
            errors.append(_taken(ptr + "externalId", "externalId"))
        for key in ("timeZone", "locale"):
            if attrs.get(key) is not None and not isinstance(attrs[key], str):
                errors.append(_invalid(ptr + key, f"{key} must be a string or null"))
        for key in ("attr", "preferences"):
            if attrs.get(key) is not None and not isinstance(attrs[key], dict):
                errors.append(_invalid(ptr + key, f"{key} must be an object or null"))
        if errors:
            raise ApiFailure(400, errors)
        assert isinstance(name, str) and isinstance(email, str)
        user.name = name
        store.update_user_keys(user, email, ext)
        if "timeZone" in attrs:
            user.time_zone = attrs["timeZone"]
        if "locale" in attrs:
            user.locale = attrs["locale"]
        if "attr" in attrs:
            user.attr = attrs["attr"] or {}
        if "preferences" in attrs:
            user.preferences = attrs["preferences"] or {}
        user.updated_at = max(self.state.wall(), user.updated_at)
        user.raw = None
        store.changed(user)
        return Out(200, _doc(user.render()))

    def user_delete(self, ctx: Ctx, m: dict[str, str]) -> Out:
        user = self._user(m["id"])
        self.state.store.delete_user(user)
        return Out(204, None)

    def registration_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        store = self.state.store
        counters = self.state.counters
        data = _resource_in(ctx.body, TYPE_USER_REGISTRATION)
        attrs: dict[str, Any] = data.get("attributes", {})
        rels: dict[str, Any] = data.get("relationships", {})
        ptr = "/data/attributes/"
        errors: list[ErrorObject] = []
        name = attrs.get("name")
        if name is None:
            errors.append(_required(ptr + "name", "name"))
        elif not isinstance(name, str) or not name.strip():
            errors.append(_invalid(ptr + "name", "name must be a non-empty string"))
        email = attrs.get("emailAddress")
        duplicate = False
        if email is None:
            errors.append(_required(ptr + "emailAddress", "emailAddress"))
        elif not isinstance(email, str) or not _EMAIL.match(email):
            errors.append(_invalid(ptr + "emailAddress", "not an email address"))
        elif email.lower() in store.by_email:
            errors.append(_taken(ptr + "emailAddress", "email address"))
            duplicate = True
        password = attrs.get("password")
        if password is not None and (not isinstance(password, str) or len(password) < 8):
            errors.append(
                err(
                    400,
                    "Bad Request",
                    "password must be at least 8 characters",
                    code="too_short",
                    pointer=ptr + "password",
                )
            )
        ext = attrs.get("externalId")
        if ext is not None:
            if not isinstance(ext, str) or not ext:
                errors.append(_invalid(ptr + "externalId", "externalId must be a non-empty string"))
            elif ext in store.by_external_id:
                errors.append(_taken(ptr + "externalId", "externalId"))
                duplicate = True
        for key in ("locale", "timeZone"):
            if key in attrs and not isinstance(attrs[key], str):
                errors.append(_invalid(ptr + key, f"{key} must be a string"))
        for key in ("attr", "preferences", "registrationSource"):
            if key in attrs and not isinstance(attrs[key], dict):
                errors.append(_invalid(ptr + key, f"{key} must be an object"))
        if "welcomeEmailDisabled" in attrs and not isinstance(attrs["welcomeEmailDisabled"], bool):
            errors.append(_invalid(ptr + "welcomeEmailDisabled", "must be a boolean"))
        group_id: str | None = None
        ug = rels.get("userGroups")
        if ug is not None:
            gdata = ug.get("data") if isinstance(ug, dict) else None
            gptr = "/data/relationships/userGroups/data"
            if not isinstance(gdata, list):
                errors.append(_invalid(gptr, "userGroups takes a list of UserGroup identifiers"))
            elif len(gdata) > _P.registration_max_groups:
                errors.append(
                    err(
                        400,
                        "Bad Request",
                        "only one user group is allowed at registration; add more later",
                        code="too_many_groups",
                        pointer=gptr,
                    )
                )
            elif gdata:
                item = gdata[0]
                if not isinstance(item, dict) or item.get("type") != TYPE_USER_GROUP:
                    errors.append(_invalid(gptr + "/0", "expected a UserGroup identifier"))
                elif item.get("id") not in store.groups:
                    errors.append(
                        err(
                            400,
                            "Bad Request",
                            f"user group {item.get('id')} does not exist",
                            code="not_found",
                            pointer=gptr + "/0",
                        )
                    )
                else:
                    group_id = item["id"]
        if duplicate:
            counters.duplicate_creates += 1
        if errors:
            raise ApiFailure(400, errors)
        assert isinstance(name, str) and isinstance(email, str)
        user = store.add_user(name.strip(), email, ext, group_id)
        if isinstance(attrs.get("locale"), str):
            user.locale = attrs["locale"]
        if isinstance(attrs.get("timeZone"), str):
            user.time_zone = attrs["timeZone"]
        if isinstance(attrs.get("attr"), dict):
            user.attr = attrs["attr"]
        if isinstance(attrs.get("preferences"), dict):
            user.preferences = attrs["preferences"]
        store.changed(user)
        counters.created(email.lower())
        doc = {
            "data": {
                "type": TYPE_USER_REGISTRATION,
                "id": user.id,
                "attributes": {
                    "name": user.name,
                    "emailAddress": user.email,
                    "externalId": user.external_id,
                    "locale": user.locale,
                    "timeZone": user.time_zone,
                    "createdAt": iso(user.created_at),
                },
                "relationships": {
                    "user": {"data": {"type": TYPE_USER, "id": user.id}},
                    "userGroups": {
                        "data": [{"type": TYPE_USER_GROUP, "id": g} for g in user.groups]
                    },
                },
            }
        }
        location = f"{self.state.root}/v3/{_P.users_path}/{user.id}"
        return Out(201, _encoder.encode(doc), {"Location": location})

    # ------------------------------------------------------------------ user groups

    def _group(self, id_: str) -> GroupRec:
        group = self.state.store.groups.get(id_)
        if group is None:
            raise not_found("UserGroup", id_)
        return group

    def groups_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        q = ctx.request.query
        items = self.state.store.group_list()
        name = q.get(_P.filter_group_name)
        if name is not None:
            items = [g for g in items if g.name == name]
        items = _sorted(
            items,
            q,
            {"id": lambda g: g.id, "name": lambda g: g.name, "createdAt": lambda g: g.created_at},
        )
        return self._page(ctx.request, items, GroupRec.render, (_P.filter_group_name,))

    def group_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self._group(m["id"]).render()))

    def _group_attrs(self, attrs: dict[str, Any], *, create: bool) -> list[ErrorObject]:
        ptr = "/data/attributes/"
        errors: list[ErrorObject] = []
        if create and "name" not in attrs:
            errors.append(_required(ptr + "name", "name"))
        if "name" in attrs and (not isinstance(attrs["name"], str) or not attrs["name"].strip()):
            errors.append(_invalid(ptr + "name", "name must be a non-empty string"))
        if "description" in attrs and not isinstance(attrs["description"], str | None):
            errors.append(_invalid(ptr + "description", "description must be a string"))
        if "attr" in attrs and not isinstance(attrs["attr"], dict | None):
            errors.append(_invalid(ptr + "attr", "attr must be an object"))
        if "isArchived" in attrs and not isinstance(attrs["isArchived"], bool):
            errors.append(_invalid(ptr + "isArchived", "isArchived must be a boolean"))
        for key in ("isDefaultGroup", "defaultGroupType", "totalUsers", "parentId", "internal"):
            if key in attrs:
                errors.append(
                    err(
                        400,
                        "Bad Request",
                        f"{key} is read-only",
                        code="read_only",
                        pointer=ptr + key,
                    )
                )
        return errors

    def group_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_USER_GROUP)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors = self._group_attrs(attrs, create=True)
        if errors:
            raise ApiFailure(400, errors)
        group = self.state.store.add_group(
            attrs["name"].strip(), attrs.get("description") or "", attrs.get("attr") or {}
        )
        self.state.counters.created(f"{TYPE_USER_GROUP}:{group.name}")
        location = f"{self.state.root}/v3/{_P.user_groups_path}/{group.id}"
        return Out(201, _doc(group.render()), {"Location": location})

    def group_update(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        data = _resource_in(ctx.body, TYPE_USER_GROUP, id_=group.id)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors = self._group_attrs(attrs, create=False)
        if errors:
            raise ApiFailure(400, errors)
        if "name" in attrs:
            group.name = attrs["name"].strip()
        if "description" in attrs:
            group.description = attrs["description"] or ""
        if "attr" in attrs:
            group.attr = attrs["attr"] or {}
        if "isArchived" in attrs:
            group.is_archived = attrs["isArchived"]
        group.raw = None
        self.state.store.changed(group)
        return Out(200, _doc(group.render()))

    def group_delete(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        if group.default_type is not None:
            raise fail(403, "Forbidden", "a default group cannot be deleted", code="default_group")
        self.state.store.delete_group(group)
        return Out(204, None)

    def _member_ids(self, ctx: Ctx) -> list[str]:
        ids = _linkage_list(ctx.body, TYPE_USER)
        users = self.state.store.users
        missing = [
            err(
                404,
                "Not Found",
                f"User {uid} does not exist",
                code="not_found",
                pointer=f"/data/{i}",
            )
            for i, uid in enumerate(ids)
            if uid not in users
        ]
        if missing:
            raise ApiFailure(404, missing)
        return ids

    def members_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        body = _encoder.encode(
            {
                "data": [{"type": TYPE_USER, "id": uid} for uid in group.members],
                "meta": {"total": len(group.members)},
            }
        )
        return Out(200, body)

    def members_add(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        self.state.store.add_members(group, self._member_ids(ctx))
        return Out(204, None)

    def members_remove(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        self.state.store.remove_members(group, self._member_ids(ctx))
        return Out(204, None)

    def members_replace(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        ids = self._member_ids(ctx)
        store = self.state.store
        keep = set(ids)
        store.remove_members(group, [u for u in group.members if u not in keep])
        store.add_members(group, ids)
        return Out(204, None)
