"""The console's pages about the organisation: every hierarchy's unit tree with search, a
unit (managers, members, KLE, the roles assigned there), and a role (its holders and why)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from flask import Blueprint, request

from idm_facade.admin.accounts import Admin
from idm_facade.admin.console import Console
from idm_facade.directory import filters as f
from idm_facade.directory.policy import ACCOUNTS_ONLY
from idm_facade.directory.view import ClientView
from schemas.attributes import UNIT

#: Holders listed on a role page (the count shows them all).
HOLDERS_SHOWN = 500


def register(bp: Blueprint, console: Console) -> None:
    """Add the pages to the console's blueprint."""
    needs = console.needs

    @bp.get("/units")
    @needs("viewer")
    def units(admin: Admin) -> Any:
        """The trees (one per hierarchy), or the units whose name holds ``q``."""
        view = console.view()
        entries = view.search(f.Present("id"), kinds=frozenset({UNIT}))
        query = request.args.get("q", "").strip()
        if query:
            folded = query.casefold()
            hits = [{"id": e.id, "name": view.first(e, "displayName"),
                     "path": view.first(e, "orgUnitPath")} for e in entries
                    if folded in str(view.first(e, "displayName") or "").casefold()]
            return console.page("units.html", query=query, hits=hits, trees={})
        children: dict[str | None, list[Any]] = defaultdict(list)
        for entry in entries:
            parent = view.first(entry, "parent")
            children[str(parent) if parent else None].append(entry)
        trees: dict[str, list[dict]] = defaultdict(list)

        def node(entry: Any) -> dict:
            kids = sorted(children.get(entry.id, ()),
                          key=lambda e: str(view.first(e, "displayName")))
            return {"id": entry.id, "name": view.first(entry, "displayName"),
                    "children": [node(k) for k in kids]}

        for root in sorted(children.get(None, ()), key=lambda e: str(view.first(e, "displayName"))):
            trees[str(view.first(root, "hierarchy") or "-")].append(node(root))
        return console.page("units.html", query="", hits=[], trees=dict(trees))

    @bp.get("/unit/<unit_id>")
    @needs("viewer")
    def unit(admin: Admin, unit_id: str) -> Any:
        view = console.view()
        entry = console.entry(view, unit_id, UNIT)
        if entry is None:
            return console.message(404, "not_found")
        members = view.search(f.Eq("unit", entry.id), kinds=ACCOUNTS_ONLY)
        manager = view.get(str(view.first(entry, "managerId") or ""))
        shown = members + ([manager] if manager is not None else [])
        console.record(admin, "admin.unit", view.subjects(shown))
        data = view.catalogue
        assignments = []
        for row in sorted(data.unit_assignments.values(), key=lambda a: a.id):
            if row.org_unit_id != entry.id:
                continue
            role = data.job_roles.get(row.job_role_id) if row.job_role_id else None
            group = data.role_groups.get(row.role_group_id) if row.role_group_id else None
            assignments.append({"role": role, "group": group, "inherit": row.inherit,
                                "manager_only": row.manager_only, "titles": row.title_mode})
        return console.page(
            "unit.html", unit={"id": entry.id, "name": view.first(entry, "displayName"),
                               "path": view.first(entry, "orgUnitPath"),
                               "type": view.first(entry, "unitType"),
                               "hierarchy": view.first(entry, "hierarchy"),
                               "parent": view.first(entry, "parent"),
                               "kle": view.values(entry, "kle")},
            manager=_person(view, manager) if manager is not None else None,
            members=[_person(view, m) for m in members], assignments=assignments)

    @bp.get("/role/<role_id>")
    @needs("viewer")
    def role(admin: Admin, role_id: str) -> Any:
        view = console.view()
        data = view.catalogue
        found = data.job_roles.get(role_id)
        if found is None:
            return console.message(404, "not_found")
        holders = view.search(f.Eq("role", found.id), kinds=ACCOUNTS_ONLY)
        shown = holders[:HOLDERS_SHOWN]
        console.record(admin, "admin.role", view.subjects(shown))
        rows = []
        for entry in shown:
            why = []
            for grant in view.complex(entry, "roles"):
                if grant.get("value") != found.id:
                    continue
                unit = data.units.get(grant.get("viaUnit") or "")
                group = data.role_groups.get(grant.get("viaRoleGroup") or "")
                why.append({"via": grant.get("via"), "unit": unit, "group": group,
                            "until": grant.get("validTo")})
            rows.append({**_person(view, entry), "why": why})
        system = data.it_systems.get(found.it_system_id)
        return console.page("role.html", role=found, system=system, holders=rows,
                            total=len(holders))


def _person(view: ClientView, entry: Any) -> dict:
    return {"id": entry.id, "userName": view.first(entry, "userName"),
            "displayName": view.first(entry, "displayName"), "title": view.first(entry, "title")}
