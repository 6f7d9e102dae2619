"""Deterministic demo municipality: a synthetic but realistically shaped organisation.

Why: every other part of idm-facade (directory, SCIM, LDAP, role lookup, benchmarks) needs a
municipality to serve that has the awkward parts of the real thing - parallel hierarchies,
vacant managers, people with several engagements and accounts, SECRET addresses, sensitive
titles, inherited and excepted role assignments, changes dated next week - without anyone's
personal data. :func:`generate` returns an exchange-format document (see
``docs/exchange-format.md``) so demo data goes through exactly the validated import path any
other data does.

Determinism: all randomness comes from one ``random.Random(seed)`` and all dates are relative to
a ``reference`` instant, so the same (size, seed, reference) gives byte-identical output.

Synthetic markers: the municipality, its CVR, municipality code and domains are invented; the
KLE codes and names are synthetic (the real catalogue is licensed by KL); and every CPR number
ends in :data:`SYNTHETIC_CPR_SUFFIX` (``98`` women, ``99`` men) and fails the modulus-11 check.
"""

from __future__ import annotations

import random
import uuid
from bisect import bisect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

from store.cpr import digit7_for
from store.exchange import FORMAT, VERSION
from store.names import FEMALE_NAMES, MALE_NAMES, SURNAMES, UsernameGenerator

#: Persons per size preset. Org units come out at roughly one per ten persons.
SIZES: dict[str, int] = {"S": 300, "M": 5_000, "L": 28_000, "XL": 48_000}

#: CPR positions 9-10 of every generated person, by gender: the documented synthetic marker.
SYNTHETIC_CPR_SUFFIX: dict[str, str] = {"female": "98", "male": "99"}

ORGANISATION_NAME = "Birkeå Kommune"
MUNICIPALITY_CODE = 998  # not a real municipality code (those are 101-860)
KOMBIT_DOMAIN = "birkeaa.kommune.example"
MAIL_DOMAIN = "birkeaa.example"
POSTCODE = "9990"  # not a Danish postcode in use

ORG_CONSTRAINT = "http://sts.kombit.dk/constraints/orgenhed/1"
KLE_CONSTRAINT = "http://sts.kombit.dk/constraints/KLE/1"

FULL_TIME = 1_000_000  # engagement fraction unit: millionths of full time

Progress = Callable[[str], None]

#: The phases :func:`generate` reports to its progress callback, in order.
PHASES = ("classification", "organisation units", "persons and engagements",
          "managers and associations", "accounts and addresses", "KLE and roles")


def default_reference() -> datetime:
    """Today at midnight UTC (naive, as the store keeps times)."""
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day)


def synthetic_cvr(rng: random.Random) -> str:
    """An 8-digit CVR with a valid modulus-11 check digit, starting 99 (no real CVR range)."""
    weights = (2, 7, 6, 5, 4, 3, 2)
    while True:
        digits = [9, 9] + [rng.randrange(10) for _ in range(5)]
        remainder = sum(w * d for w, d in zip(weights, digits, strict=True)) % 11
        check = (11 - remainder) % 11
        if check < 10:
            return "".join(map(str, digits)) + str(check)


def _mod11_ok(cpr: str) -> bool:
    weights = (4, 3, 2, 7, 6, 5, 4, 3, 2, 1)
    return sum(w * int(d) for w, d in zip(weights, cpr, strict=True)) % 11 == 0


# --------------------------------------------------------------------------- catalogues

FACETS: dict[str, str] = {
    "org_unit_type": "Enhedstype",
    "org_unit_level": "Enhedsniveau",
    "org_unit_hierarchy": "Opmærkning (hierarki)",
    "engagement_job_function": "Stillingsbetegnelse",
    "engagement_type": "Engagementstype",
    "primary_type": "Primærtype",
    "association_type": "Tilknytningstype",
    "trade_union": "Fagforening",
    "manager_type": "Ledertype",
    "manager_level": "Lederniveau",
    "responsibility": "Lederansvar",
    "leave_type": "Orlovstype",
    "visibility": "Synlighed",
    "employee_address_type": "Medarbejderadressetype",
    "org_unit_address_type": "Enhedsadressetype",
    "kle_number": "KLE-nummer (syntetisk)",
    "kle_aspect": "KLE-aspekt",
}

# (user_key, name, scope) per facet; the KLE numbers are generated separately.
CLASSES: dict[str, list[tuple[str, str, str | None]]] = {
    "org_unit_type": [
        ("kommune", "Kommune", None), ("direktoeromraade", "Direktørområde", None),
        ("center", "Fagligt center", None), ("stab", "Stab", None),
        ("institution", "Institution", None), ("afsnit", "Institutionsafsnit", None),
        ("afdeling", "Afdeling", None), ("team", "Team", None),
        ("hoved-med", "Hoved-MED", None), ("center-med", "Center-MED", None),
        ("lokal-med", "Lokal-MED", None), ("loenenhed", "Lønenhed", None),
    ],
    "org_unit_level": [
        *((f"N{i}", f"Niveau {i}", None) for i in range(1, 7)),
        *((f"NY{i}-niveau", f"NY{i}-niveau", None) for i in range(1, 7)),
        ("Afdelings-niveau", "Afdelings-niveau", None),
    ],
    "org_unit_hierarchy": [
        ("linjeorg", "Linjeorganisation", None), ("selvejet", "Selvejet institution", None),
        ("hide", "Skjult", None), ("NA", "Ikke angivet", None),
    ],
    "engagement_type": [
        ("maanedsloennet-fuldtid", "Månedslønnet fuldtid", None),
        ("maanedsloennet-deltid", "Månedslønnet deltid", None),
        ("timeloennet", "Timelønnet", None), ("ekstern", "Ekstern konsulent", None),
    ],
    "primary_type": [
        ("non-primary", "Ikke-primær", "0"), ("primary", "Primær", "3000"),
        ("explicitly-primary", "Manuelt primær", "5000"),
    ],
    "association_type": [
        ("lr-formand", "LR formand", None), ("lr-naestformand", "LR næstformand", None),
        ("lr", "LR", None), ("ftr", "FTR", None), ("tr", "TR", None), ("amr", "AMR", None),
    ],
    "trade_union": [
        ("3f", "3F", None), ("hk", "HK Kommunal", None), ("foa", "FOA", None),
        ("dlf", "Danmarks Lærerforening", None), ("bupl", "BUPL", None), ("djoef", "Djøf", None),
        ("dm", "Dansk Magisterforening", None), ("dsr", "Dansk Sygeplejeråd", None),
        ("sl", "Socialpædagogerne", None),
    ],
    "manager_type": [
        ("kommunaldirektoer", "Kommunaldirektør", None), ("direktoer", "Direktør", None),
        ("centerchef", "Centerchef", None), ("institutionsleder", "Institutionsleder", None),
        ("afdelingsleder", "Afdelingsleder", None), ("teamleder", "Teamleder", None),
    ],
    "manager_level": [(f"niveau-{i}", f"Niveau {i}", None) for i in range(1, 5)],
    "responsibility": [
        ("personale", "Personale: ansættelse/afskedigelse", None),
        ("sygefravaer", "Personale: Sygefravær", None), ("mus", "MUS-kompetence", None),
        ("budget", "Budgetansvar", None), ("beredskab", "Beredskabsledelse", None),
        ("arbejdsmiljoe", "Arbejdsmiljøansvar", None),
    ],
    "leave_type": [
        ("barselsorlov", "Barselsorlov", None), ("foraeldreorlov", "Forældreorlov", None),
        ("orlov", "Orlov", None),
    ],
    "visibility": [
        ("Public", "Må vises eksternt", "PUBLIC"), ("Intern", "Må vises internt", "INTERNAL"),
        ("Secret", "Hemmelig", "SECRET"),
    ],
    "employee_address_type": [
        ("EmailEmployee", "E-mail", "EMAIL"), ("PhoneEmployee", "Telefon", "PHONE"),
        ("AdressePostEmployee", "Postadresse", "DAR"), ("LocationEmployee", "Lokation", "TEXT"),
    ],
    "org_unit_address_type": [
        ("EmailUnit", "E-mail", "EMAIL"), ("PhoneUnit", "Telefon", "PHONE"),
        ("AddressMailUnit", "Postadresse", "DAR"), ("EAN", "EAN-nummer", "EAN"),
        ("p-nummer", "P-nummer", "PNUMBER"), ("WebUnit", "Webadresse", "WWW"),
        ("LocationUnit", "Henvendelsessted", "TEXT"),
    ],
    "kle_aspect": [
        ("UDFOERENDE", "Udførende", None), ("ANSVARLIG", "Ansvarlig", None),
        ("INDSIGT", "Indsigt", None),
    ],
}

