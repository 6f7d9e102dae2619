"""The admin console in a real headless Chromium (selenium + Debian's chromedriver) against
``idm-facade serve`` on the S demo: login, the pages, the role explanation, the access log
and its export, CSRF refusal, lockout, a viewer kept out of the access log, logout.

Screenshots of the main pages are written to a temporary folder (and checked to be PNGs);
with ``IDM_FACADE_SCREENSHOTS=docs/admin`` they go there instead, for the documentation.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from idm_facade.access.clients import ClientRegistry
from idm_facade.config import Config
from idm_facade.directory import Directory
from schemas.attributes import ACCOUNT
from store.engine import make_engine
from tests.serving import Serving, copy_store, start_serve

IDM = str(Path(sys.executable).with_name("idm-facade"))
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORDS = {"ada-admin": "correct horse battery", "dora-dpo": "staple of the office",
             "vic-viewer": "viewer password 42", "lock-me": "the right password"}
ROLES = {"ada-admin": "admin", "dora-dpo": "dpo", "vic-viewer": "viewer", "lock-me": "viewer"}


@dataclass
class Console:
    serving: Serving
    base: str
    db: str
    shots: Path
    person: object  # an account entry of the demo with roles
    creds: dict


@pytest.fixture(scope="module")
def console(demo_db: str, tmp_path_factory) -> Iterator[Console]:
    assert Path(CHROMIUM).exists() and Path(DRIVER).exists(), \
        "Debian's chromium and chromium-driver are needed (scripts/os-packages.sh installs them)"
    tmp = tmp_path_factory.mktemp("console")
    db = copy_store(demo_db, tmp / "idm.db")
    config = tmp / "idm.toml"
    config.write_text(f'[directory]\nstate_dir = "{tmp}"\n')
    for name, password in PASSWORDS.items():
        added = subprocess.run([IDM, "admins", "add", name, "--role", ROLES[name],
                                "--password-stdin", "--db", db], input=password + "\n",
                               capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
    short = subprocess.run([IDM, "admins", "add", "shorty", "--password-stdin", "--db", db],
                           input="short\n", capture_output=True, text=True, timeout=60)
    assert short.returncode != 0 and "at least 12 characters" in short.stderr
    engine = make_engine(db)
    snap = Directory(engine).snapshot
    person = next(e for e in snap.entries if e.kind == ACCOUNT and e.attrs.get("role")
                  and e.first("displayName") and e.first("personId"))
    creds = ClientRegistry(engine, Config({"directory": {"state_dir": str(tmp)}})
                           ).ensure_demo_clients()
    engine.dispose()
    serving = start_serve(db, config)
    wanted = os.environ.get("IDM_FACADE_SCREENSHOTS")
    shots = Path(wanted) if wanted else tmp / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Console(serving, f"{serving.scim_base}/admin", db, shots, person, creds)
    finally:
        serving.stop()


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                 "--lang=da"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": "da,en"})
    # the browser keeps the real clock: under libfaketime (make test-dates) only the facade's
    # own processes move in time, and Chromium does not start with the library preloaded
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME")}
    return webdriver.Chrome(service=Service(DRIVER, env=env), options=options)


@pytest.fixture
def chrome() -> Iterator[webdriver.Chrome]:
    driver = browser()
    try:
        yield driver
    finally:
        driver.quit()


def http_session(base: str, name: str, password: str) -> httpx.Client:
    """A logged-in console session without a browser (httpx, the login form's CSRF token)."""
    http = httpx.Client(base_url=base, timeout=30)
    page = http.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore
    assert http.post("/login", data={"name": name, "password": password, "csrf": token}
                     ).status_code == 302
    return http


def log_in(driver: webdriver.Chrome, console: Console, name: str) -> None:
    driver.get(f"{console.base}/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.ID, "login-button").click()
    # the click returns before the answer arrives: wait for the page it leads to
    WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.ID, "health") or d.find_elements(By.ID, "login-error"))


