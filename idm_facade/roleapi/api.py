"""Role lookup over HTTP: "which roles does this account hold, and why".

Identity providers and IT systems ask this at login. Everything is answered from the current
directory snapshot (one snapshot per request), in our own JSON shape and in the shapes
OS2rollekatalog integrations already consume (docs/role-api.md lists every endpoint):

- ``GET /api/roles/{username}[?system=ID]``: the account, its job-function roles and system
  roles grouped per IT system, each role with its provenance and validity;
- OS2rollekatalog's ``UserApi`` and ``ItSystemApi`` (here): ``/api/user/{userId}/roles``
  (nameID, the base64 OIOBPP privilege list with computed constraint values, roleMap),
  ``rolesAsList``, ``nameid``, ``hasUserRole`` and ``hasSystemRole`` (200 "Found role" /
  404 "Did not find role"), ``/api/itsystem/all`` and ``/{id}/users``;
- its ``ReadOnlyApi`` (:mod:`readonly`) and organisation read (:mod:`organisation`).

``system`` matches an IT system's key, id or type (``system=KOMBIT`` selects every KOMBIT
system) case-insensitively and may repeat; one that matches nothing is 404, as in
OS2rollekatalog. Access-blocked systems are left out of every lookup. Clients authenticate
with a bearer token (``Authorization: Bearer ...``, or OS2rollekatalog's ``ApiKey``
header); the account must be visible under the client's policy, otherwise it is reported
unknown (404), like an account that does not exist. Every request writes exactly one
access-log record before the response leaves; if the log cannot be written the request fails
with 500 and discloses nothing.

Per-snapshot look-ups (role and system catalogues, per-account views, holders per system)
are cached on the snapshot object, so a lookup is a few dictionary reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Blueprint, request
from werkzeug.wrappers import Request, Response

from idm_facade import metrics
from idm_facade.access.audit.record import CLIENT_KEY, REQUEST_ID_KEY
from idm_facade.access.audit.record import source as audit_source
from idm_facade.access.audit.turnlog import HOLD_KEY
from idm_facade.access.clients import bearer_token
from idm_facade.access.facade import Facade
from idm_facade.directory import filters as f
from idm_facade.directory.entries import Entry
from idm_facade.directory.policy import ACCOUNTS_ONLY, Policy
from idm_facade.directory.snapshot import CacheKey
from idm_facade.directory.view import ClientView
from idm_facade.roleapi import oiobpp
from schemas.attributes import ROLE

log = logging.getLogger(__name__)
_VIEW_KEY: CacheKey[RoleView] = CacheKey("roleapi.view")
_ACCOUNT_CACHE = 100_000
MAX_COUNT = 1000
DEFAULT_COUNT = 100


class ApiError(Exception):
    """A request that ends in a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


# --------------------------------------------------------------------------- per snapshot


