"""The browser console at ``/admin``: server-rendered pages for municipal IT staff and the
data-protection officer.

Pages: the overview (health), finding a person, an account with its engagements and its
roles with why (the same explanation as ``idm-facade roles --explain``, as of any date), and
for ``dpo`` and ``admin`` the access log of one person (who looked at whom, GDPR art. 15),
exportable as CSV or JSON.

Security, as an attacker with a browser would test it:

- the session is a cookie signed with the console key (``[admin] secret_key``, else
  ``<state_dir>/admin-session.key``, made on first use), ``HttpOnly``, ``SameSite=Strict``,
  ``Secure`` when the request came over TLS, limited to ``/admin``; it names the
  administrator and the account's session generation, so logout and a password change end
  it everywhere; it ends after ``[admin] idle_minutes`` (default 15) without a request;
- every form carries a CSRF token tied to the session, checked in constant time (a form
  without it, or with another session's, is refused with 400 and changes nothing);
- failed logins lock the account (``accounts``), answered like a wrong password;
- every page that shows a person writes an access record first (client ``admin:<name>``),
  like any other disclosure: no record, no page. CPR numbers are not shown in the console.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, g, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeSerializer

from idm_facade.access.audit.record import REQUEST_ID_KEY
from idm_facade.access.audit.record import source as audit_source
from idm_facade.access.facade import Facade
from idm_facade.admin.accounts import Admin, AdminRegistry
from idm_facade.admin.terms import Terms
from idm_facade.admin.texts import LANGUAGES, text
from idm_facade.directory.policy import TRUSTED
from idm_facade.directory.view import ClientView

COOKIE = "idmf_admin"


def session_key(facade: Facade) -> bytes:
    """The key that signs console sessions: configured, else a file in the state dir
    (shared by ``--workers`` processes; replicas need the same ``secret_key``)."""
    configured = facade.config.get("admin", "secret_key")
    if configured:
        return str(configured).encode()
    state = facade.config.state_dir
    path = state / "admin-session.key"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


class Console:
    """The console of one facade: its session signer, administrators and pages."""

    def __init__(self, facade: Facade) -> None:
        self.facade = facade
        self.admins = AdminRegistry(facade.directory.engine)
        self.terms = Terms(facade.directory.engine)
        self.signer = URLSafeSerializer(session_key(facade), salt="idm-facade-admin")
        self.idle = float(facade.config.get("admin", "idle_minutes", 15)) * 60

    # ------------------------------------------------------------------ session

    def load_session(self) -> None:
        raw = request.cookies.get(COOKIE)
        data: dict[str, Any] = {}
        if raw:
            try:
                data = dict(self.signer.loads(raw))
            except BadSignature:
                data = {}
        g.session, g.session_changed = data, False
        wanted = request.args.get("lang")
        if wanted in LANGUAGES and data.get("l") != wanted:
            data["l"], g.session_changed = wanted, True
        if "l" not in data:
            best = request.accept_languages.best_match(LANGUAGES, default="da")
            data["l"], g.session_changed = best, True
        if "c" not in data:
            data["c"], g.session_changed = secrets.token_urlsafe(24), True

    def save_session(self, response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        if getattr(g, "session_changed", False):
            response.set_cookie(COOKIE, self.signer.dumps(g.session), httponly=True,
                                samesite="Strict", secure=request.is_secure, path="/admin")
        return response

    def admin(self) -> Admin | None:
        """The logged-in administrator, or None (and the session cleared when it ended)."""
        data = g.session
        name = data.get("a")
        if not name:
            return None
        now = time.time()
        found = None
        if now - float(data.get("s", 0)) <= self.idle:
            found = self.admins.current(name, int(data.get("g", -1)))
        if found is None:
            for key in ("a", "g", "s"):
                data.pop(key, None)
            data["c"] = secrets.token_urlsafe(24)
            g.session_changed, g.ended = True, True
            return None
        if now - float(data.get("s", 0)) > 30:  # refreshed at most every 30 s
            data["s"], g.session_changed = now, True
        return found

    def check_csrf(self) -> bool:
        given = request.form.get("csrf", "")
        return hmac.compare_digest(given.encode(), str(g.session.get("c", "")).encode())

    # ------------------------------------------------------------------ helpers

    def t(self, key: str) -> str:
        """The label in the session's language: the municipality's local term, else ours."""
        language = g.session.get("l", "da")
        return self.terms.text(key, language) or text(key, language)

    def page(self, template: str, status: int = 200, **values: Any) -> Response:
        body = render_template(template, t=self.t, csrf=g.session.get("c", ""),
                               admin=getattr(g, "admin", None),
                               lang=g.session.get("l", "da"), **values)
        return Response(body, status=status, mimetype="text/html")

    def message(self, status: int, key: str) -> Response:
        """A page saying one thing (an error) with its status."""
        return self.page("message.html", status, message=self.t(key))

    def entry(self, view: ClientView, entry_id: str, kind: str) -> Any:
        """The entry of ``kind`` with this id as the console sees it, or None."""
        entry = view.get(entry_id)
        return entry if entry is not None and entry.kind == kind else None

    def record(self, admin: Admin, operation: str, subjects: list[str]) -> None:
        """The access record of a page that shows persons (raises AuditUnavailable)."""
        from idm_facade.access.audit import AccessRecord

        self.facade.audit.record(AccessRecord(
            client=f"admin:{admin.name}",
            source=audit_source(request.remote_addr or "", request.environ.get(REQUEST_ID_KEY)),
            operation=operation, query=request.full_path.rstrip("?"), status="200",
            subjects=subjects, sensitive=[]))

    def needs(self, role: str) -> Callable:
        """A page for administrators whose role includes ``role``: logged in (else to the
        login page), a POST with the session's CSRF token (else 400), the role (else 403);
        an access log that cannot be written shows an error instead of the page."""
        from idm_facade.access.audit import AuditUnavailable

        def wrap(handler: Callable) -> Callable:
            @wraps(handler)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                admin = self.admin()
                if admin is None:
                    return redirect(url_for("admin.login", ended=1 if g.get("ended") else None))
                g.admin = admin
                if request.method == "POST" and not self.check_csrf():
                    return self.message(400, "bad_csrf")
                if not admin.may(role):
                    return self.message(403, "forbidden")
                try:
                    return handler(admin, *args, **kwargs)
                except AuditUnavailable:
                    return self.page("message.html", 500,
                                     message="access log unavailable; nothing disclosed")
            return guarded
        return wrap

    def view(self) -> ClientView:
        return ClientView.of(self.facade.directory.snapshot, TRUSTED)


def blueprint(facade: Facade) -> Blueprint:
    """The console's pages, to be registered at ``/admin``."""
    from idm_facade.admin import clients, klassifikation, local_terms, organisation, people

    console = Console(facade)
    needs = console.needs
    bp = Blueprint("admin", __name__, template_folder="templates")
    bp.before_request(console.load_session)
    bp.after_request(console.save_session)

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        failed = False
        if request.method == "POST":
            if not console.check_csrf():
                return console.message(400, "bad_csrf")
            found = console.admins.login(request.form.get("name", ""),
                                         request.form.get("password", ""))
            if found is not None:
                g.session.update({"a": found.name, "g": found.generation, "s": time.time(),
                                  "c": secrets.token_urlsafe(24)})  # a new token per login
                g.session_changed = True
                return redirect(url_for("admin.home"))
            failed = True
        status = 401 if failed else 200
        return console.page("login.html", status, failed=failed,
                            ended=request.args.get("ended") == "1")

    @bp.post("/logout")
    @needs("viewer")
    def logout(admin: Admin) -> Any:
        console.admins.logout(admin.name)
        g.session = {"l": g.session.get("l", "da"), "c": secrets.token_urlsafe(24)}
        g.session_changed = True
        return redirect(url_for("admin.login"))

    @bp.get("/")
    @needs("viewer")
    def home(admin: Admin) -> Any:
        directory = facade.directory
        snapshot = directory.snapshot
        health = {
            "snapshot_age": round(max(0.0, time.time() - directory.checked_at), 1),
            "change_seq": snapshot.seq, "entries": len(snapshot),
            "log_status": getattr(facade.audit, "problem", None) or console.t("ok"),
            "store_status": directory.store_problem or console.t("ok")}
        return console.page("home.html", health=health)

    for pages in (people, organisation, clients, klassifikation, local_terms):
        pages.register(bp, console)
    return bp