def shot(driver: webdriver.Chrome, console: Console, name: str) -> None:
    path = console.shots / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def audit_records(console: Console, client: str) -> list:
    from idm_facade.access.audit import AuditLog

    engine = make_engine(console.db)
    try:
        return AuditLog(engine, Config()).query(client=client)
    finally:
        engine.dispose()


def test_an_admin_finds_a_person_and_sees_why_she_has_her_roles(chrome, console) -> None:
    """Login, the overview, search, the account page with its roles explained (as
    ``roles --explain``), a date before any role, each page that shows the person recorded in
    the access log; the cookie is HttpOnly and SameSite=Strict."""
    log_in(chrome, console, "ada-admin")
    assert chrome.current_url.rstrip("/") == console.base
    health = chrome.find_element(By.ID, "health").text
    assert "Adgangslog" in health and "i orden" in health  # Danish by default
    cookie = chrome.get_cookie("idmf_admin")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    shot(chrome, console, "overview")
    person = console.person
    word = str(person.first("displayName")).split()[-1]
    chrome.get(f"{console.base}/search?q={word}")
    chrome.find_element(By.LINK_TEXT, str(person.first("userName"))).click()
    shot(chrome, console, "account")
    roles = chrome.find_element(By.ID, "roles").text
    assert any(reason in roles for reason in ("via unit", "assigned directly", "as manager"))
    assert chrome.find_element(By.ID, "person-id").text == str(person.first("personId"))
    chrome.find_element(By.ID, "at").send_keys("01011990")  # the date field, as typed
    chrome.get(f"{chrome.current_url.split('?')[0]}?at=1990-01-01")
    assert chrome.find_element(By.ID, "no-roles").is_displayed()
    records = audit_records(console, "admin:ada-admin")
    viewed = [r for r in records if r.operation == "admin.account"]
    assert len(viewed) == 2 and all(str(person.first("personId")) in r.subjects for r in viewed)
    assert any(r.operation == "admin.search" for r in records)
    chrome.get(f"{console.base}/?lang=en")
    assert "Access log" in chrome.find_element(By.ID, "health").text


def test_the_dpo_answers_an_art_15_request(chrome, console) -> None:
    """``dpo`` reads one person's access log (who looked, when) and exports it as CSV and
    JSON; the lookup itself is recorded."""
    person_id = str(console.person.first("personId"))
    with closing(http_session(console.base, "ada-admin", PASSWORDS["ada-admin"])) as admin:
        assert admin.get(f"/account/{console.person.id}").status_code == 200
    log_in(chrome, console, "dora-dpo")
    chrome.get(f"{console.base}/audit?subject={person_id}")
    table = chrome.find_element(By.ID, "records").text
    assert "admin:ada-admin" in table and "admin.account" in table
    shot(chrome, console, "access-log")
    cookies = {c["name"]: c["value"] for c in chrome.get_cookies()}
    exported = httpx.get(f"{console.base}/audit", params={"subject": person_id,
                                                          "format": "csv"},
                         cookies=cookies, timeout=30)
    assert exported.status_code == 200 and "attachment" in exported.headers[
        "content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert rows and {"seq", "time", "client", "operation"} <= set(rows[0])
    assert any(r["client"] == "admin:ada-admin" for r in rows)
    as_json = httpx.get(f"{console.base}/audit", params={"subject": person_id,
                                                         "format": "json"},
                        cookies=cookies, timeout=30).json()
    assert as_json["subject"] == person_id and len(as_json["records"]) >= len(rows)
    # by client and by time: the records' own dates, so the run's day does not matter
    day = rows[-1]["time"][:10]
    by_client = httpx.get(f"{console.base}/audit", cookies=cookies, timeout=30, params={
        "client": "admin:ada-admin", "since": day, "until": day, "format": "json"}).json()
    assert by_client["records"] and all(r["client"] == "admin:ada-admin"
                                        for r in by_client["records"])
    later = httpx.get(f"{console.base}/audit", cookies=cookies, timeout=30, params={
        "client": "admin:ada-admin", "since": "2999-01-01", "format": "json"}).json()
    assert later["records"] == []
    assert any(person_id in r.subjects for r in audit_records(console, "admin:dora-dpo"))
    chrome.find_element(By.ID, "verify").click()  # `audit verify`, from the page
    WebDriverWait(chrome, 60).until(lambda d: d.find_elements(By.ID, "verified"))
    assert "Kæden er hel" in chrome.find_element(By.ID, "verified").text


def test_a_viewer_is_kept_out_of_the_access_log(chrome, console) -> None:
    log_in(chrome, console, "vic-viewer")
    assert not chrome.find_elements(By.LINK_TEXT, "Adgangslog")
    chrome.get(f"{console.base}/audit?subject=anyone")
    assert "giver ikke adgang" in chrome.find_element(By.ID, "message").text
    assert not [r for r in audit_records(console, "admin:vic-viewer")
                if r.operation == "admin.audit"]


def test_forms_without_the_session_token_are_refused(chrome, console) -> None:
    """A login or logout posted from elsewhere (no CSRF token, or another session's) is 400
    and changes nothing: the browser stays logged in."""
    refused = httpx.post(f"{console.base}/login", data={"name": "ada-admin",
                                                        "password": PASSWORDS["ada-admin"]},
                         timeout=30)
    assert refused.status_code == 400 and 'id="health"' not in refused.text
    log_in(chrome, console, "ada-admin")
    cookies = {c["name"]: c["value"] for c in chrome.get_cookies()}
    forged = httpx.post(f"{console.base}/logout", data={"csrf": "not-the-token"},
                        cookies=cookies, timeout=30)
    assert forged.status_code == 400
    chrome.get(f"{console.base}/")
    assert chrome.find_elements(By.ID, "health")  # still logged in
    chrome.find_element(By.CSS_SELECTOR, "header form button").click()  # the real logout
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "login-button"))
    chrome.get(f"{console.base}/")
    assert chrome.find_elements(By.ID, "login-button")
    # the old cookie no longer works either (logout ends the session generation)
    again = httpx.get(f"{console.base}/", cookies=cookies, timeout=30)
    assert again.status_code == 302 and "/admin/login" in again.headers["location"]