class RoleView:
    """Catalogue look-ups derived from one snapshot, and per-account answers cached per
    policy (kept with the snapshot the client reads)."""

    def __init__(self, view: ClientView) -> None:
        self.data = view.catalogue
        data = self.data
        self.systems_by_key = {s.user_key: s for s in data.it_systems.values()}
        self.system_roles_of: dict[str, list[Any]] = {}
        for role_id in data.job_roles:
            rows = []
            for link in data.job_role_system_roles.get(role_id, ()):
                system_role = data.system_roles.get(link.system_role_id)
                if system_role is not None and system_role not in rows:
                    rows.append(system_role)
            self.system_roles_of[role_id] = rows
        self.organisation = data.organisation
        #: OS2rollekatalog's access-blocked systems: their roles are never handed out.
        self.blocked = {s.user_key for s in data.it_systems.values() if s.access_blocked}
        #: Numeric ids (OS2rollekatalog's ``long`` ids) of roles, role groups and systems.
        self.numbered: dict[int, Any] = {}
        for table in (data.job_roles, data.role_groups, data.it_systems):
            for row in table.values():
                self.numbered[number(row.id)] = row
        self._open = sorted((s for s in data.it_systems.values() if not s.access_blocked),
                            key=lambda s: (s.user_key, s.id))
        self._matching: dict[tuple[str, ...], frozenset[str]] = {}
        self._open_for: dict[frozenset[str] | None, list[Any]] = {}
        self._lock = threading.Lock()
        self._accounts: OrderedDict = OrderedDict()
        self._holders: dict[tuple[str, Policy], list[Any]] = {}

    def systems_matching(self, wanted: list[str]) -> set[str] | None:
        """Keys of the IT systems a ``system=`` filter selects (None = no filter); a filter
        that selects none is 404, as in OS2rollekatalog."""
        wanted = [w for w in wanted if w]
        if not wanted:
            return None
        key = tuple(wanted)
        found = self._matching.get(key)
        if found is None:
            folded = {w.casefold() for w in wanted}
            found = frozenset(s.user_key for s in self.data.it_systems.values()
                              if s.user_key.casefold() in folded or s.id.casefold() in folded
                              or (s.system_type or "").casefold() in folded)
            if len(self._matching) < 1000:  # bounded: the keys come from requests
                self._matching[key] = found
        if not found:
            raise ApiError(404, f"unknown IT system: {', '.join(wanted)}")
        return set(found)

    def open_systems(self, keys: set[str] | None) -> list[Any]:
        """The selected IT systems (None: all) that are not access-blocked, in key order
        (kept per selection: a login lookup asks for the same few systems every time)."""
        key = frozenset(keys) if keys is not None else None
        found = self._open_for.get(key)
        if found is None:
            found = [s for s in self._open if keys is None or s.user_key in keys]
            if len(self._open_for) < 1000:  # bounded: the selections come from requests
                self._open_for[key] = found
        return found

    def role_ids(self, view: ClientView, entry: Entry) -> list[str]:
        """Distinct job-role ids the account holds, in grant order, as the client sees."""
        key = (entry.id, entry.version, view.policy)
        with self._lock:
            cached = self._accounts.get(key)
        if cached is not None:
            return cached
        elements = view.complex(entry, "roles")
        result = list(dict.fromkeys(e["value"] for e in elements))
        with self._lock:
            self._accounts[key] = result
            if len(self._accounts) > _ACCOUNT_CACHE:
                self._accounts.popitem(last=False)
        return result

    def holders(self, view: ClientView, system_key: str) -> list[Any]:
        """Accounts (id order) holding a role in the system, as the client sees them: a
        client that may not read ``role`` finds no holder, as with ``roles pr``."""
        key = (system_key, view.policy)
        with self._lock:
            cached = self._holders.get(key)
        if cached is not None:
            return cached
        roles = sorted(r.id for r in self.data.job_roles.values()
                       if self.data.it_systems.get(r.it_system_id) is not None
                       and self.data.it_systems[r.it_system_id].user_key == system_key)
        result = view.search(f.any_of([f.Eq("role", r) for r in roles]),
                             kinds=ACCOUNTS_ONLY) if roles else []
        with self._lock:
            self._holders[key] = result
        return result


def number(ident: str) -> int:
    """The numeric id shown where OS2rollekatalog has a ``long`` id (user roles, role groups,
    IT systems): 52 bits of a hash of the facade's id, so it is the same in every process and
    every run, fits a Java ``long`` and a JavaScript number, and needs no state."""
    return int(hashlib.sha1(ident.encode("utf-8")).hexdigest()[:13], 16)


def find_row(table: dict[str, Any], roles: RoleView, ref: str, *, identifier: bool = True
             ) -> Any:
    """A catalogue row by OS2rollekatalog's numeric id, the facade's id or (unless
    ``identifier`` is false) its identifier; None when nothing matches."""
    if ref.isdigit():
        row = roles.numbered.get(int(ref))
        if row is not None and table.get(row.id) is row:
            return row
    row = table.get(ref)
    if row is None and identifier:
        row = next((r for r in table.values()
                    if (getattr(r, "identifier", None) or getattr(r, "user_key", None)) == ref),
                   None)
    return row


