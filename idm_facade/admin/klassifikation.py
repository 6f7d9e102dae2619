"""The console's Klassifikation editor (``admin``): the facets and their classes; create a
class, rename one, retire one from a date. Each change is one store transaction with the
change log (actor ``admin:<name>``), so SCIM and LDAP show it after the next refresh, about
a second later."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, redirect, request, url_for

from idm_facade.admin.accounts import Admin
from idm_facade.admin.console import Console
from store import klassifikation as k

log = logging.getLogger(__name__)


def register(bp: Blueprint, console: Console) -> None:
    """Add the page to the console's blueprint."""
    engine = console.facade.directory.engine
    needs = console.needs

    def listing(status: int = 200, **values: Any) -> Any:
        wanted = request.values.get("facet", "")
        all_facets = k.facets(engine)
        chosen = next(((facet, classes) for facet, classes in all_facets
                       if facet.id == wanted), None)
        return console.page("klassifikation.html", status, facets=[f for f, _ in all_facets],
                            facet=chosen[0] if chosen else None,
                            classes=chosen[1] if chosen else [], **values)

    @bp.get("/klassifikation")
    @needs("admin")
    def klassifikation(admin: Admin) -> Any:
        return listing(saved=request.args.get("saved") == "1")

    @bp.post("/klassifikation")
    @needs("admin")
    def edit(admin: Admin) -> Any:
        form = request.form
        actor = f"admin:{admin.name}"
        try:
            action = form.get("action", "")
            if action == "rename":
                k.rename_class(engine, form.get("class", ""), form.get("name", ""), actor)
            elif action == "retire":
                k.retire_class(engine, form.get("class", ""), _date(form.get("at", "")),
                               actor)
            elif action == "create":
                k.create_class(engine, form.get("facet", ""), form.get("user_key", ""),
                               form.get("name", ""), _date(form.get("from", "")), actor)
            else:
                raise k.KlassifikationError(f"unknown action {action!r}")
        except k.KlassifikationError as exc:
            return listing(400, problem=str(exc))
        log.info("admin %s: Klassifikation %s", admin.name, form.get("action"))
        return redirect(url_for("admin.klassifikation", facet=form.get("facet", ""), saved=1))


def _date(text: str) -> datetime:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d")
    except ValueError:
        raise k.KlassifikationError(f"not a date (YYYY-MM-DD): {text!r}") from None