def test_repeated_failures_lock_the_account(console) -> None:
    """Five wrong passwords lock the account for 15 minutes: the right password is then
    refused with the same answer as a wrong one; ``admins passwd`` lifts the lock."""
    with httpx.Client(base_url=console.base, timeout=30) as http:
        def attempt(password: str) -> httpx.Response:
            page = http.get("/login")
            token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
            return http.post("/login", data={"name": "lock-me", "password": password,
                                             "csrf": token})
        for _ in range(5):
            assert attempt("wrong password!").status_code == 401
        locked = attempt(PASSWORDS["lock-me"])
        assert locked.status_code == 401 and "Forkert brugernavn" in locked.text
        listed = subprocess.run([IDM, "admins", "list", "--db", console.db],
                                capture_output=True, text=True, timeout=60).stdout
        assert re.search(r"lock-me\tviewer\t\S+ \S+\t20\d\d-", listed)
        reset = subprocess.run([IDM, "admins", "passwd", "lock-me", "--password-stdin",
                                "--db", console.db], input=PASSWORDS["lock-me"] + "\n",
                               capture_output=True, text=True, timeout=60)
        assert reset.returncode == 0
        assert attempt(PASSWORDS["lock-me"]).status_code == 302


def test_the_organisation_tree_a_unit_and_a_role(chrome, console) -> None:
    """Every hierarchy's tree (expandable without script), unit search, a unit with its
    members and the roles assigned there, a role with its holders and why; unit and role
    pages show persons, so each writes an access record."""
    log_in(chrome, console, "vic-viewer")
    chrome.get(f"{console.base}/units")
    tree = chrome.find_element(By.ID, "tree-1")
    summary = tree.find_element(By.TAG_NAME, "summary")
    summary.click()  # opens the top unit: its children become visible
    shot(chrome, console, "organisation")
    child = tree.find_elements(By.CSS_SELECTOR, "details[open] > ul > li a")
    assert child and child[0].is_displayed()
    child[0].click()
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "unit-details"))
    assert chrome.find_element(By.ID, "members").is_displayed()
    first = console.person
    chrome.get(f"{console.base}/account/{first.id}")
    chrome.find_element(By.CSS_SELECTOR, "#roles a").click()
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "holder-count"))
    shot(chrome, console, "role")
    assert int(chrome.find_element(By.ID, "holder-count").text) >= 1
    why = chrome.find_element(By.ID, "holders").text
    assert any(w in why for w in ("via enhed", "tildelt direkte", "som leder"))
    ops = {r.operation for r in audit_records(console, "admin:vic-viewer")}
    assert {"admin.unit", "admin.role", "admin.account"} <= ops
    chrome.get(f"{console.base}/units?q=center")
    assert chrome.find_elements(By.CSS_SELECTOR, "#unit-hits a")