def role_view(view: ClientView) -> RoleView:
    """The :class:`RoleView` of the snapshot ``view`` reads, built once per snapshot."""
    return view.cached(_VIEW_KEY, lambda: RoleView(view))


# --------------------------------------------------------------------------- rendering


def find_account(view: ClientView, username: str) -> Entry:
    """The account with this userName (case-insensitive) the client may see, or else the one
    account whose external UUID it is (OS2rollekatalog's ``UserApi.getUser`` falls back the
    same way)."""
    found = view.search(f.Eq("userName", username), kinds=ACCOUNTS_ONLY)
    if not found:
        found = view.search(f.Eq("externalId", username), kinds=ACCOUNTS_ONLY)
        if len(found) != 1:
            found = []
    if not found:
        raise ApiError(404, f"unknown user: {username}")
    return found[0]


class TextAnswer:
    """A plain-text answer with its status: OS2rollekatalog's ``hasUserRole`` and
    ``hasSystemRole`` say "Found role" (200) or "Did not find role" (404), and consumers
    grant access on the status code."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text


FOUND = TextAnswer(200, "Found role")
NOT_FOUND = TextAnswer(404, "Did not find role")


def account_json(view: ClientView, entry: Entry) -> dict:
    """The account summary every response starts with."""
    return {"id": entry.id, "userName": view.first(entry, "userName"),
            "displayName": view.first(entry, "displayName"),
            "personId": view.first(entry, "personId")}


def roles_json(roles: RoleView, view: ClientView, entry: Entry, systems: set[str] | None
               ) -> dict:
    """``/api/roles/{username}``: roles grouped per IT system with provenance (access-blocked
    systems left out, as from every role lookup)."""
    data = roles.data
    by_system: dict[str, dict] = {}
    per_role: dict[str, dict] = {}
    for element in view.complex(entry, "roles"):
        role = data.job_roles.get(element["value"])
        if role is None:
            continue
        system = data.it_systems.get(role.it_system_id)
        key = str(system.user_key if system else element.get("itSystem"))
        if key in roles.blocked or (systems is not None and key not in systems):
            continue
        block = by_system.get(key)
        if block is None:
            block = by_system[key] = {"identifier": key, "name": system.name if system else key,
                                      "jobRoles": [], "systemRoles": []}
        item = per_role.get(role.id)
        if item is None:
            item = per_role[role.id] = {"id": role.id, "identifier": role.identifier,
                                        "name": role.name, "provenance": []}
            block["jobRoles"].append(item)
            for system_role in roles.system_roles_of.get(role.id, ()):
                shown = {"identifier": system_role.identifier, "name": system_role.name}
                if shown not in block["systemRoles"]:
                    block["systemRoles"].append(shown)
        unit_id = element.get("viaUnit")
        unit = data.units.get(unit_id) if unit_id else None
        group_id = element.get("viaRoleGroup")
        group = data.role_groups.get(group_id) if group_id else None
        item["provenance"].append({
            "via": element.get("via"),
            "unit": {"id": unit.id, "name": unit.name} if unit else None,
            "roleGroup": {"id": group.id, "name": group.name} if group else None,
            "validFrom": _iso(element.get("validFrom")),
            "validTo": _iso(element.get("validTo")),
        })
    return {"account": account_json(view, entry), "itSystems": list(by_system.values())}


def _filtered_roles(roles: RoleView, view: ClientView, entry: Entry,
                    systems: set[str] | None) -> list[str]:
    """The account's roles in the selected systems (None: all), leaving out the roles of
    access-blocked systems, which OS2rollekatalog never hands out (``UserApi``,
    ``UserService.generateOIOBPPPrivileges``: ``filter(its -> !its.isAccessBlocked())``)."""
    ids = roles.role_ids(view, entry)
    if systems is None and not roles.blocked:
        return ids
    data = roles.data
    kept = []
    for role_id in ids:
        role = data.job_roles.get(role_id)
        system = data.it_systems.get(role.it_system_id) if role is not None else None
        if system is None or system.user_key in roles.blocked:
            continue
        if systems is None or system.user_key in systems:
            kept.append(role_id)
    return kept


def _filtered_grants(roles: RoleView, view: ClientView, entry: Entry,
                     systems: set[str] | None) -> list[dict]:
    """The account's grants (elements of ``roles``, in grant order) of the roles
    :func:`_filtered_roles` keeps: the OIOBPP is built per grant, as OS2rollekatalog builds
    it per current assignment (postponed constraint values belong to one assignment)."""
    kept = set(_filtered_roles(roles, view, entry, systems))
    return [g for g in view.complex(entry, "roles") if g.get("value") in kept]


def by_weight(system_roles: list[Any]) -> list[Any]:
    """``SystemRoleService.filterByWeight``: per IT system, only the system roles of the
    highest weight among these (order kept), so an IT system that ranks its roles (read
    below write) is told only the strongest one the account holds."""
    highest: dict[str, int] = {}
    for row in system_roles:
        highest[row.it_system_id] = max(highest.get(row.it_system_id, row.weight), row.weight)
    return [row for row in system_roles if row.weight >= highest[row.it_system_id]]


def _name_id(roles: RoleView, view: ClientView, entry: Entry) -> str:
    """OS2rollekatalog's NameID (``C=DK,O=<cvr>,CN=<name>,Serial=<external UUID>``), from
    what the client may read of the account: a client not allowed the external id gets the
    account's id as serial, and one not allowed the names gets the user name."""
    serial = view.first(entry, "externalId") or entry.id
    name = view.first(entry, "formattedName") or view.first(entry, "displayName") \
        or view.first(entry, "userName")
    return oiobpp.name_id(getattr(roles.organisation, "cvr", None), str(name), str(serial))


