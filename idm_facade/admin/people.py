"""The console's pages about persons: finding one, an account with its roles explained,
and (``dpo``) a person's access log with its export for a data subject's request."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, request

from idm_facade.admin.accounts import Admin
from idm_facade.admin.console import Console
from idm_facade.directory import filters as f
from idm_facade.directory.policy import ACCOUNTS_ONLY
from idm_facade.directory.roles import describe_roles
from schemas.attributes import ACCOUNT

SEARCH_LIMIT = 50
#: Access records listed on the page (newest first); the export has every one.
AUDIT_SHOWN = 1000


def register(bp: Blueprint, console: Console) -> None:
    """Add the pages to the console's blueprint."""
    facade = console.facade
    needs = console.needs

    @bp.get("/search")
    @needs("viewer")
    def search(admin: Admin) -> Any:
        query = request.args.get("q", "").strip()
        hits: list[dict] = []
        if query:
            view = console.view()
            words = [w for w in query.split() if w]
            name_filter = f.And(tuple(f.Substring("displayName", any=(w,)) for w in words))
            found = view.search(f.Or((f.Eq("userName", query), name_filter)),
                                kinds=ACCOUNTS_ONLY)[:SEARCH_LIMIT]
            console.record(admin, "admin.search", view.subjects(found))
            hits = [{"id": e.id, "userName": view.first(e, "userName"),
                     "displayName": view.first(e, "displayName"),
                     "title": view.first(e, "title")} for e in found]
        return console.page("search.html", query=query, hits=hits)

    @bp.get("/account/<account_id>")
    @needs("viewer")
    def account(admin: Admin, account_id: str) -> Any:
        view = console.view()
        entry = console.entry(view, account_id, ACCOUNT)
        if entry is None:
            return console.message(404, "not_found")
        at_text = request.args.get("at", "").strip()
        data = view.catalogue
        if at_text:
            try:
                at = datetime.strptime(at_text, "%Y-%m-%d")
            except ValueError:
                return console.message(400, "bad_date")
            from idm_facade.directory.load import load

            data = load(facade.directory.engine, at)
        console.record(admin, "admin.account", view.subjects([entry]))
        lines = describe_roles(data, entry.id, explain=True)
        roles: list[dict] = []
        for line in lines:
            if line.startswith("\t- "):
                roles[-1]["why"].append(line[3:])
            else:
                system, identifier, name = (line.split("\t") + ["", ""])[:3]
                found = next((r for r in data.job_roles.values()
                              if r.identifier == identifier), None)
                roles.append({"system": system, "identifier": identifier, "name": name,
                              "why": [], "id": found.id if found else None})
        contact = [(e.get("type") or "", e.get("value")) for name in ("emails", "phoneNumbers")
                   for e in view.complex(entry, name)]
        details = {"userName": view.first(entry, "userName"),
                   "displayName": view.first(entry, "displayName"),
                   "title": view.first(entry, "title"),
                   "personId": view.first(entry, "personId")}
        return console.page("account.html", entry_id=entry.id, details=details, contact=contact,
                            engagements=view.complex(entry, "engagements"), roles=roles,
                            at=at_text or data.at.date().isoformat())

    _verify_route(bp, console)

    @bp.get("/audit")
    @needs("dpo")
    def audit(admin: Admin) -> Any:
        """The access log by person (``subject``), by client and by time (``since``,
        ``until``: dates, UTC); at least one of subject and client. The newest
        :data:`AUDIT_SHOWN` are listed, the export has them all."""
        args = request.args
        subject, client = args.get("subject", "").strip(), args.get("client", "").strip()
        try:
            since = _day(args.get("since", ""))
            until = _day(args.get("until", ""))
        except ValueError:
            return console.message(400, "bad_date")
        records: list[Any] = []
        if subject or client:
            console.record(admin, "admin.audit", [subject] if subject else [])
            records = facade.audit.query(subject=subject or None, client=client or None,
                                         since=since,
                                         until=until + timedelta(days=1) if until else None)
            fmt = args.get("format")
            if fmt in ("csv", "json"):
                return _export(records, subject or client, fmt)
        return console.page("audit.html", subject=subject, client=client,
                            since=args.get("since", ""), until=args.get("until", ""),
                            records=records[-AUDIT_SHOWN:][::-1], total=len(records))


def _verify_route(bp: Blueprint, console: Console) -> None:
    """``POST /admin/audit/verify`` (``dpo``): run ``audit verify`` (the hash chain from the
    purge anchor, and the subject index against it) and show its verdict."""

    @bp.post("/audit/verify")
    @console.needs("dpo")
    def verify(admin: Admin) -> Any:
        result = console.facade.audit.verify()
        return console.page("audit.html", subject="", client="", since="", until="",
                            records=[], total=0, verified=result)


def _day(text: str) -> datetime | None:
    return datetime.strptime(text.strip(), "%Y-%m-%d") if text.strip() else None


_FIELDS = ("seq", "time", "client", "source", "operation", "query", "status")


def _export(records: list[Any], subject: str, fmt: str) -> Response:
    """One person's access records, for a data subject's request (GDPR art. 15)."""
    rows = [{name: (getattr(r, name).isoformat() if name == "time" else getattr(r, name))
             for name in _FIELDS} for r in records]
    name = f"access-log-{subject}.{fmt}"
    if fmt == "json":
        body = json.dumps({"subject": subject, "records": rows}, ensure_ascii=False, indent=1)
        mimetype = "application/json"
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        body, mimetype = out.getvalue(), "text/csv"
    return Response(body, mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