#: Job titles per kind of workplace; names are the class names, user_keys are derived.
TITLES: dict[str, list[str]] = {
    "skole": ["Lærer", "Overlærer", "Skolepædagog", "Skolesekretær", "Skolebibliotekar"],
    "dagtilbud": ["Pædagog", "Pædagogmedhjælper", "Pædagogisk assistent", "Dagplejer"],
    "aeldre": ["Social- og sundhedshjælper", "Social- og sundhedsassistent", "Sygeplejerske",
               "Ergoterapeut", "Fysioterapeut"],
    "social": ["Socialrådgiver", "Socialpædagog", "Familiebehandler", "Psykolog"],
    "teknik": ["Ingeniør", "Arkitekt", "Byggesagsbehandler", "Vejarbejder", "Gartner"],
    "kultur": ["Bibliotekar", "Kulturmedarbejder", "Musikskolelærer"],
    "admin": ["Administrativ medarbejder", "Sagsbehandler", "Konsulent", "Specialkonsulent",
              "Jurist", "Økonom", "IT-medarbejder", "HR-konsulent"],
    "service": ["Servicemedarbejder", "Køkkenassistent", "Rengøringsassistent", "Pedel"],
}
LEADER_TITLES = ["Kommunaldirektør", "Direktør", "Centerchef", "Institutionsleder",
                 "Afdelingsleder", "Teamleder"]
SENSITIVE_TITLES = ["Flexjob", "Skånejob", "Løntilskud"]
OTHER_TITLES = ["Elev", "Studentermedhjælp"]

PLACE_HEADS = ["Birke", "Ege", "Bøge", "Hasle", "Ravns", "Lyng", "Mose", "Sol", "Skov", "Vester",
               "Øster", "Nørre", "Sønder", "Strand", "Kilde", "Enge", "Hvide", "Lille", "Store",
               "Rosen", "Lærke", "Tranebjerg", "Ørne", "Spange"]
PLACE_TAILS = ["bæk", "høj", "lund", "vang", "dal", "holm", "gård", "bjerg", "mark", "toft",
               "sted", "by", "vig", "næs", "ager", "kær"]

# Directorates and their centres: (centre name, kind, weight of institutions it gets).
DIRECTORATES: list[tuple[str, list[tuple[str, str, float]]]] = [
    ("Børn og Unge", [
        ("Center for Skoler", "skole", 5.0), ("Center for Dagtilbud", "dagtilbud", 5.0),
        ("Center for Familie og Forebyggelse", "social", 1.0),
        ("Center for Specialundervisning", "skole", 1.0),
        ("Center for Sundhedspleje", "aeldre", 0.5), ("Ungdomsskolen", "skole", 0.5),
        ("Center for PPR", "social", 0.5), ("Center for Dagpleje", "dagtilbud", 1.0),
    ]),
    ("Social og Sundhed", [
        ("Center for Ældre", "aeldre", 4.0), ("Center for Hjemmepleje", "aeldre", 3.0),
        ("Center for Handicap og Psykiatri", "social", 2.0),
        ("Center for Sundhed", "aeldre", 0.5), ("Center for Myndighed", "admin", 0.5),
        ("Center for Misbrug", "social", 0.5), ("Center for Hjælpemidler", "service", 0.3),
        ("Center for Træning", "aeldre", 0.5),
    ]),
    ("Teknik og Miljø", [
        ("Center for Vej og Park", "teknik", 1.5), ("Center for Byggeri", "teknik", 0.5),
        ("Center for Miljø og Natur", "teknik", 0.5), ("Center for Ejendomme", "service", 1.0),
        ("Center for Forsyning", "teknik", 0.3), ("Center for Plan", "admin", 0.3),
        ("Center for Trafik", "teknik", 0.3), ("Beredskabet", "teknik", 0.3),
    ]),
    ("Økonomi og Personale", [
        ("Center for Økonomi", "admin", 0.5), ("Center for HR", "admin", 0.5),
        ("Center for Digitalisering", "admin", 0.5), ("Center for Politik og Jura", "admin", 0.3),
        ("Center for Indkøb", "admin", 0.3), ("Center for Kommunikation", "admin", 0.2),
        ("Center for Løn", "admin", 0.3), ("Center for Analyse", "admin", 0.2),
    ]),
    ("Arbejdsmarked og Borgerservice", [
        ("Jobcenter", "admin", 1.0), ("Borgerservice", "admin", 0.5),
        ("Center for Integration", "social", 0.5), ("Center for Ydelser", "admin", 0.5),
        ("Center for Unge", "social", 0.3), ("Center for Virksomhedsservice", "admin", 0.2),
        ("Center for Uddannelse", "admin", 0.2), ("Center for Revalidering", "social", 0.2),
    ]),
    ("Kultur og Fritid", [
        ("Center for Biblioteker", "kultur", 0.7), ("Center for Kultur", "kultur", 0.5),
        ("Center for Fritid", "kultur", 0.5), ("Musikskolen", "kultur", 0.3),
        ("Center for Idræt", "kultur", 0.3), ("Center for Museer", "kultur", 0.2),
        ("Center for Foreninger", "kultur", 0.2), ("Center for Turisme", "kultur", 0.1),
    ]),
]

# Institution name patterns and sub-units per kind.
INSTITUTIONS: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "skole": (["{place} Skole", "{place}skolen"],
              [("Indskoling", "skole"), ("Mellemtrin", "skole"), ("Udskoling", "skole"),
               ("SFO", "dagtilbud"), ("Administration", "admin"),
               ("Teknisk service", "service")]),
    "dagtilbud": (["Børnehuset {place}", "Dagtilbud {place}", "{place} Børnehave"],
                  [("Vuggestue", "dagtilbud"), ("Børnehave", "dagtilbud"),
                   ("Køkken", "service")]),
    "aeldre": (["Plejecenter {place}", "Hjemmepleje {place}", "Sundhedshuset {place}"],
               [("Afsnit Nord", "aeldre"), ("Afsnit Syd", "aeldre"), ("Nattevagt", "aeldre"),
                ("Køkken", "service"), ("Aktivitetscenter", "aeldre")]),
    "social": (["Bostedet {place}", "Familiehuset {place}", "Værestedet {place}"],
               [("Team Børn", "social"), ("Team Unge", "social"), ("Team Voksne", "social")]),
    "teknik": (["Materielgården {place}", "Driftsområde {place}"],
               [("Team Grønne områder", "teknik"), ("Team Veje", "teknik"),
                ("Værksted", "service")]),
    "kultur": (["{place} Bibliotek", "Kulturhuset {place}", "{place} Hallen"],
               [("Udlån", "kultur"), ("Formidling", "kultur")]),
    "admin": (["Team {place}", "Afdeling {place}"], []),
    "service": (["Servicecenter {place}", "Kantinen {place}"], [("Rengøring", "service")]),
}

KLE_AREAS = ["Administration", "Skoler", "Dagtilbud", "Ældre", "Handicap", "Familier",
             "Beskæftigelse", "Ydelser", "Veje", "Miljø", "Byggeri", "Kultur", "Sundhed",
             "Ejendomme", "Personale", "Økonomi", "Forsyning", "Beredskab", "Integration",
             "Borgerservice"]