def oiobpp_json(roles: RoleView, view: ClientView, entry: Entry, systems: set[str] | None
                ) -> dict:
    """``/api/user/{userId}/roles``: nameID and the base64 OIOBPP privilege list, with
    org-unit constraint values limited to the units the client may see."""
    grants = _filtered_grants(roles, view, entry, systems)
    privileges = oiobpp.privilege_groups(roles.data, entry.id, grants, view.unit_ids(),
                                         roles.open_systems(systems))
    return {"nameID": _name_id(roles, view, entry),
            "oioBPP": oiobpp.encode(oiobpp.to_xml(privileges.groups)),
            "roleMap": privileges.role_map}


def _role_map(roles: RoleView, role_ids: list[str]) -> dict[str, str]:
    """``rolesAsList``'s ``roleMap``: role identifier -> "name (IT system name)"
    (``UserApi.getUserRolesAsList``). ``/roles`` fills its own while building the OIOBPP,
    keyed by KOMBIT entity id when the roles are not expanded."""
    data = roles.data
    out: dict[str, str] = {}
    for role_id in role_ids:
        role = data.job_roles[role_id]
        system = data.it_systems.get(role.it_system_id)
        out[role.identifier] = f"{role.name} ({system.name if system else ''})"
    return out


def roles_as_list_json(roles: RoleView, view: ClientView, entry: Entry,
                       systems: set[str] | None) -> dict:
    """``/api/user/{userId}/rolesAsList``, in OS2rollekatalog's shape (``disabled`` only
    when the client may read ``active``)."""
    data = roles.data
    user_roles: list[str] = []
    role_map: dict[str, str] = {}
    system_roles: list[str] = []
    data_roles: list[str] = []
    function_roles: list[str] = []
    held = _filtered_roles(roles, view, entry, systems)
    carried: dict[str, Any] = {}
    for role_id in held:
        role = data.job_roles[role_id]
        user_roles.append(role.identifier)
        for system_role in roles.system_roles_of.get(role_id, ()):
            carried.setdefault(system_role.id, system_role)
    # UserApi.getUserRolesAsList takes SystemRoleService.getEffectiveSystemRoles: the
    # distinct system roles, filtered by weight per IT system
    for system_role in by_weight(list(carried.values())):
        if system_role.identifier in system_roles:
            continue
        system_roles.append(system_role.identifier)
        # DATA_ROLE and FUNCTION_ROLE only; BOTH (and any other type) is in systemRoles and
        # in neither of the two lists
        if system_role.role_type == "DATA_ROLE":
            data_roles.append(system_role.identifier)
        elif system_role.role_type == "FUNCTION_ROLE":
            function_roles.append(system_role.identifier)
    role_map = _role_map(roles, held)
    body: dict[str, Any] = {
        "userRoles": user_roles, "systemRoles": system_roles, "dataRoles": data_roles,
        "functionRoles": function_roles, "roleMap": role_map,
        "nameID": _name_id(roles, view, entry)}
    active = view.values(entry, "active")
    if active:
        body["disabled"] = active[0] is False
    return body