def test_an_admin_adds_rotates_and_revokes_a_client(chrome, console) -> None:
    """The client page (``admin`` only): a new client's token is shown once and works at
    once; revoking it stops it; a viewer is refused the page."""
    log_in(chrome, console, "ada-admin")
    chrome.get(f"{console.base}/clients")
    chrome.find_element(By.ID, "client-name").send_keys("web-added")
    chrome.find_element(By.ID, "add-client").click()
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "secret"))
    token = chrome.find_element(By.ID, "secret").text
    assert token.startswith("idmf_")
    api = f"{console.serving.scim_base}/api/itsystem/all"
    assert httpx.get(api, headers={"ApiKey": token}, timeout=30).status_code == 200
    chrome.get(f"{console.base}/clients")
    assert not chrome.find_elements(By.ID, "secret")  # shown once
    chrome.find_element(By.ID, "revoke-web-added").click()
    WebDriverWait(chrome, 30).until(lambda d: not d.find_elements(By.ID, "revoke-web-added"))
    assert "tilbagekaldt" in chrome.find_element(By.ID, "clients").text
    for _ in range(50):  # a revocation takes effect within about a second (clients.py)
        if httpx.get(api, headers={"ApiKey": token}, timeout=30).status_code == 401:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a revoked token still works")
    viewer = browser()
    try:
        log_in(viewer, console, "vic-viewer")
        viewer.get(f"{console.base}/clients")
        assert "giver ikke adgang" in viewer.find_element(By.ID, "message").text
    finally:
        viewer.quit()


def test_a_class_renamed_in_the_editor_shows_over_scim_and_ldap(chrome, console) -> None:
    """The Klassifikation editor: renaming the job-function class of a person's title is one
    store write (change log actor ``admin:<name>``) that SCIM's ``title`` and LDAP's
    ``title`` show after the refresh; an empty name is refused and changes nothing; a class
    created today appears, and retiring it before it begins is refused."""
    import ldap
    from sqlalchemy import select

    from store.models import Change, Klasse

    title = str(console.person.first("title"))
    engine = make_engine(console.db)
    try:
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            klasse = session.scalars(select(Klasse).where(Klasse.name == title)).first()
            assert klasse is not None
            class_id, facet_id = klasse.id, klasse.facet_id
    finally:
        engine.dispose()
    log_in(chrome, console, "ada-admin")
    chrome.get(f"{console.base}/klassifikation?facet={facet_id}")
    field = chrome.find_element(By.ID, f"name-{class_id}")
    field.clear()
    chrome.execute_script("arguments[0].removeAttribute('required')", field)
    field.submit()  # an empty name
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "problem"))
    assert "needs a name" in chrome.find_element(By.ID, "problem").text
    field = chrome.find_element(By.ID, f"name-{class_id}")
    field.clear()
    field.send_keys("Omdøbt stilling")
    field.submit()
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "saved"))
    shot(chrome, console, "klassifikation")
    user = str(console.person.first("userName"))
    token = console.creds["demo-scim"]["token"]
    seen_scim = seen_ldap = None
    for _ in range(100):
        found = httpx.get(f"{console.serving.scim_base}/scim/v2/Users/{console.person.id}",
                          params={"attributes": "title"}, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}).json()
        seen_scim = found.get("title")
        conn = ldap.initialize(console.serving.ldap_url)
        conn.simple_bind_s(console.creds["demo-ldap"]["bind_dn"],
                           console.creds["demo-ldap"]["password"])
        base = str(console.creds["demo-ldap"]["bind_dn"]).split(",ou=clients,")[1]
        (_, attrs), = conn.search_s(f"ou=people,{base}", ldap.SCOPE_SUBTREE,
                                    f"(uid={user})", ["title"])
        conn.unbind_s()
        seen_ldap = attrs.get("title", [b""])[0].decode()
        if seen_scim == seen_ldap == "Omdøbt stilling":
            break
        time.sleep(0.1)
    assert seen_scim == seen_ldap == "Omdøbt stilling", (seen_scim, seen_ldap)
    engine = make_engine(console.db)
    try:
        with Session(engine) as session:
            change = session.scalars(select(Change).order_by(Change.seq.desc())).first()
            assert change is not None
            assert (change.actor, change.object_type, change.object_id) == (
                "admin:ada-admin", "klasse", class_id)
    finally:
        engine.dispose()
    chrome.find_element(By.ID, "new-user-key").send_keys("ny-stilling")
    chrome.find_element(By.ID, "new-name").send_keys("Ny stilling")
    chrome.execute_script("document.getElementById('new-from').value = '2026-01-01'")
    chrome.find_element(By.ID, "create-class").click()
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "class-ny-stilling"))
    row = chrome.find_element(By.ID, "class-ny-stilling")
    date = row.find_element(By.CSS_SELECTOR, "input[type=date]")
    chrome.execute_script("arguments[0].value = '2025-06-01'", date)
    date.submit()
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "problem"))
    assert "only be retired after it begins" in chrome.find_element(By.ID, "problem").text


