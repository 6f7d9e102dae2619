"""The shared policy projection (idm_facade.directory.view) on a hand-built organisation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from idm_facade.directory import Directory, Policy, view
from idm_facade.directory.policy import ALL
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
    assert view.visible_values(entry, "cpr", PUBLIC) == ()
    assert view.visible_values(entry, "cpr", INTERNAL) == ()
    assert view.visible_values(entry, "cpr", ALL) == ("0101901234",)
    assert "cpr" not in view.visible_attrs(entry, INTERNAL)
    assert view.visible_attrs(entry, ALL)["cpr"] == ("0101901234",)


def test_internal_addresses_hidden_from_public_clients(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    assert view.visible_values(entry, "emails.value", PUBLIC) == ("anna@kommune.dk",)
    assert set(view.visible_values(entry, "emails.value", INTERNAL)) == {
        "anna@kommune.dk", "anna.intern@kommune.dk"}
    public = view.visible_complex(entry, "emails", PUBLIC)
    assert [e["value"] for e in public] == ["anna@kommune.dk"]
    assert all("visibility" not in e for e in public)
    assert view.visible_complex(entry, "addresses", PUBLIC) == ()
    internal = view.visible_complex(entry, "addresses", INTERNAL)
    assert [a["formatted"] for a in internal] == ["Rådhuspladsen 1"]
    # INTERNAL without internal=True is never granted
    external = Policy(name="x", max_visibility="INTERNAL", internal=False)
    assert view.visible_values(entry, "emails.value", external) == ("anna@kommune.dk",)


def test_secret_addresses_never_shown(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    everything = [e.get("formatted") for e in view.visible_complex(entry, "addresses", ALL)]
    assert "Hemmeligvej 1" not in everything
    assert "Hemmeligvej 1" not in str(view.visible_attrs(entry, ALL))


def test_sensitive_titles_masked(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    assert view.visible_values(entry, "title", PUBLIC) == ()
    assert view.visible_values(entry, "title", ALL) == ("Fleksjob",)
    (masked,) = view.visible_complex(entry, "engagements", PUBLIC)
    assert "title" not in masked and "titleSensitive" not in masked
    assert masked["unit"] == org.a
    (shown,) = view.visible_complex(entry, "engagements", ALL)
    assert shown["title"] == "Fleksjob"
    # the snapshot's own element is untouched
    assert entry.complex["engagements"][0]["titleSensitive"] is True


def test_attribute_restriction(org: Org) -> None:
    entry = org.directory.snapshot.get(org.anna)
    narrow = Policy(name="n", attributes=frozenset({"displayName", "emails.value"}))
    attrs = view.visible_attrs(entry, narrow)
    assert set(attrs) == {"id", "kind", "userName", "displayName", "emails.value"}
    assert view.visible_complex(entry, "emails", narrow) == ({"value": "anna@kommune.dk"},)
    assert view.visible_complex(entry, "engagements", narrow) == ()


def test_subtree_policy_hides_references(org: Org) -> None:
    snap = org.directory.snapshot
    only_a = Policy(name="a", subtrees=(org.a,))
    root = snap.get(snap.get(org.a).attrs["parent"][0])
    anna, bo = snap.get(org.anna), snap.get(org.bo)
    assert snap.is_visible(anna, only_a) and not snap.is_visible(bo, only_a)
    # the parent unit is outside the subtree: the reference is dropped
    assert view.visible_values(snap.get(org.a), "parent", only_a, snap) == ()
    assert view.visible_values(snap.get(org.a), "parent", ALL, snap) == (root.id,)
    assert org.b not in view.visible_values(anna, "ancestor", only_a, snap)
    assert view.visible_values(anna, "unit", only_a, snap) == (org.a,)


def test_disclosed_subjects_and_sensitive(org: Org) -> None:
    snap = org.directory.snapshot
    entries = [snap.get(org.anna), snap.get(org.bo), snap.get(org.a)]
    assert view.disclosed_subjects(entries, PUBLIC) == sorted([org.anna_person, org.bo_person])
    # a unit discloses its members only when member values were returned
    assert view.disclosed_subjects([snap.get(org.a)], PUBLIC) == []
    assert view.disclosed_subjects([snap.get(org.a)], PUBLIC, snapshot=snap,
                                   members=True) == [org.anna_person]
    assert view.sensitive_disclosed(entries, PUBLIC, None) == []
    assert view.sensitive_disclosed(entries, ALL, None) == ["cpr", "sensitiveTitle"]
    assert view.sensitive_disclosed(entries, ALL, ["displayName"]) == []
    assert view.sensitive_disclosed(entries, ALL, ["cpr"]) == ["cpr"]
    assert view.sensitive_disclosed([snap.get(org.bo)], ALL, None) == ["cpr"]