def find_system(roles: RoleView, identifier: str) -> Any:
    """The IT system ``identifier`` names: its numeric or own id, else its identifier
    (case-insensitive)."""
    found = find_row(roles.data.it_systems, roles, identifier, identifier=False)
    if found is None:
        folded = identifier.casefold()
        found = next((s for s in sorted(roles.data.it_systems.values(), key=lambda s: s.id)
                      if s.user_key.casefold() == folded), None)
    if found is None:
        raise ApiError(404, f"unknown IT system: {identifier}")
    return found


def _int_arg(req: Request, name: str, default: int, low: int) -> int:
    raw = req.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw!r}") from None
    return max(value, low)


# --------------------------------------------------------------------------- blueprint


def _token(req: Request) -> str | None:
    """The bearer token, or OS2rollekatalog's ``ApiKey`` header."""
    token = bearer_token(req.headers.get("Authorization"))
    if token:
        return token
    api_key = req.headers.get("ApiKey")
    return api_key.strip() if api_key else None


#: ``handler(view, roles, request, **path_args)`` -> (body, persons disclosed[, sensitive attributes
#: disclosed, e.g. ``["cpr"]``]).
Handler = Callable[..., tuple]

_LOG_UNAVAILABLE = {"error": "access log unavailable; nothing disclosed", "status": 500}
_LOG_UNAVAILABLE_BODY = json.dumps(_LOG_UNAVAILABLE).encode()


#: Operations whose unknown ``domain`` is 400 rather than 404 (ReadOnlyApi.getUserRoles and
#: getUserRoleGroups answer BAD_REQUEST).
DOMAIN_400 = frozenset({"read.user.roles", "read.user.rolegroups"})


def _check_domain(req: Request, directory_system: str, view: ClientView, status: int
                  ) -> None:
    """OS2rollekatalog's ``domain`` parameter (``DomainService.getDomainOrPrimary``): absent
    or empty means the primary domain, an unknown one is 404 (400 on two reads). The facade
    serves one domain, the directory IT system's accounts, named by that system's key or
    name."""
    domain = req.args.get("domain")
    if not domain:
        return
    names = {directory_system.casefold()}
    names.update(s.name.casefold() for s in view.catalogue.it_systems.values()
                 if s.user_key == directory_system)
    if domain.casefold() not in names:
        raise ApiError(status, f"unknown domain: {domain}")


