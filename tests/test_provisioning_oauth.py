"""A provisioning target behind OAuth 2.0 client credentials (RFC 6749 §4.4): a token endpoint
started here on loopback (tests/oauth_server.py) issues short-lived tokens, and a proxy in
front of scim2-server lets through only requests bearing one of them. ``idm-facade serve``
pushes through it: the first sync; tokens expiring (fetched again before they run out, no
401); every token revoked (one 401, a new token, the change arrives); the token endpoint
down (the target fails and backs off, and converges when the endpoint returns). The client
secret appears nowhere in the server's output or in ``provisioning status``. The
configuration takes exactly one of ``token`` or the OAuth keys."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from idm_facade.config import ConfigError, load_config
from idm_facade.provisioning.targets import targets
from store.engine import make_engine
from store.models import Account, Person
from tests.oauth_server import TokenEndpoint
from tests.scim_target import Faults, Target
from tests.serving import served_copy
from tests.test_provisioning import _converged, _ours, _shows

SECRET = "s3cret:with/odd+chars"  # ':' and '+' must survive RFC 6749 §2.3.1 encoding
SECRET_VAR = "IDMF_TEST_OAUTH_SECRET"


def _config(url: str, token_url: str) -> str:
    return (f'[provisioning]\ninterval = 0.2\n'
            f'[[provisioning.target]]\nname = "saas"\nurl = "{url}"\n'
            f'token_url = "{token_url}"\nclient_id = "facade"\n'
            f'client_secret = "env:{SECRET_VAR}"\nscope = "scim"\n'
            f'groups = ["role", "unit"]\nleaver = "disable"\ntimeout = 5\n')


def _rename(copy, account_id: str, name: str) -> None:
    engine = make_engine(copy.db)
    with engine.connect() as conn:
        person_id = conn.execute(select(Account.person_id).where(
            Account.id == account_id)).scalar_one()
    engine.dispose()

    def change(session) -> None:
        session.get(Person, person_id).given_name = name

    copy.write(change)


def test_oauth_target_converges_through_expiry_revocation_and_outage(
        demo_db: str, tmp_path: Path, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET)
    tokens = TokenEndpoint("facade", SECRET, expires_in=5.0)
    proxy = Faults(target, tokens=tokens)
    with served_copy(demo_db, tmp_path, _config(proxy.url, tokens.url),
                     (("reader", "scim", "default"),)) as copy:
        assert copy.serving is not None
        reader = copy.secrets["reader"]
        # The first full sync, with OAuth (through the proxy, slower on a loaded machine).
        _converged(copy, reader, target, seconds=300)
        assert tokens.grants >= 1 and tokens.refused == 0
        account_id = sorted(_ours(copy, reader)[0])[0]

        # Expiry: the tokens live 5 s; the client fetches a new one before each runs out
        # (half a second early), so the target never has to refuse an expired one.
        grants, refusals = tokens.grants, proxy.answered.count(401)
        time.sleep(5.5)
        _rename(copy, account_id, "Udløbet")
        _shows(copy, reader, lambda ours: ours[0][account_id][3] == "Udløbet")
        _converged(copy, reader, target)
        assert tokens.grants > grants
        assert proxy.answered.count(401) == refusals

        # Revoked: the target answers 401 once, the client fetches a new token and resends.
        tokens.expires_in = 3600.0
        time.sleep(5.5)  # the last short-lived token is dropped; the next one lives long
        _rename(copy, account_id, "Forny")
        _converged(copy, reader, target)
        grants, refusals = tokens.grants, proxy.answered.count(401)
        tokens.revoke_all()
        _rename(copy, account_id, "Tilbagekaldt")
        _shows(copy, reader, lambda ours: ours[0][account_id][3] == "Tilbagekaldt")
        _converged(copy, reader, target)
        assert proxy.answered.count(401) == refusals + 1
        assert tokens.grants == grants + 1

        # The token endpoint down: the target's deliveries fail and back off, nothing
        # arrives, the server lives on; when the endpoint returns, the target converges.
        tokens.stop()
        tokens.revoke_all()
        _rename(copy, account_id, "Nede")
        _shows(copy, reader, lambda ours: ours[0][account_id][3] == "Nede")
        deadline = time.monotonic() + 30
        while "token endpoint" not in copy.serving.output():
            assert time.monotonic() < deadline, copy.serving.output()[-2000:]
            time.sleep(0.2)
        held = next(u for u in target.all("User") if u.get("externalId") == account_id)
        assert held["name"]["givenName"] != "Nede"
        exe = str(Path(sys.executable).with_name("idm-facade"))
        status = subprocess.run([exe, "provisioning", "status", "--db", copy.db, "--config",
                                 str(copy.config)], capture_output=True, text=True,
                                timeout=120, env=dict(os.environ))
        assert status.returncode == 0, status.stderr
        assert "token endpoint" in status.stdout and "ConnectError" in status.stdout
        tokens.start()
        _converged(copy, reader, target)
        assert copy.serving.proc.poll() is None
        output = copy.serving.output() + status.stdout + status.stderr
        assert SECRET not in output and "s3cret" not in output


@pytest.mark.parametrize(("keys", "message"), [
    ('token = "t"\ntoken_url = "http://as/token"\nclient_id = "a"\nclient_secret = "b"\n',
     "either token or token_url"),
    ('token_url = "http://as/token"\nclient_id = "a"\n', "need client_secret too"),
    ('', r"give token \(a bearer token\) or token_url"),
    ('token_url = "as/token"\nclient_id = "a"\nclient_secret = "b"\n',
     r"token_url must be the authorization server's http\(s\) token endpoint"),
    ('token_url = "http://as/token"\nclient_id = "a"\nclient_secret = "env:IDMF_UNSET_VAR"\n',
     r"client_secret comes from \$IDMF_UNSET_VAR, which is not set"),
])
def test_exactly_one_way_to_authenticate(tmp_path: Path, keys: str, message: str) -> None:
    path = tmp_path / "idm.toml"
    path.write_text(f'[[provisioning.target]]\nname = "saas"\nurl = "http://t/scim"\n{keys}')
    with pytest.raises(ConfigError, match=message):
        targets(load_config(path, env={}))


def test_a_mistyped_oauth_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "idm.toml"
    path.write_text('[[provisioning.target]]\nname = "saas"\nurl = "http://t/scim"\n'
                    'token_url = "http://as/token"\nclient_id = "a"\nclient_secrte = "b"\n')
    with pytest.raises(ConfigError, match="unknown key 'client_secrte'.*did you mean "
                                          "'client_secret'"):
        load_config(path, env={})


def test_the_secret_stays_out_of_the_targets_repr(tmp_path: Path) -> None:
    path = tmp_path / "idm.toml"
    path.write_text('[[provisioning.target]]\nname = "saas"\nurl = "http://t/scim"\n'
                    'token_url = "http://as/token"\nclient_id = "a"\n'
                    f'client_secret = "{SECRET}"\n')
    (found,) = targets(load_config(path, env={}))
    assert found.oauth is not None and found.oauth.client_secret == SECRET
    assert SECRET not in repr(found)
