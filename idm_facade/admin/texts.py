"""The console's words in Danish and English (Danish first: the users are municipal staff).

One table, looked up by key in the templates as ``t("key")``; a missing key shows the key,
so a forgotten translation is visible rather than an error.
"""

from __future__ import annotations

LANGUAGES = ("da", "en")

TEXTS: dict[str, dict[str, str]] = {
    "title": {"da": "idm-facade administration", "en": "idm-facade administration"},
    "login": {"da": "Log ind", "en": "Log in"},
    "logout": {"da": "Log ud", "en": "Log out"},
    "name": {"da": "Brugernavn", "en": "User name"},
    "password": {"da": "Adgangskode", "en": "Password"},
    "login_failed": {"da": "Forkert brugernavn eller adgangskode.",
                     "en": "Wrong user name or password."},
    "session_ended": {"da": "Sessionen er udløbet. Log ind igen.",
                      "en": "The session has ended. Please log in again."},
    "home": {"da": "Overblik", "en": "Overview"},
    "search": {"da": "Søg person", "en": "Find a person"},
    "search_label": {"da": "Navn eller brugernavn", "en": "Name or user name"},
    "search_button": {"da": "Søg", "en": "Search"},
    "no_hits": {"da": "Ingen fundet.", "en": "Nobody found."},
    "access_log": {"da": "Adgangslog", "en": "Access log"},
    "health": {"da": "Tilstand", "en": "Health"},
    "snapshot_age": {"da": "Øjebliksbilledets alder (sekunder)",
                     "en": "Snapshot age (seconds)"},
    "change_seq": {"da": "Seneste ændring (nr.)", "en": "Last change (seq)"},
    "entries": {"da": "Poster i kataloget", "en": "Directory entries"},
    "log_status": {"da": "Adgangslog", "en": "Access log"},
    "ok": {"da": "i orden", "en": "ok"},
    "store_status": {"da": "Datalager", "en": "Store"},
    "account": {"da": "Konto", "en": "Account"},
    "user_name": {"da": "Brugernavn", "en": "User name"},
    "display_name": {"da": "Navn", "en": "Name"},
    "title_field": {"da": "Stilling", "en": "Job title"},
    "engagements": {"da": "Ansættelser", "en": "Engagements"},
    "unit": {"da": "Enhed", "en": "Unit"},
    "roles": {"da": "Roller og hvorfor", "en": "Roles and why"},
    "no_roles": {"da": "Ingen roller på denne dato.", "en": "No roles on this date."},
    "at_date": {"da": "Pr. dato", "en": "As of"},
    "show": {"da": "Vis", "en": "Show"},
    "it_system": {"da": "IT-system", "en": "IT system"},
    "role": {"da": "Rolle", "en": "Role"},
    "why": {"da": "Hvorfor", "en": "Why"},
    "who_looked": {"da": "Hvem har set på personen", "en": "Who has looked at this person"},
    "subject": {"da": "Person-id", "en": "Person id"},
    "time": {"da": "Tidspunkt (UTC)", "en": "Time (UTC)"},
    "client": {"da": "Klient", "en": "Client"},
    "operation": {"da": "Handling", "en": "Operation"},
    "status": {"da": "Status", "en": "Status"},
    "export": {"da": "Eksportér (art. 15)", "en": "Export (art. 15)"},
    "forbidden": {"da": "Din rolle giver ikke adgang til denne side.",
                  "en": "Your role does not give access to this page."},
    "not_found": {"da": "Findes ikke (eller er ikke synlig).",
                  "en": "Not found (or not visible)."},
    "bad_csrf": {"da": "Formularen var forældet eller forfalsket. Prøv igen.",
                 "en": "The form was stale or forged. Please try again."},
    "bad_date": {"da": "Ugyldig dato.", "en": "Invalid date."},
    "language": {"da": "English", "en": "Dansk"},
    "records": {"da": "poster", "en": "records"},
}


def text(key: str, language: str) -> str:
    """The text for ``key`` in ``language`` (the key itself when missing)."""
    return TEXTS.get(key, {}).get(language, key)