KLE_TOPICS = ["Generelt", "Tilsyn", "Tilskud", "Planlægning", "Klager", "Registrering",
              "Vejledning", "Kontrol", "Ansøgninger", "Samarbejde"]
#: KLE areas (indexes into KLE_AREAS) relevant to each kind of unit.
KIND_KLE: dict[str, list[int]] = {
    "skole": [1, 14], "dagtilbud": [2, 5], "aeldre": [3, 12], "social": [4, 5, 18],
    "teknik": [8, 9, 10, 16], "kultur": [11], "admin": [0, 6, 7, 15, 19], "service": [13, 17],
}

KOMBIT_SYSTEMS = ["Ydelsesrefusion", "Sag og Dokument", "Beskæftigelsesindsats", "Klassifikation",
                  "Organisation Admin", "Fordeling", "Borgerkalender", "Sagsoverblik",
                  "Ydelsesindeks", "Økonomisk Fordeling"]
SAML_SYSTEMS = ["Omsorgssystem", "Skoleportal", "ESDH", "Økonomisystem", "Lønportal",
                "Intranet", "Booking", "Vagtplan", "Journal", "Kvalitetssystem", "Bibliotekssystem",
                "Byggesagssystem"]
ROLE_WORDS = ["Læseadgang", "Sagsbehandler", "Administrator", "Godkender", "Leder",
              "Superbruger", "Registrering", "Rapportering", "Opslag", "Ekspedition"]

# Scale knobs per size: directorates, centres per directorate, non-core IT systems, role groups.
SHAPE: dict[str, dict[str, int]] = {
    "S": {"directorates": 3, "centres": 2, "kombit": 2, "saml": 2, "role_groups": 4},
    "M": {"directorates": 5, "centres": 5, "kombit": 4, "saml": 5, "role_groups": 8},
    "L": {"directorates": 6, "centres": 7, "kombit": 7, "saml": 9, "role_groups": 15},
    "XL": {"directorates": 6, "centres": 8, "kombit": 10, "saml": 12, "role_groups": 20},
}


def _slug(text: str) -> str:
    out = text.lower().translate(str.maketrans({"æ": "ae", "ø": "oe", "å": "aa", " ": "-"}))
    return "".join(ch for ch in out if ch.isalnum() or ch == "-")


class _Unit:
    """A line unit while the tree is built (turned into an exchange row at the end)."""

    __slots__ = ("id", "name", "parent", "depth", "kind", "children", "row", "institution",
                 "weight")

    def __init__(self, ident: str, name: str, parent: _Unit | None, kind: str,
                 weight: float) -> None:
        self.id = ident
        self.name = name
        self.parent = parent
        self.depth = 0 if parent is None else parent.depth + 1
        self.kind = kind
        self.children: list[_Unit] = []
        self.row: dict[str, Any] = {}
        self.institution = False
        self.weight = weight
        if parent is not None:
            parent.children.append(self)


