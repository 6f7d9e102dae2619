"""The console's client page (``admin``): the registered clients, and adding, rotating and
revoking one. A new secret is shown once, on the answer to the form, and never again."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, request

from idm_facade.access.clients import ClientError
from idm_facade.access.policies import PolicyError
from idm_facade.admin.accounts import Admin
from idm_facade.admin.console import Console

log = logging.getLogger(__name__)


def register(bp: Blueprint, console: Console) -> None:
    """Add the page to the console's blueprint."""
    registry = console.facade.clients
    needs = console.needs

    def listing(status: int = 200, **values: Any) -> Any:
        return console.page("clients.html", status, clients=registry.list(), **values)

    @bp.get("/clients")
    @needs("admin")
    def clients(admin: Admin) -> Any:
        return listing()

    @bp.post("/clients")
    @needs("admin")
    def change(admin: Admin) -> Any:
        action = request.form.get("action", "")
        name = request.form.get("name", "").strip()
        try:
            if action == "add":
                secret = registry.add(name, request.form.get("kind", ""),
                                      request.form.get("policy", "default").strip() or "default")
            elif action == "rotate":
                secret = registry.rotate(name)
            elif action == "revoke":
                registry.revoke(name)
                secret = None
            else:
                return listing(400, problem=f"unknown action {action!r}")
        except (ClientError, PolicyError) as exc:
            return listing(400, problem=str(exc))
        log.info("admin %s: client %s %s", admin.name, name, action)
        return listing(secret=secret, secret_for=name if secret else None)