def answer(facade: Facade, operation: str, handler: Handler, args: dict[str, str],
           req: Request) -> Response:
    """Authenticate, answer from one snapshot as the client sees it, record, respond: the
    path every role API request takes. ``handler(view, roles, req, **args)`` gives the body
    and the persons it discloses; no record, no answer. ``req`` is the werkzeug request, so
    the server can answer without Flask's dispatch (:mod:`idm_facade.runtime.fastlane`)."""
    from idm_facade.access.audit import AccessRecord, AuditUnavailable

    client = None
    status, body = 200, None
    subjects: list[str] = []
    sensitive: list[str] = []
    try:
        token = _token(req)
        client = facade.clients.authenticate_token(token) if token else None
        if client is None:
            metrics.AUTH_FAILURES.labels("api", "no token" if token is None
                                         else "invalid token").inc()
            raise ApiError(401, "a valid bearer token is required")
        req.environ[CLIENT_KEY] = client.name
        if ROLE not in client.policy.kinds:
            raise ApiError(403, f"client {client.name} may not read roles")
        view = ClientView.of(facade.directory.snapshot, client.policy)
        _check_domain(req, facade.directory.directory_system, view,
                      400 if operation in DOMAIN_400 else 404)
        result = handler(view, role_view(view), req, **args)
        body, subjects = result[0], result[1]
        sensitive = list(result[2]) if len(result) > 2 else []
        if isinstance(body, TextAnswer):
            status = body.status
    except ApiError as exc:
        status, body, subjects = exc.status, {"error": exc.message, "status": exc.status}, []
        sensitive = []
    except Exception:  # noqa: BLE001 - a bug must not take the answer's record with it
        log.exception("role API request failed: %s", req.full_path)
        status, body, subjects, sensitive = 500, {"error": "internal error", "status": 500}, [], []
    rec = AccessRecord(
        client=client.name if client else "-",
        source=audit_source(req.remote_addr or "", req.environ.get(REQUEST_ID_KEY)),
        operation=operation, query=req.full_path.rstrip("?"), status=str(status),
        subjects=subjects, sensitive=sensitive)
    hold = req.environ.get(HOLD_KEY)
    if hold is not None:
        # The server holds the response until the record is committed in its event loop
        # (one commit per loop turn, shared with SCIM and LDAP) and sends this error
        # instead if it cannot be (idm_facade.runtime.http).
        hold(rec, _LOG_UNAVAILABLE_BODY, b"application/json")
    else:
        try:
            facade.audit.record(rec)
        except AuditUnavailable:
            status, body = 500, _LOG_UNAVAILABLE
    if isinstance(body, TextAnswer):
        return Response(body.text, status=body.status, mimetype="text/plain")
    response = json_response(body, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="idm-facade"'
    return response


def json_response(body: Any, status: int = 200) -> Response:
    """``body`` as JSON, byte for byte as Flask's ``jsonify`` writes it outside debug mode
    (compact, ASCII, keys in insertion order, a final newline), but needing no Flask
    application context, so the event loop's fast lane can answer with it too."""
    return Response(json.dumps(body, separators=(",", ":")) + "\n", status=status,
                    mimetype="application/json")


def _per_account(render: Callable[..., Any], system_required: bool = False) -> Handler:
    """A handler giving one account's roles in one shape, for the IT systems asked for
    (``system`` is a required parameter of ``rolesAsList``: Spring answers 400 without it;
    an empty value means every system, as ``StringUtils.hasLength`` reads it)."""
    def handle(view: ClientView, roles: RoleView, req: Request, user: str
               ) -> tuple[Any, list[str]]:
        if system_required and "system" not in req.args:
            raise ApiError(400, "Required parameter 'system' is not present")
        entry = find_account(view, user)
        systems = roles.systems_matching(req.args.getlist("system"))
        return render(roles, view, entry, systems), view.subjects([entry])
    return handle


def _name_id_handler(view: ClientView, roles: RoleView, req: Request, user: str
                     ) -> tuple[Any, list[str]]:
    entry = find_account(view, user)
    return {"nameID": _name_id(roles, view, entry)}, view.subjects([entry])


def _has_user_role(view: ClientView, roles: RoleView, req: Request, user: str, role_id: str
                   ) -> tuple[Any, list[str]]:
    """200 "Found role" or 404 "Did not find role" (``UserApi.userHasUserRole``);
    ``role_id`` is the role's id or identifier, ``?system=`` narrows the systems."""
    entry = find_account(view, user)
    systems = roles.systems_matching(req.args.getlist("system"))
    data = roles.data
    role = find_row(data.job_roles, roles, role_id)
    if role is None:
        raise ApiError(404, f"unknown role: {role_id}")
    system = data.it_systems.get(role.it_system_id)
    if system is not None and system.access_blocked:
        # UserApi.userHasUserRole: "access to it-system for userRole ... is blocked" -> 400
        raise ApiError(400, f"access to the IT system of role {role_id} is blocked")
    if role.id in _filtered_roles(roles, view, entry, systems):
        return FOUND, view.subjects([entry])
    return NOT_FOUND, view.subjects([entry])


def _has_system_role(view: ClientView, roles: RoleView, req: Request, user: str
                     ) -> tuple[Any, list[str]]:
    """``?roleIdentifier=`` (required) ``&system=``: does any role the user holds carry that
    system role (``UserApi.userHasSystemRole``)."""
    wanted = req.args.get("roleIdentifier")
    if not wanted:
        raise ApiError(400, "roleIdentifier is required")
    entry = find_account(view, user)
    systems = roles.systems_matching(req.args.getlist("system"))
    for rid in _filtered_roles(roles, view, entry, systems):
        if any(sr.identifier == wanted for sr in roles.system_roles_of.get(rid, ())):
            return FOUND, view.subjects([entry])
    return NOT_FOUND, view.subjects([entry])


def _all_systems(view: ClientView, roles: RoleView, req: Request) -> tuple[Any, list[str]]:
    """``[{id, name, identifier}]`` of every IT system (ItSystemApi.getAllItSystems), ``id``
    numeric as there."""
    return [{"id": number(s.id), "name": s.name, "identifier": s.user_key}
            for s in sorted(roles.data.it_systems.values(), key=lambda s: (s.user_key, s.id))
            ], []


def _system_users(view: ClientView, roles: RoleView, req: Request, system_id: str
                  ) -> tuple[Any, list[str]]:
    """The user ids of the active accounts holding a role in the system, a bare JSON array
    (ItSystemApi.getUsersForItSystem: disabled users skipped); the system by id or
    identifier."""
    system = find_system(roles, system_id)
    holders = [e for e in roles.holders(view, system.user_key)
               if view.first(e, "active") is not False]
    return [str(view.first(e, "userName")) for e in holders], view.subjects(holders)


def _system_holders(view: ClientView, roles: RoleView, req: Request, system_id: str
                    ) -> tuple[Any, list[str]]:
    """Our paged extension of ``users``: each holder with names and the roles held."""
    system = find_system(roles, system_id)
    start = _int_arg(req, "startIndex", 1, 1)
    count = min(_int_arg(req, "count", DEFAULT_COUNT, 0), MAX_COUNT)
    holders = roles.holders(view, system.user_key)
    page = holders[start - 1:start - 1 + count]
    users = []
    for entry in page:
        item = account_json(view, entry)
        item["roles"] = [roles.data.job_roles[r].identifier
                         for r in _filtered_roles(roles, view, entry, {system.user_key})]
        users.append(item)
    body = {"itSystem": {"identifier": system.user_key, "name": system.name},
            "totalResults": len(holders), "startIndex": start, "itemsPerPage": len(users),
            "users": users}
    return body, view.subjects(page)


#: (rule under /api, operation recorded, handler): the whole API surface.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("/roles/<user>", "roles.lookup", _per_account(roles_json)),
    ("/user/<user>/roles", "roles.oiobpp", _per_account(oiobpp_json)),
    ("/user/<user>/rolesAsList", "roles.list", _per_account(roles_as_list_json, True)),
    ("/user/<user>/nameid", "roles.nameid", _name_id_handler),
    ("/user/<user>/hasUserRole/<role_id>", "roles.has", _has_user_role),
    ("/user/<user>/hasSystemRole", "roles.hasSystemRole", _has_system_role),
    ("/itsystem/all", "roles.itsystems", _all_systems),
    ("/itsystem/<system_id>/users", "roles.itsystem", _system_users),
    ("/itsystem/<system_id>/holders", "roles.itsystem", _system_holders),
)


def blueprint(facade: Facade) -> Blueprint:
    """The role API for ``facade``, to be registered at ``/api`` (GET only)."""
    from idm_facade.roleapi import organisation, readonly

    bp = Blueprint("roleapi", __name__)
    routes = ROUTES + readonly.ROUTES + organisation.ROUTES
    for index, (rule, operation, handler) in enumerate(routes):
        def view_func(operation: str = operation, handler: Handler = handler,
                      **args: str) -> Response:
            return answer(facade, operation, handler, args,
                          request._get_current_object())  # type: ignore[attr-defined]
        bp.add_url_rule(rule, f"route{index}", view_func, methods=["GET"])
    return bp