class _Builder:
    """Builds one demo document; one instance per :func:`generate` call."""

    def __init__(self, size: str, seed: int, reference: datetime,
                 progress: Progress | None) -> None:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
        self.size = size
        self.persons_target = SIZES[size]
        self.shape = SHAPE[size]
        self.rng = random.Random(seed)
        self.ref = reference
        self.progress = progress or (lambda _step: None)
        self.doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for key in ("organisation", "facets", "classes", "org_units", "related_units", "persons",
                    "engagements", "associations", "managers", "leaves", "it_systems",
                    "accounts", "addresses", "kles", "system_roles", "job_roles", "role_groups",
                    "account_role_assignments", "unit_role_assignments", "person_kles",
                    "manager_substitutes", "postponed_constraints"):
            self.doc[key] = []
        self.cls: dict[str, dict[str, str]] = {}  # facet -> class user_key -> id
        self.title_ids: dict[str, str] = {}  # title name -> class id
        self._iso_cache: dict[int, str] = {}
        self._day_of: dict[str, int] = {}
        # Fixed instants relative to the reference.
        self.origin_day = -20 * 365  # when the line organisation was (re)founded
        first_next_month = (reference.replace(day=1) + timedelta(days=32)).replace(day=1)
        self.next_month_day = (first_next_month - reference).days
        self.next_week_day = 7

    # -- small helpers

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def at(self, day: int) -> str:
        """ISO datetime (UTC midnight) ``day`` days after the reference."""
        text = self._iso_cache.get(day)
        if text is None:
            text = (self.ref + timedelta(days=day)).isoformat() + "Z"
            self._iso_cache[day] = text
            self._day_of[text] = day
        return text

    def day(self, text: str) -> int:
        """The inverse of :meth:`at` for instants this builder produced."""
        return self._day_of[text]

    def place(self) -> str:
        return self.rng.choice(PLACE_HEADS) + self.rng.choice(PLACE_TAILS)

    def pick_weighted(self, population: list, weights: list[float]) -> Any:
        return self.rng.choices(population, weights)[0]

    # -- phases

    def build(self) -> dict[str, Any]:
        self.progress(PHASES[0])
        self.organisation()
        self.classification()
        self.progress(PHASES[1])
        self.line_units()
        self.payroll_units()
        self.progress(PHASES[2])
        self.people()
        self.progress(PHASES[3])
        self.managers()
        self.med_units()
        self.progress(PHASES[4])
        self.it_systems()
        self.accounts()
        self.addresses()
        self.progress(PHASES[5])
        self.kle()
        self.role_catalogue()
        self.assignments()
        self.rollekatalog_extras()
        return self.doc

    def organisation(self) -> None:
        self.doc["organisation"].append({
            "id": self.uid(), "user_key": "birkeaa", "name": ORGANISATION_NAME,
            "municipality_code": MUNICIPALITY_CODE, "cvr": synthetic_cvr(self.rng),
            "kombit_domain": KOMBIT_DOMAIN,
        })

    def add_class(self, facet: str, user_key: str, name: str, scope: str | None = None,
                  parent: str | None = None, sensitive: bool = False) -> str:
        ident = self.uid()
        self.doc["classes"].append({
            "id": ident, "facet_id": self.facet_ids[facet], "user_key": user_key, "name": name,
            "scope": scope, "parent_id": parent, "sensitive": sensitive,
            "valid_from": self.at(self.origin_day),
        })
        self.cls.setdefault(facet, {})[user_key] = ident
        return ident

    def classification(self) -> None:
        self.facet_ids: dict[str, str] = {}
        for user_key, description in FACETS.items():
            ident = self.uid()
            self.facet_ids[user_key] = ident
            self.doc["facets"].append({"id": ident, "user_key": user_key,
                                       "description": description})
        for facet, classes in CLASSES.items():
            for user_key, name, scope in classes:
                self.add_class(facet, user_key, name, scope)
        names = [t for pool in TITLES.values() for t in pool] + LEADER_TITLES + OTHER_TITLES
        for name in dict.fromkeys(names):
            self.title_ids[name] = self.add_class("engagement_job_function", _slug(name), name)
        for name in SENSITIVE_TITLES:
            self.title_ids[name] = self.add_class("engagement_job_function", _slug(name), name,
                                                  sensitive=True)
        # Synthetic KLE: NN (area) / NN.NN (group) / NN.NN.NN (topic); never the real catalogue.
        self.kle_topics: dict[int, list[str]] = {}
        for area_index, area in enumerate(KLE_AREAS):
            main = f"{10 + area_index * 3:02d}"
            main_id = self.add_class("kle_number", main, f"{main} {area} (syntetisk)")
            topics = self.kle_topics.setdefault(area_index, [])
            for group in range(1, 4):
                code = f"{main}.{group:02d}"
                group_id = self.add_class("kle_number", code,
                                          f"{code} {area}, område {group} (syntetisk)",
                                          parent=main_id)
                for topic in range(5):
                    word = KLE_TOPICS[(group * 5 + topic) % len(KLE_TOPICS)]
                    topic_code = f"{code}.{topic:02d}"
                    topics.append(self.add_class(
                        "kle_number", topic_code, f"{topic_code} {area}: {word} (syntetisk)",
                        parent=group_id))

    # -- units

    def unit_row(self, unit_id: str, name: str, parent_id: str | None, unit_type: str,
                 level: str, hierarchy: str, user_key: str, role_level: int | None = None,
                 inherit_kle: bool = False, valid_from: int | None = None) -> dict[str, Any]:
        row = {
            "id": unit_id, "user_key": user_key, "name": name, "parent_id": parent_id,
            "unit_type_id": self.cls["org_unit_type"][unit_type],
            "unit_level_id": self.cls["org_unit_level"][level],
            "hierarchy_id": self.cls["org_unit_hierarchy"][hierarchy],
            "role_level": role_level, "inherit_kle": inherit_kle,
            "valid_from": self.at(self.origin_day if valid_from is None else valid_from),
            "valid_to": None,
        }
        self.doc["org_units"].append(row)
        return row

    def line_units(self) -> None:
        """Root -> directorates -> centres (+ staff units) -> institutions -> sub-units."""
        rng = self.rng
        budget = max(12, round(self.persons_target / 10 * 0.72))
        self.units: list[_Unit] = []
        counter = iter(range(1, 1_000_000))

        def make(name: str, parent: _Unit | None, kind: str, weight: float) -> _Unit:
            unit = _Unit(self.uid(), name, parent, kind, weight)
            self.units.append(unit)
            return unit

        self.root = make(ORGANISATION_NAME, None, "admin", 0.1)
        directorates = []
        for name, centres in DIRECTORATES[: self.shape["directorates"]]:
            directorate = make(name, self.root, "admin", 0.1)
            directorates.append((directorate, centres[: self.shape["centres"]]))
            make(f"Sekretariat for {name}", directorate, "admin", 1.0)
        centres: list[tuple[_Unit, float]] = []
        for directorate, specs in directorates:
            for name, kind, weight in specs:
                centre = make(name, directorate, kind, 0.4)
                centres.append((centre, weight))
                if rng.random() < 0.5:
                    make(f"{name} - Administration", centre, "admin", 1.0)
        # Institutions with sub-units until the unit budget is spent.
        population = [c for c, _ in centres]
        weights = list(accumulate(w for _, w in centres))
        used_names: set[str] = {u.name for u in self.units}
        while len(self.units) < budget:
            centre = population[bisect(weights, rng.random() * weights[-1])]
            patterns, subs = INSTITUTIONS[centre.kind]
            for _ in range(20):
                name = rng.choice(patterns).format(place=self.place())
                if name not in used_names:
                    break
            used_names.add(name)
            institution = make(name, centre, centre.kind, 0.5 if subs else 1.0)
            institution.institution = True
            if subs:
                count = rng.randint(min(2, len(subs)), len(subs))
                for sub_name, sub_kind in rng.sample(subs, count):
                    make(sub_name, institution, sub_kind, 1.0)
        # A unit that opens next month: a new section of some institution.
        self.institutions = [u for u in self.units if u.institution]
        host = rng.choice(self.institutions)
        self.opening_unit = make("Nyt afsnit (åbner næste måned)", host, host.kind, 0.0)
        for unit in self.units:
            role_level = unit.depth + 1 if unit.depth <= 3 else None
            level = f"N{min(unit.depth + 1, 6)}"
            unit_type = ("kommune", "direktoeromraade", "center", "institution", "afsnit",
                         "afsnit")[min(unit.depth, 5)]
            if unit.depth == 2 and unit.parent and unit.name.startswith("Sekretariat"):
                unit_type = "stab"
            if unit.name.endswith("Administration") and unit.depth == 3:
                unit_type, unit.institution = "stab", False
            if unit.institution and unit.kind == "admin":
                unit_type = "afdeling"
            hierarchy = "linjeorg"
            if unit.institution and unit.kind == "dagtilbud" and rng.random() < 0.1:
                hierarchy = "selvejet"
            inherit_kle = unit.depth == 2 and rng.random() < 0.5
            unit.row = self.unit_row(
                unit.id, unit.name, unit.parent.id if unit.parent else None, unit_type, level,
                hierarchy, f"ADM{next(counter):05d}", role_level=role_level,
                inherit_kle=inherit_kle,
                valid_from=self.next_month_day if unit is self.opening_unit else None)
        self.institutions = [u for u in self.units if u.institution]

    def payroll_units(self) -> None:
        """The SD-style payroll tree mirroring root/directorates/centres/institutions."""
        levels = ["NY3-niveau", "NY2-niveau", "NY1-niveau", "Afdelings-niveau"]
        root_id = self.uid()
        self.unit_row(root_id, "Lønorganisation", None, "loenenhed", "NY4-niveau", "hide",
                      "LOEN")
        codes: set[str] = set()
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        payroll_of: dict[str, str] = {}
        for unit in self.units:
            if unit.depth > 3 or unit is self.opening_unit:
                continue
            if unit.depth == 3 and not unit.institution:
                continue
            parent_id = payroll_of[unit.parent.id] if unit.parent else root_id
            while True:
                code = "".join(self.rng.choice(alphabet) for _ in range(4))
                if code not in codes:
                    codes.add(code)
                    break
            pay_id = self.uid()
            payroll_of[unit.id] = pay_id
            self.unit_row(pay_id, unit.name, parent_id, "loenenhed", levels[unit.depth], "hide",
                          code)
            self.doc["related_units"].append({
                "id": self.uid(), "unit_a_id": pay_id, "unit_b_id": unit.id,
                "valid_from": self.at(self.origin_day), "valid_to": None,
            })

    # -- people

    def new_person(self, start_day: int) -> dict[str, Any]:
        rng = self.rng
        female = rng.random() < 0.55
        given = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
        if rng.random() < 0.12:
            given += " " + rng.choice(FEMALE_NAMES if female else MALE_NAMES)
        surname = rng.choice(SURNAMES)
        if rng.random() < 0.15:
            surname = rng.choice(SURNAMES) + " " + surname
        ref_date = self.ref.date()
        # The CPR number is drawn from its own generator, seeded by one fixed-size draw from
        # the main one: how many tries it takes depends on the birth date, so on the reference
        # day, and the rest of the municipality must not (tests pick people from it on any day).
        cpr_rng = random.Random(rng.getrandbits(64))
        while True:
            born = ref_date - timedelta(days=cpr_rng.randint(18 * 365 + 5, 66 * 365))
            digit7 = cpr_rng.choice(digit7_for(born.year))
            cpr = (f"{born:%d%m}{born.year % 100:02d}{digit7}{cpr_rng.randrange(10)}"
                   + SYNTHETIC_CPR_SUFFIX["female" if female else "male"])
            if cpr not in self.cprs and not _mod11_ok(cpr):
                break
        self.cprs.add(cpr)
        person = {
            "id": self.uid(), "user_key": None, "given_name": given, "surname": surname,
            "nickname_given_name": None, "nickname_surname": None, "cpr": cpr,
            "seniority": (ref_date + timedelta(days=start_day)).isoformat()
            if rng.random() < 0.8 and start_day <= 0 else None,
            "valid_from": self.at((born - ref_date).days), "valid_to": None,
        }
        if rng.random() < 0.02:
            person["nickname_given_name"] = given.split()[0][:3]
            person["nickname_surname"] = surname
        self.doc["persons"].append(person)
        self.person_engagements[person["id"]] = []
        return person

    def engage(self, person: dict[str, Any], unit: _Unit, title: str, primary: bool,
               start_day: int, end_day: int | None = None,
               fraction: int | None = None) -> dict[str, Any]:
        rng = self.rng
        self.employment_no += 1
        if fraction is None:
            fraction = FULL_TIME if rng.random() < 0.7 else rng.choice(
                (370_000, 500_000, 750_000, 810_000, 900_000))
        etype = ("maanedsloennet-fuldtid" if fraction == FULL_TIME
                 else rng.choice(("maanedsloennet-deltid", "timeloennet")))
        if rng.random() < 0.01:
            etype = "ekstern"
        row = {
            "id": self.uid(), "user_key": f"{self.employment_no:06d}",
            "person_id": person["id"], "org_unit_id": unit.id,
            "job_function_id": self.title_ids[title],
            "engagement_type_id": self.cls["engagement_type"][etype],
            "is_primary": primary, "fraction": fraction,
            "do_not_inherit": rng.random() < 0.01,
            "valid_from": self.at(start_day),
            "valid_to": None if end_day is None else self.at(end_day),
        }
        self.doc["engagements"].append(row)
        self.person_engagements[person["id"]].append(row)
        self.unit_members.setdefault(unit.id, []).append(person["id"])
        return row

    def title_for(self, unit: _Unit) -> str:
        roll = self.rng.random()
        if roll < 0.015:
            return self.rng.choice(SENSITIVE_TITLES)
        if roll < 0.03:
            return self.rng.choice(OTHER_TITLES)
        return self.rng.choice(TITLES[unit.kind])

    def start_day(self, unit: _Unit) -> int:
        """A past start date after the unit was founded, skewed towards recent years."""
        span = -self.origin_day
        return -1 - int(span * (self.rng.random() ** 1.6))

    def people(self) -> None:
        rng = self.rng
        self.cprs: set[str] = set()
        self.person_engagements: dict[str, list[dict[str, Any]]] = {}
        self.unit_members: dict[str, list[str]] = {}
        self.employment_no = 10_000
        self.manager_of: dict[str, dict[str, Any] | None] = {}
        self.leavers: set[str] = set()
        self.new_hires: set[str] = set()
        leader_titles = ["Kommunaldirektør", "Direktør", "Centerchef", "Institutionsleder",
                         "Afdelingsleder"]
        # One manager per line unit (about 5 % vacant); the manager is engaged in the unit.
        for unit in self.units:
            if unit is self.opening_unit or rng.random() < 0.05 and unit.depth > 0:
                self.manager_of[unit.id] = None
                continue
            start = self.start_day(unit)
            person = self.new_person(start)
            title = leader_titles[min(unit.depth, 4)]
            self.engage(person, unit, title, True, start, fraction=FULL_TIME)
            self.manager_of[unit.id] = person
        # Everyone else, placed by unit weight.
        placeable = [u for u in self.units if u.weight > 0]
        cumulative = list(accumulate(u.weight for u in placeable))
        total = cumulative[-1]
        remaining = self.persons_target - len(self.doc["persons"])
        for _ in range(max(0, remaining)):
            unit = placeable[bisect(cumulative, rng.random() * total)]
            roll = rng.random()
            if roll < 0.01:  # new hire: starts next month
                start, end = self.next_month_day, None
            elif roll < 0.02:  # leaver: ends next week
                start, end = self.start_day(unit), self.next_week_day
            else:
                start, end = self.start_day(unit), None
            person = self.new_person(start)
            if start > 0:
                self.new_hires.add(person["id"])
            if end is not None:
                self.leavers.add(person["id"])
            self.engage(person, unit, self.title_for(unit), True, start, end)
            if start <= 0 and end is None and rng.random() < 0.05:
                # History: an earlier engagement elsewhere that ended when this one began.
                other = placeable[bisect(cumulative, rng.random() * total)]
                earlier = start - rng.randint(200, 2000)
                if earlier > self.origin_day:
                    self.engage(person, other, self.title_for(other), False, earlier, start)
            extra = 0
            roll = rng.random()
            if roll < 0.015:
                extra = 2
            elif roll < 0.125:
                extra = 1
            for _ in range(extra):
                other = placeable[bisect(cumulative, rng.random() * total)]
                second_start = max(start, self.start_day(other))
                if start <= 0 and end is None and rng.random() < 0.03:
                    second_start = self.next_month_day
                self.engage(person, other, self.title_for(other), False, second_start, end,
                            fraction=rng.choice((100_000, 200_000, 250_000, 370_000)))
        # New hires of the opening unit.
        opening_hires = [p for p in self.doc["persons"] if p["id"] in self.new_hires][:4]
        for person in opening_hires:
            self.engage(person, self.opening_unit, self.title_for(self.opening_unit), False,
                        self.next_month_day, fraction=200_000)
        # Leaves on about 2 % of current engagements.
        leave_types = list(self.cls["leave_type"].values())
        for row in self.doc["engagements"]:
            if row["valid_to"] is None and row["valid_from"] < self.at(-30) \
                    and rng.random() < 0.02:
                start = max(-rng.randint(1, 200), self.day(row["valid_from"]) + 1)
                self.doc["leaves"].append({
                    "id": self.uid(), "person_id": row["person_id"], "engagement_id": row["id"],
                    "leave_type_id": rng.choice(leave_types), "valid_from": self.at(start),
                    "valid_to": self.at(start + rng.randint(30, 365)),
                })

    def managers(self) -> None:
        rng = self.rng
        mtypes = ["kommunaldirektoer", "direktoer", "centerchef", "institutionsleder",
                  "afdelingsleder", "teamleder"]
        responsibilities = list(self.cls["responsibility"].values())
        for unit in self.units:
            person = self.manager_of.get(unit.id)
            level = min(unit.depth + 1, 4)
            self.doc["managers"].append({
                "id": self.uid(), "user_key": None,
                "person_id": person["id"] if person else None, "org_unit_id": unit.id,
                "manager_type_id": self.cls["manager_type"][mtypes[min(unit.depth, 5)]],
                "manager_level_id": self.cls["manager_level"][f"niveau-{level}"],
                "valid_from": self.at(self.next_month_day if unit is self.opening_unit
                                      else self.person_start(person)),
                "valid_to": None,
                "responsibility_ids": sorted(rng.sample(responsibilities, rng.randint(1, 3))),
            })

    def person_start(self, person: dict[str, Any] | None) -> int:
        if person is None:
            return self.origin_day
        return min(self.day(e["valid_from"]) for e in self.person_engagements[person["id"]])

    def subtree_members(self, unit: _Unit, limit: int = 200) -> list[str]:
        members: list[str] = []
        stack = [unit]
        while stack and len(members) < limit:
            node = stack.pop()
            members.extend(self.unit_members.get(node.id, []))
            stack.extend(reversed(node.children))
        return members

    def med_units(self) -> None:
        """The MED (co-determination) tree, staffed through associations."""
        rng = self.rng
        unions = list(self.cls["trade_union"].values())
        counter = iter(range(1, 100_000))

        def staff(med_id: str, line: _Unit) -> None:
            members = [p for p in self.subtree_members(line) if p not in self.new_hires]
            members = members or [p["id"] for p in self.doc["persons"][:10]]
            chair = self.manager_of.get(line.id)
            posts = [("lr-formand", chair["id"] if chair else None, None),
                     ("lr-naestformand", rng.choice(members), rng.choice(unions))]
            for _ in range(rng.randint(1, 2)):
                posts.append(("tr", rng.choice(members), rng.choice(unions)))
            for _ in range(rng.randint(1, 2)):
                posts.append(("amr", rng.choice(members), None))
            for atype, person_id, union in posts:
                if rng.random() < 0.05:
                    person_id = None  # vacant post
                self.doc["associations"].append({
                    "id": self.uid(), "user_key": None, "person_id": person_id,
                    "org_unit_id": med_id,
                    "association_type_id": self.cls["association_type"][atype],
                    "trade_union_id": union, "job_function_id": None,
                    "valid_from": self.at(-rng.randint(30, 1500)), "valid_to": None,
                })

        main_id = self.uid()
        self.unit_row(main_id, "Hoved-MED", None, "hoved-med", "N1", "NA", "MED000")
        staff(main_id, self.root)
        for directorate in self.root.children:
            center_med = self.uid()
            self.unit_row(center_med, f"Center-MED {directorate.name}", main_id, "center-med",
                          "N2", "NA", f"MED{next(counter):03d}")
            staff(center_med, directorate)
            for centre in directorate.children:
                if centre.depth != 2 or centre.name.startswith("Sekretariat"):
                    continue
                local = self.uid()
                self.unit_row(local, f"Lokal-MED {centre.name}", center_med, "lokal-med", "N3",
                              "NA", f"MED{next(counter):03d}")
                staff(local, centre)

    # -- IT

    def it_systems(self) -> None:
        self.systems: list[dict[str, Any]] = []

        def add(user_key: str, name: str, system_type: str) -> dict[str, Any]:
            row = {"id": self.uid(), "user_key": user_key, "name": name,
                   "system_type": system_type, "valid_from": self.at(self.origin_day),
                   "valid_to": None}
            self.doc["it_systems"].append(row)
            self.systems.append(row)
            return row

        self.ad = add("AD", "Active Directory", "AD")
        self.fk = add("FK-Organisation", "FK Organisation", "KOMBIT")
        for name in KOMBIT_SYSTEMS[: self.shape["kombit"]]:
            add(f"KOMBIT-{_slug(name)}", f"KOMBIT {name}", "KOMBIT")
        for name in SAML_SYSTEMS[: self.shape["saml"]]:
            add(_slug(name), name, "SAML")

    def accounts(self) -> None:
        rng = self.rng
        usernames = UsernameGenerator()
        self.ad_accounts: dict[str, list[dict[str, Any]]] = {}
        self.account_links: list[tuple[str, str]] = []
        for person in self.doc["persons"]:
            engagements = self.person_engagements[person["id"]]
            current = [e for e in engagements
                       if e["valid_to"] is None or e["valid_to"] > self.at(0)]
            if not current:
                continue
            start = min(e["valid_from"] for e in current)
            ends = [e["valid_to"] for e in current]
            end = None if None in ends else max(ends)
            username = usernames.allocate(person["given_name"], person["surname"])
            scoped = sorted(e["id"] for e in current)
            ad = {"id": self.uid(), "username": username, "external_id": self.uid(),
                  "it_system_id": self.ad["id"], "person_id": person["id"], "is_primary": True,
                  "valid_from": start, "valid_to": end, "engagement_ids": scoped}
            fk = {"id": self.uid(), "username": username, "external_id": self.uid(),
                  "it_system_id": self.fk["id"], "person_id": person["id"], "is_primary": True,
                  "valid_from": start, "valid_to": end, "engagement_ids": scoped}
            self.doc["accounts"] += [ad, fk]
            self.ad_accounts[person["id"]] = [ad]
            if len(current) > 1 and rng.random() < 0.15:
                # A second AD account scoped to the secondary engagement.
                secondary = next(e for e in current if not e["is_primary"])
                extra = {"id": self.uid(),
                         "username": usernames.allocate(person["given_name"],
                                                        person["surname"]),
                         "external_id": self.uid(), "it_system_id": self.ad["id"],
                         "person_id": person["id"], "is_primary": False,
                         "valid_from": secondary["valid_from"],
                         "valid_to": secondary["valid_to"],
                         "engagement_ids": [secondary["id"]]}
                self.doc["accounts"].append(extra)
                self.ad_accounts[person["id"]].append(extra)

    def addresses(self) -> None:
        rng = self.rng
        emp = self.cls["employee_address_type"]
        unit_types = self.cls["org_unit_address_type"]
        vis = self.cls["visibility"]
        public, internal, secret = vis["Public"], vis["Intern"], vis["Secret"]
        rows = self.doc["addresses"]
        for person in self.doc["persons"]:
            accounts = self.ad_accounts.get(person["id"])
            if not accounts:
                continue
            primary = next(e for e in self.person_engagements[person["id"]] if e["is_primary"])
            for account in accounts:
                rows.append({
                    "id": self.uid(), "address_type_id": emp["EmailEmployee"],
                    "visibility_id": public if rng.random() < 0.75 else internal,
                    "value": f"{account['username']}@{MAIL_DOMAIN}",
                    "person_id": person["id"], "org_unit_id": None, "engagement_id": None,
                    "account_id": account["id"], "valid_from": account["valid_from"],
                    "valid_to": account["valid_to"],
                })
            if rng.random() < 0.85:
                roll = rng.random()
                visibility = internal if roll < 0.55 else public if roll < 0.95 else secret
                rows.append({
                    "id": self.uid(), "address_type_id": emp["PhoneEmployee"],
                    "visibility_id": visibility, "value": f"+45 {rng.randint(20, 99)} "
                    f"{rng.randint(0, 99):02d} {rng.randint(0, 99):02d} {rng.randint(0, 99):02d}",
                    "person_id": person["id"], "org_unit_id": None,
                    "engagement_id": primary["id"] if rng.random() < 0.5 else None,
                    "account_id": None, "valid_from": primary["valid_from"],
                    "valid_to": primary["valid_to"],
                })
            if rng.random() < 0.03:
                rows.append({
                    "id": self.uid(), "address_type_id": emp["AdressePostEmployee"],
                    "visibility_id": secret, "value": self.uid(), "person_id": person["id"],
                    "org_unit_id": None, "engagement_id": None, "account_id": None,
                    "valid_from": primary["valid_from"], "valid_to": None,
                })
        for unit in self.units:
            start = unit.row["valid_from"]
            slug = _slug(unit.name)[:40]

            def unit_address(kind: str, value: str, visibility: str | None,
                             _unit: _Unit = unit, _start: str = start) -> None:
                rows.append({
                    "id": self.uid(), "address_type_id": unit_types[kind],
                    "visibility_id": visibility, "value": value, "person_id": None,
                    "org_unit_id": _unit.id, "engagement_id": None, "account_id": None,
                    "valid_from": _start, "valid_to": None,
                })

            unit_address("EmailUnit", f"{slug}@{MAIL_DOMAIN}", public)
            unit_address("PhoneUnit", f"+45 99 {rng.randint(10, 99)} {rng.randint(10, 99)} "
                         f"{rng.randint(10, 99)}", public)
            if unit.institution or unit.depth == 2:
                unit_address("EAN", f"5798{rng.randrange(10**9):09d}", public)
                unit_address("p-nummer", f"10{rng.randrange(10**8):08d}", public)
                unit_address("AddressMailUnit", self.uid(), public)
                unit_address("LocationUnit", f"{self.place()}vej {rng.randint(1, 120)}, "
                             f"{POSTCODE} Birkeå", public)
            if unit.depth <= 1:
                unit_address("WebUnit", f"https://www.{MAIL_DOMAIN}/{slug}", public)

    # -- KLE and roles

    def kle(self) -> None:
        rng = self.rng
        aspects = self.cls["kle_aspect"]
        responsible: set[str] = set()
        for unit in self.units:
            if unit.depth < 2 or unit is self.opening_unit:
                continue
            if not (unit.depth == 2 or unit.institution or unit.kind == "admin"):
                continue
            areas = KIND_KLE[unit.kind]
            count = rng.randint(2, 4) if unit.depth == 2 else rng.randint(1, 3)
            topics = list(dict.fromkeys(
                rng.choice(self.kle_topics[rng.choice(areas)]) for _ in range(count)))
            for topic in topics:
                chosen = [key for key in ("UDFOERENDE", "INDSIGT") if rng.random() < 0.6]
                if topic not in responsible and (unit.depth == 2 or rng.random() < 0.3):
                    responsible.add(topic)
                    chosen.append("ANSVARLIG")
                if not chosen:
                    chosen = ["UDFOERENDE"]
                self.doc["kles"].append({
                    "id": self.uid(), "org_unit_id": unit.id, "kle_number_id": topic,
                    "valid_from": unit.row["valid_from"], "valid_to": None,
                    "aspect_ids": sorted(aspects[key] for key in chosen),
                })

    def role_catalogue(self) -> None:
        rng = self.rng
        value_types = ["INHERITED", "EXTENDED_INHERITED", "LEVEL_2"]
        self.job_roles: list[dict[str, Any]] = []
        since = self.at(self.origin_day)
        for system in self.systems:
            if system is self.fk:
                continue
            slug = _slug(system["user_key"])
            words = rng.sample(ROLE_WORDS, rng.randint(3, 6))
            system_roles = []
            for word in words:
                if system is self.ad:
                    identifier = f"CN=GRP-{_slug(word)},OU=Grupper,DC=birkeaa,DC=example"
                else:
                    identifier = (f"http://{KOMBIT_DOMAIN}/roles/usersystemrole/"
                                  f"{slug}-{_slug(word)}/1")
                row = {"id": self.uid(), "it_system_id": system["id"], "identifier": identifier,
                       "name": f"{system['name']}: {word}", "description": None,
                       "role_type": rng.choice(("BOTH", "DATA_ROLE", "FUNCTION_ROLE")),
                       "valid_from": since, "valid_to": None}
                self.doc["system_roles"].append(row)
                system_roles.append(row)
            for index in range(rng.randint(2, 4)):
                bundled = rng.sample(system_roles, rng.randint(1, min(3, len(system_roles))))
                items = []
                for system_role in bundled:
                    ctype = cvtype = None
                    if system["system_type"] == "KOMBIT" and rng.random() < 0.6:
                        if rng.random() < 0.7:
                            ctype, cvtype = ORG_CONSTRAINT, rng.choice(value_types)
                        else:
                            ctype, cvtype = KLE_CONSTRAINT, "INHERITED"
                    items.append({"id": self.uid(), "system_role_id": system_role["id"],
                                  "constraint_type": ctype, "constraint_value_type": cvtype,
                                  "constraint_value": None})
                name = f"{system['name']} - {words[index % len(words)]}"
                job_role = {
                    "id": self.uid(), "it_system_id": system["id"],
                    "identifier": f"{slug}-jobrolle-{index + 1}", "name": name,
                    "description": f"Jobfunktionsrolle i {system['name']}",
                    "sensitive": rng.random() < 0.1, "valid_from": since, "valid_to": None,
                    "system_roles": items,
                }
                self.doc["job_roles"].append(job_role)
                self.job_roles.append(job_role)
        self.role_groups: list[dict[str, Any]] = []
        for index in range(self.shape["role_groups"]):
            members = rng.sample(self.job_roles, rng.randint(2, min(5, len(self.job_roles))))
            name = "Alle medarbejdere" if index == 0 else f"Rollebuket {index + 1}"
            group = {"id": self.uid(), "identifier": f"rollebuket-{index + 1}", "name": name,
                     "description": None, "valid_from": since, "valid_to": None,
                     "job_role_ids": sorted(m["id"] for m in members)}
            self.doc["role_groups"].append(group)
            self.role_groups.append(group)

    def assignments(self) -> None:
        rng = self.rng
        since = self.at(self.origin_day)
        # Direct assignments to about 4 % of the AD accounts.
        ad_accounts = [a for accounts in self.ad_accounts.values() for a in accounts]
        for account in ad_accounts:
            if rng.random() >= 0.04:
                continue
            roll = rng.random()
            start, end = account["valid_from"], account["valid_to"]
            if roll < 0.05 and end is None and start <= self.at(0):
                end = self.at(self.next_week_day)
            elif roll < 0.10 and start <= self.at(0) and end is None:
                start = self.at(self.next_month_day)
            use_group = rng.random() < 0.2
            self.doc["account_role_assignments"].append({
                "id": self.uid(), "account_id": account["id"],
                "job_role_id": None if use_group else rng.choice(self.job_roles)["id"],
                "role_group_id": rng.choice(self.role_groups)["id"] if use_group else None,
                "valid_from": start, "valid_to": end,
            })
        # Unit assignments: everyone's baseline at the root, then about 12 % of the units.
        rows = self.doc["unit_role_assignments"]

        def assign(unit: _Unit, **overrides: Any) -> dict[str, Any]:
            use_group = rng.random() < 0.25
            row = {"id": self.uid(), "org_unit_id": unit.id,
                   "job_role_id": None if use_group else rng.choice(self.job_roles)["id"],
                   "role_group_id": rng.choice(self.role_groups)["id"] if use_group else None,
                   "inherit": rng.random() < 0.6, "manager_only": False, "title_mode": "NONE",
                   "valid_from": unit.row["valid_from"], "valid_to": None,
                   "title_ids": [], "excepted_account_ids": [], "excepted_unit_ids": []}
            row.update(overrides)
            rows.append(row)
            return row

        assign(self.root, job_role_id=None, role_group_id=self.role_groups[0]["id"],
               inherit=True, valid_from=since)
        candidates = [u for u in self.units if u is not self.root and u is not self.opening_unit]
        with_children = [u for u in candidates if u.children]
        # Every feature at least once, whatever the size; then about 12 % of units at random.
        features = ["positive", "negative", "excepted_account", "excepted_unit", "manager_only",
                    "starts_next_month", "ends_next_week", "no_inherit"]
        planned = [(rng.choice(with_children if f == "excepted_unit" else candidates), f)
                   for f in features]
        planned += [(u, rng.choice(features + ["plain"] * 12)) for u in candidates
                    if rng.random() < 0.12]
        for unit, feature in planned:
            row = assign(unit)
            pool = TITLES.get(unit.kind, TITLES["admin"])
            if feature in ("positive", "negative"):
                row["title_mode"] = feature.upper()
                row["title_ids"] = sorted({self.title_ids[t] for t in
                                           rng.sample(pool, rng.randint(1, min(3, len(pool))))})
            elif feature == "excepted_account":
                members = self.subtree_members(unit, limit=20)
                accounts = [self.ad_accounts[p][0]["id"] for p in members
                            if p in self.ad_accounts][:2]
                row["excepted_account_ids"] = sorted(set(accounts))
                row["inherit"] = True
            elif feature == "excepted_unit" and unit.children:
                row["excepted_unit_ids"] = [rng.choice(unit.children).id]
                row["inherit"] = True
            elif feature == "manager_only":
                row["manager_only"] = True
            elif feature == "starts_next_month":
                row["valid_from"] = self.at(self.next_month_day)
            elif feature == "ends_next_week":
                row["valid_to"] = self.at(self.next_week_day)
            elif feature == "no_inherit":
                row["inherit"] = False
        assign(self.opening_unit, valid_from=self.at(self.next_month_day))

    def rollekatalog_extras(self) -> None:
        """What OS2rollekatalog adds beyond the basic catalogue, each at least once: KOMBIT
        constraint identifiers (as if imported; a few links left without, so the made-up
        fallback shows), the other value types, person KLE, manager substitutes, a delegated
        role, an access-blocked IT system, a role with postponed constraints and weighted
        system roles (:meth:`postponed_role`). Runs last, so everything before it is the same
        as without it."""
        rng = self.rng
        aspects = self.cls["kle_aspect"]
        links = [(role, link) for role in self.job_roles for link in role["system_roles"]
                 if link["constraint_type"]]
        unit_ids = [u.id for u in self.units if u.children and u is not self.root]
        extra_types = [(ORG_CONSTRAINT, "INHERITED_FROM_MANAGER_ROLE"),
                       (ORG_CONSTRAINT, "EXTENDED_INHERITED_FROM_MANAGER_ROLE"),
                       (ORG_CONSTRAINT, "INHERITED_FROM_FUNCTIONS"),
                       (ORG_CONSTRAINT, "EXTENDED_INHERITED_FROM_FUNCTIONS"),
                       (ORG_CONSTRAINT, "SELECTED_INHERITED"),
                       (KLE_CONSTRAINT, "EXTENDED_INHERITED"),
                       (KLE_CONSTRAINT, "READ_AND_WRITE")]
        kombit_roles = [role for role, _link in links]
        for number, (ctype, cvtype) in enumerate(extra_types):
            role = kombit_roles[(number * 7) % len(kombit_roles)]
            value = None
            if cvtype == "SELECTED_INHERITED":
                parent = rng.choice(unit_ids)
                child = next(u for u in self.units if u.id == parent).children[0].id
                value = f"+{parent},-{child}"
            link = {"id": self.uid(), "system_role_id": role["system_roles"][0]["system_role_id"],
                    "constraint_type": ctype, "constraint_value_type": cvtype,
                    "constraint_value": value}
            role["system_roles"].append(link)
            links.append((role, link))
        for number, (_role, link) in enumerate(links):
            if number % 5 != 4:
                link["constraint_identifier"] = (f"http://{KOMBIT_DOMAIN}/id-{1000 + number}-"
                                                 f"{2000 + number}-{number % 7 + 1}/1/parametric")
        # Person KLE on about 3 % of the persons.
        topics = [t for area in self.kle_topics.values() for t in area]
        for person in self.doc["persons"]:
            if rng.random() >= 0.03:
                continue
            for topic in rng.sample(topics, rng.randint(1, 2)):
                self.doc["person_kles"].append({
                    "id": self.uid(), "person_id": person["id"], "kle_number_id": topic,
                    "aspect_id": aspects[rng.choice(("UDFOERENDE", "INDSIGT"))],
                    "valid_from": person["valid_from"], "valid_to": None})
        # A manager substitute for about 10 % of the managed units, and for at least one
        # (the role API serves them, so every demo has one to show).
        for manager in self.doc["managers"]:
            members = [p for p in self.unit_members.get(manager["org_unit_id"], [])
                       if p != manager["person_id"]]
            if manager["person_id"] is None or not members or (
                    rng.random() >= 0.1 and self.doc["manager_substitutes"]):
                continue
            self.doc["manager_substitutes"].append({
                "id": self.uid(), "person_id": rng.choice(members),
                "org_unit_id": manager["org_unit_id"], "manager_id": manager["id"],
                "valid_from": manager["valid_from"], "valid_to": None})
        # A role delegated by a neighbouring municipality, held directly by a few accounts.
        kombit = next(s for s in self.systems if s["system_type"] == "KOMBIT"
                      and s is not self.fk)
        delegated = {
            "id": self.uid(), "it_system_id": kombit["id"], "identifier":
            f"http://{KOMBIT_DOMAIN}/roles/jobrole/delegeret-sagsbehandler/1",
            "name": "Delegeret sagsbehandler", "description": "Delegeret fra nabokommunen",
            "sensitive": False, "delegated_from_cvr": synthetic_cvr(rng),
            "valid_from": self.at(self.origin_day), "valid_to": None, "system_roles": []}
        self.doc["job_roles"].append(delegated)
        ad_accounts = [a for accounts in self.ad_accounts.values() for a in accounts
                       if a["valid_to"] is None]
        for account in rng.sample(ad_accounts, min(5, len(ad_accounts))):
            self.doc["account_role_assignments"].append({
                "id": self.uid(), "account_id": account["id"], "job_role_id": delegated["id"],
                "role_group_id": None, "valid_from": account["valid_from"], "valid_to": None})
        # The last SAML system is access-blocked: catalogued and assigned (to a few accounts
        # directly, whatever else the demo assigns), never handed out.
        saml = [s for s in self.systems if s["system_type"] == "SAML"]
        if saml:
            saml[-1]["access_blocked"] = True
            blocked_role = next(r for r in self.job_roles if r["it_system_id"] == saml[-1]["id"])
            for account in rng.sample(ad_accounts, min(3, len(ad_accounts))):
                self.doc["account_role_assignments"].append({
                    "id": self.uid(), "account_id": account["id"],
                    "job_role_id": blocked_role["id"], "role_group_id": None,
                    "valid_from": account["valid_from"], "valid_to": None})
        self.postponed_role(kombit, ad_accounts)

    def postponed_role(self, kombit: dict[str, Any], ad_accounts: list[dict[str, Any]]) -> None:
        """A KOMBIT role whose org-unit and KLE constraints are POSTPONED (given per
        assignment, OS2rollekatalog's ``allowPostponing``), assigned directly to a few
        accounts with their own values: one account holds it twice with different values
        (two privilege groups), one without a KLE value (that constraint is left out). The
        system role carrying the org-unit constraint weighs 2, so in ``rolesAsList`` it
        outranks the system's other system roles for whoever holds it."""
        rng = self.rng
        own = [r for r in self.doc["system_roles"] if r["it_system_id"] == kombit["id"]]
        writer, reader = own[0], own[1]
        writer["weight"] = 2
        role = {
            "id": self.uid(), "it_system_id": kombit["id"],
            "identifier": f"{_slug(kombit['user_key'])}-udskudt-afgraensning",
            "name": f"{kombit['name']} - udskudt afgrænsning",
            "description": "Afgrænsningen angives ved tildelingen", "sensitive": False,
            "allow_postponing": True, "valid_from": self.at(self.origin_day),
            "valid_to": None, "system_roles": []}
        for number, (system_role, ctype) in enumerate(((writer, ORG_CONSTRAINT),
                                                       (reader, KLE_CONSTRAINT))):
            role["system_roles"].append({
                "id": self.uid(), "system_role_id": system_role["id"],
                "constraint_type": ctype, "constraint_value_type": "POSTPONED",
                "constraint_value": None,
                "constraint_identifier": (f"http://{KOMBIT_DOMAIN}/id-{3000 + number}-"
                                          f"{4000 + number}-{number + 1}/1/parametric")})
        self.doc["job_roles"].append(role)
        units = [u.id for u in self.units if u is not self.root]
        codes = sorted(code for code in self.cls["kle_number"] if len(code) == 8)
        holders = rng.sample([a for a in ad_accounts if a["valid_from"] <= self.at(0)],
                             min(4, len(ad_accounts)))
        for number, account in enumerate([*holders, holders[0]]):
            assignment = {"id": self.uid(), "account_id": account["id"],
                          "job_role_id": role["id"], "role_group_id": None,
                          "valid_from": account["valid_from"], "valid_to": None}
            self.doc["account_role_assignments"].append(assignment)
            values = [(writer, ORG_CONSTRAINT, ",".join(sorted(rng.sample(units, 2))))]
            if number != 1:
                values.append((reader, KLE_CONSTRAINT, ",".join(sorted(rng.sample(codes, 2)))))
            for system_role, ctype, value in values:
                self.doc["postponed_constraints"].append({
                    "id": self.uid(), "assignment_id": assignment["id"],
                    "system_role_id": system_role["id"], "constraint_type": ctype,
                    "value": value})


def generate(size: str, seed: int = 1, reference: datetime | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """A demo municipality of ``size`` (S, M, L or XL) as an exchange-format document.

    Same ``size``, ``seed`` and ``reference`` (default: today at midnight UTC) give an identical
    document. ``progress`` is called with the name of each phase as it starts.
    """
    reference = default_reference() if reference is None else reference
    if reference.tzinfo is not None:
        reference = reference.astimezone(UTC).replace(tzinfo=None)
    return _Builder(size, seed, reference, progress).build()


def counts(doc: dict[str, Any]) -> dict[str, int]:
    """Objects per table of a document (link lists not counted)."""
    return {key: len(value) for key, value in doc.items() if isinstance(value, list)}


__all__ = ["SIZES", "SYNTHETIC_CPR_SUFFIX", "generate", "counts", "default_reference",
           "synthetic_cvr"]
