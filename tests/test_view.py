"""What a client sees (idm_facade.directory.view.ClientView) on a hand-built organisation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from idm_facade.directory import Directory, Policy
from idm_facade.directory import filters as f
from idm_facade.directory.policy import ACCOUNTS_ONLY, ALL
from idm_facade.directory.view import ClientView
from store.engine import make_engine
from tests.orgbuilder import OrgBuilder

PUBLIC = Policy(name="public")
INTERNAL = Policy(name="internal", max_visibility="INTERNAL", internal=True)


@dataclass
class Org:
    directory: Directory
    anna: str  # account with CPR, sensitive title, PUBLIC + INTERNAL e-mail
    bo: str  # account in the other directorate
    anna_person: str
    bo_person: str
    a: str
    b: str


@pytest.fixture(scope="module")
def org(tmp_path_factory) -> Org:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('view') / 'idm.db'}")
    b = OrgBuilder(engine)
    root = b.unit("Kommunen")
    unit_a = b.unit("Social", root, user_key="SOC")
    unit_b = b.unit("Teknik", root, user_key="TEK")
    anna_p = b.person("Anna", "Hansen", cpr="0101901234")
    eng = b.engagement(anna_p, unit_a, title=b.title("Fleksjob", sensitive=True))
    anna = b.account(anna_p, "anna", engagements=(eng,))
    b.address("anna@kommune.dk", "EMAIL", "PUBLIC", person_id=anna_p)
    b.address("anna.intern@kommune.dk", "EMAIL", "INTERNAL", person_id=anna_p)
    b.address("Hemmeligvej 1", "DAR", "SECRET", person_id=anna_p)
    b.address("Rådhuspladsen 1", "DAR", "INTERNAL", person_id=anna_p)
    bo_p = b.person("Bo", "Berg", cpr="0202901234")
    bo = b.account(bo_p, "bo", engagements=(b.engagement(bo_p, unit_b),))
    directory = Directory(engine)
    return Org(directory, anna, bo, anna_p, bo_p, unit_a, unit_b)


def test_cpr_only_with_grant(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    assert seen(org, PUBLIC).values(entry, "cpr") == ()
    assert seen(org, INTERNAL).values(entry, "cpr") == ()
    assert seen(org, ALL).values(entry, "cpr") == ("0101901234",)
    assert "cpr" not in seen(org, INTERNAL).attrs(entry)
    assert seen(org, ALL).attrs(entry)["cpr"] == ("0101901234",)


def test_internal_addresses_hidden_from_public_clients(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    assert seen(org, PUBLIC).values(entry, "emails.value") == ("anna@kommune.dk",)
    assert set(seen(org, INTERNAL).values(entry, "emails.value")) == {
        "anna@kommune.dk", "anna.intern@kommune.dk"}
    public = seen(org, PUBLIC).complex(entry, "emails")
    assert [e["value"] for e in public] == ["anna@kommune.dk"]
    assert all("visibility" not in e for e in public)
    assert seen(org, PUBLIC).complex(entry, "addresses") == ()
    internal = seen(org, INTERNAL).complex(entry, "addresses")
    assert [a["formatted"] for a in internal] == ["Rådhuspladsen 1"]
    # INTERNAL without internal=True is never granted
    external = Policy(name="x", max_visibility="INTERNAL", internal=False)
    assert seen(org, external).values(entry, "emails.value") == ("anna@kommune.dk",)


def test_secret_addresses_never_shown(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    everything = [e.get("formatted") for e in seen(org, ALL).complex(entry, "addresses")]
    assert "Hemmeligvej 1" not in everything
    assert "Hemmeligvej 1" not in str(seen(org, ALL).attrs(entry))


def test_sensitive_titles_masked(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    assert seen(org, PUBLIC).values(entry, "title") == ()
    assert seen(org, ALL).values(entry, "title") == ("Fleksjob",)
    (masked,) = seen(org, PUBLIC).complex(entry, "engagements")
    assert "title" not in masked and "titleSensitive" not in masked
    assert masked["unit"] == org.a
    (shown,) = seen(org, ALL).complex(entry, "engagements")
    assert shown["title"] == "Fleksjob"
    # the snapshot's own element is untouched
    assert entry.complex["engagements"][0]["titleSensitive"] is True


def test_attribute_restriction(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    narrow = Policy(name="n", attributes=frozenset({"displayName", "emails.value"}))
    attrs = seen(org, narrow).attrs(entry)
    assert set(attrs) == {"id", "kind", "userName", "displayName", "emails.value"}
    assert seen(org, narrow).complex(entry, "emails") == ({"value": "anna@kommune.dk"},)
    assert seen(org, narrow).complex(entry, "engagements") == ()


def test_subtree_policy_hides_references(org: Org) -> None:
    snap = org.directory.snapshot
    only_a = seen(org, Policy(name="a", subtrees=(org.a,)))
    everything = seen(org, ALL)
    assert only_a.get(org.anna) is not None and only_a.get(org.bo) is None
    unit_a = only_a.get(org.a)
    assert unit_a is not None
    # the parent unit is outside the subtree: the reference is not there
    assert only_a.values(unit_a, "parent") == ()
    assert everything.values(snap.get(org.a), "parent") == snap.get(org.a).attrs["parent"]
    assert only_a.values(only_a.get(org.anna), "unit") == (org.a,)


def test_disclosed_subjects_and_sensitive(org: Org) -> None:
    snap = org.directory.snapshot
    entries = [snap.get(org.anna), snap.get(org.bo), snap.get(org.a)]
    public, everything = seen(org, PUBLIC), seen(org, ALL)
    assert public.subjects(entries) == sorted([org.anna_person, org.bo_person])
    # a unit discloses its members only when member values were returned
    assert public.subjects([snap.get(org.a)]) == []
    assert public.subjects([snap.get(org.a)], members=True) == [org.anna_person]
    assert public.sensitive(entries, None) == []
    assert everything.sensitive(entries, None) == ["cpr", "sensitiveTitle"]
    assert everything.sensitive(entries, ["displayName"]) == []
    assert everything.sensitive(entries, ["cpr"]) == ["cpr"]
    assert everything.sensitive(entries, ["engagements"]) == ["sensitiveTitle"]
    assert everything.sensitive([snap.get(org.bo)], None) == ["cpr"]


def seen(org: Org, policy: Policy) -> ClientView:
    return ClientView.of(org.directory.snapshot, policy)


# --------------------------------------------------------------------------- projection


@dataclass
class Split:
    """Carla works mostly in a hidden directorate and a little in the visible one."""

    directory: Directory
    carla: str
    carla_person: str
    boss_person: str
    visible: str
    visible_child: str
    hidden: str
    hidden_role: str


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Split:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('split') / 'idm.db'}")
    b = OrgBuilder(engine)
    root = b.unit("Kommunen", user_key="ROOT")
    hidden = b.unit("Hemmelig forvaltning", root, user_key="HID")
    visible = b.unit("Synlig forvaltning", root, user_key="VIS")
    child = b.unit("Synligt kontor", visible, user_key="VISK")
    carla_p = b.person("Carla", "Dahl")
    primary = b.engagement(carla_p, hidden, title=b.title("Skjult chef"), primary=True)
    second = b.engagement(carla_p, child, title=b.title("Konsulent"), primary=False)
    carla = b.account(carla_p, "carla", engagements=(primary, second))
    b.address("carla.hemmelig@kommune.dk", "EMAIL", "PUBLIC", engagement_id=primary)
    boss_p = b.person("Berit", "Boss")
    b.account(boss_p, "berit", engagements=(b.engagement(boss_p, root),))
    b.manager(root, boss_p)
    b.manager(hidden, boss_p)
    role = b.job_role("Hemmelig rolle")
    b.assign_unit(hidden, role)
    directory = Directory(engine)
    return Split(directory, carla, carla_p, boss_p, visible, child, hidden, role)


def test_derived_attributes_come_from_visible_engagements(split: Split) -> None:
    full = ClientView.of(split.directory.snapshot, ALL)
    sub = ClientView.of(split.directory.snapshot, Policy(name="vis", subtrees=(split.visible,),
                                                         sensitive_titles=True))
    whole, part = full.get(split.carla), sub.get(split.carla)
    assert whole is not None and part is not None
    # The whole directory derives from the primary engagement in the hidden directorate...
    assert full.values(whole, "department") == ("Hemmelig forvaltning",)
    assert full.values(whole, "costCenter") == ("HID",)
    assert full.values(whole, "title") == ("Skjult chef",)
    # ...the subtree client sees Carla as if that directorate did not exist.
    assert sub.values(part, "department") == ("Synligt kontor",)
    assert sub.values(part, "costCenter") == ("VISK",)
    assert sub.values(part, "title") == ("Konsulent",)
    assert sub.values(part, "division") == ("Synlig forvaltning",)
    assert sub.values(part, "unit") == (split.visible_child,)
    assert sub.values(part, "orgUnitPath") == ("Synlig forvaltning\\Synligt kontor",)
    assert [e["unitName"] for e in sub.complex(part, "engagements")] == ["Synligt kontor"]
    assert "carla.hemmelig@kommune.dk" not in sub.values(part, "emails.value")
    # the manager above the visible part is not reached; the role stays, without its unit
    assert sub.values(part, "manager") == ()
    (grant,) = [g for g in sub.complex(part, "roles") if g["value"] == split.hidden_role]
    assert grant["viaUnit"] is None
    assert part.version != whole.version
    shown = repr(sub.attrs(part)) + repr([sub.complex(part, n) for n in part.complex])
    assert split.hidden not in shown and "Hemmelig" not in shown.replace("Hemmelig rolle", "")


@pytest.mark.parametrize("flt", [
    f.Eq("department", "Hemmelig forvaltning"),
    f.Substring("costCenter", "HI", (), None),
    f.Eq("title", "Skjult chef"),
    f.Any_("engagements", f.Eq("unitName", "Hemmelig forvaltning")),
    f.Any_("roles", f.Eq("viaUnit", "<hidden>")),
    f.Substring("unit", "<hidden-prefix>", (), None),
    f.And((f.Ge("unit", "<hidden>"), f.Le("unit", "<hidden>"))),
    f.Substring("memberOf", "<hidden-prefix>", (), None),
    f.Eq("emails.value", "carla.hemmelig@kommune.dk"),
])
def test_no_filter_matches_a_hidden_value(split: Split, flt: f.Filter) -> None:
    """Whatever the filter form, a hidden value never makes an entry match (each of these
    matched Carla through her hidden primary engagement before projections)."""
    hidden = split.hidden
    flt = _substitute(flt, {"<hidden>": hidden, "<hidden-prefix>": hidden[:6]})
    full = ClientView.of(split.directory.snapshot, ALL)
    sub = ClientView.of(split.directory.snapshot, Policy(name="vis", subtrees=(split.visible,),
                                                         sensitive_titles=True))
    assert [e.id for e in full.search(flt, kinds=ACCOUNTS_ONLY)] == [split.carla]
    assert sub.search(flt, kinds=ACCOUNTS_ONLY) == []
    assert sub.search(f.Not(flt), kinds=ACCOUNTS_ONLY)[0].id == split.carla


def _substitute(node: f.Filter, values: dict[str, str]) -> f.Filter:
    from dataclasses import fields, replace

    changes = {}
    for field in fields(node):  # type: ignore[arg-type]
        value = getattr(node, field.name)
        if isinstance(value, str) and value in values:
            changes[field.name] = values[value]
        elif isinstance(value, f.Filter):
            changes[field.name] = _substitute(value, values)
        elif isinstance(value, tuple) and value and isinstance(value[0], f.Filter):
            changes[field.name] = tuple(_substitute(v, values) for v in value)
    return replace(node, **changes) if changes else node  # type: ignore[type-var]


def test_kinds_restriction_hides_roles_and_unit_references(split: Split) -> None:
    accounts_only = ClientView.of(split.directory.snapshot,
                                  Policy(name="acc", kinds=ACCOUNTS_ONLY))
    carla = accounts_only.get(split.carla)
    assert carla is not None
    assert accounts_only.complex(carla, "roles") == ()
    assert accounts_only.values(carla, "role") == ()
    assert accounts_only.values(carla, "unit") == ()
    assert accounts_only.values(carla, "memberOf") == ()
    # names of units are attributes of the account, not references
    assert accounts_only.values(carla, "department") == ("Hemmelig forvaltning",)
    assert accounts_only.get(split.hidden) is None
    assert accounts_only.search(f.Eq("role", split.hidden_role), kinds=ACCOUNTS_ONLY) == []
