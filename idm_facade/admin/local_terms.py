"""The console's page for local terms (``admin``): every label with our Danish and English
text and the municipality's own, which replaces ours when given (``terms``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, request, url_for

from idm_facade.admin.accounts import Admin
from idm_facade.admin.console import Console
from idm_facade.admin.texts import LANGUAGES, TEXTS


def register(bp: Blueprint, console: Console) -> None:
    """Add the page to the console's blueprint."""
    needs = console.needs

    def listing(status: int = 200, **values: Any) -> Any:
        local = console.terms.local()
        rows = [{"key": key, "ours": TEXTS[key],
                 "local": {lang: local.get((key, lang), "") for lang in LANGUAGES}}
                for key in sorted(TEXTS)]
        return console.page("terms.html", status, rows=rows, languages=LANGUAGES, **values)

    @bp.get("/terms")
    @needs("admin")
    def terms(admin: Admin) -> Any:
        return listing(saved=request.args.get("saved") == "1")

    @bp.post("/terms")
    @needs("admin")
    def save_terms(admin: Admin) -> Any:
        changes = {}
        for field, value in request.form.items():
            key, _, language = field.rpartition(".")
            if key in TEXTS and language in LANGUAGES:
                changes[(key, language)] = value
        try:
            console.terms.save(changes)
        except ValueError as exc:
            return listing(400, problem=str(exc))
        return redirect(url_for("admin.terms", saved=1))