def test_local_terms_replace_the_console_labels(chrome, console) -> None:
    """An admin gives a label the municipality's own word; every page uses it (here the
    account page), and clearing it brings the default back."""
    log_in(chrome, console, "ada-admin")
    chrome.get(f"{console.base}/terms")
    field = chrome.find_element(By.ID, "title_field.da")
    field.clear()
    field.send_keys("Jobfunktion")
    chrome.find_element(By.ID, "save-terms").click()
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "saved"))
    chrome.get(f"{console.base}/account/{console.person.id}")
    assert "Jobfunktion" in chrome.find_element(By.ID, "details").text
    chrome.get(f"{console.base}/terms")
    chrome.find_element(By.ID, "title_field.da").clear()
    chrome.find_element(By.ID, "save-terms").click()
    WebDriverWait(chrome, 30).until(lambda d: d.find_elements(By.ID, "saved"))
    chrome.get(f"{console.base}/account/{console.person.id}")
    details = chrome.find_element(By.ID, "details").text
    assert "Stilling" in details and "Jobfunktion" not in details


def test_an_idle_session_ends(demo_db: str, tmp_path: Path) -> None:
    """``[admin] idle_minutes``: a session unused for longer sends the browser back to the
    login page, with the reason."""
    db = copy_store(demo_db, tmp_path / "idm.db")
    config = tmp_path / "idm.toml"
    config.write_text(f'[directory]\nstate_dir = "{tmp_path}"\n[admin]\nidle_minutes = 0.04\n')
    subprocess.run([IDM, "admins", "add", "ida-idle", "--password-stdin", "--db", db],
                   input="idle password 123\n", check=True, capture_output=True, text=True,
                   timeout=60)
    serving = start_serve(db, config, ldap=False)
    try:
        with closing(http_session(f"{serving.scim_base}/admin", "ida-idle",
                                  "idle password 123")) as http:
            assert http.get("/").status_code == 200
            time.sleep(3)  # idle for longer than 0.04 minutes
            ended = http.get("/")
            assert ended.status_code == 302 and "ended=1" in ended.headers["location"]
            login = httpx.get(serving.scim_base + ended.headers["location"], timeout=30)
            assert "udløbet" in login.text
    finally:
        serving.stop()


def test_screenshots_folder_is_filled(console) -> None:
    """The screenshots the documentation shows exist (run after the page tests)."""
    names = {p.name for p in console.shots.glob("*.png")}
    assert {"overview.png", "account.png", "access-log.png", "organisation.png",
            "role.png", "klassifikation.png"} <= names
