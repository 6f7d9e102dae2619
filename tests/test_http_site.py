"""The HTTP site itself (idm_facade.runtime.http), served for real over loopback.

The site's request class keeps twisted.web's query parsing out of the event loop until
someone asks for ``request.args``: the WSGI application must still see the exact query
string, and a twisted resource reading ``request.args`` the same values as before.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

SERVER = r'''
import json
from flask import Flask, request
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from idm_facade.runtime.http import HeldRequest, http_site

app = Flask("echo")

@app.route("/<path:path>", methods=["GET", "POST"])
def echo(path):
    return {"path": path, "query": request.environ.get("QUERY_STRING", ""),
            "args": request.args.to_dict(flat=False)}

class Args(Resource):
    isLeaf = True

    def render(self, request):
        return json.dumps({k.decode(): [v.decode() for v in vs]
                           for k, vs in request.args.items()}).encode()

wsgi = reactor.listenTCP(0, http_site(reactor, app, 4), interface="127.0.0.1")
plain = reactor.listenTCP(0, Site(Args(), requestFactory=HeldRequest), interface="127.0.0.1")
print("PORTS", wsgi.getHost().port, plain.getHost().port, flush=True)
reactor.run()
'''


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        found = re.search(r"PORTS (\d+) (\d+)", proc.stdout.readline())
        assert found, "the test server did not start"
        yield int(found.group(1)), int(found.group(2))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


QUERIES = [
    "",
    "filter=userName%20eq%20%22b%C3%B8rge%22&count=2",
    "a=1&a=2&b=&c",
    "x=%3F%26&y=1;z=2",
]


@pytest.mark.parametrize("query", QUERIES)
def test_wsgi_app_sees_the_exact_query(ports: tuple[int, int], query: str) -> None:
    url = f"http://127.0.0.1:{ports[0]}/scim/v2/Users" + (f"?{query}" if query else "")
    body = httpx.get(url).json()
    assert body["path"] == "scim/v2/Users" and body["query"] == query


def test_twisted_resources_still_get_request_args(ports: tuple[int, int]) -> None:
    response = httpx.get(f"http://127.0.0.1:{ports[1]}/any/where?a=1&a=2&b=x%20y&c=&d;e=5")
    assert response.json() == {"a": ["1", "2"], "b": ["x y"], "c": [""], "e": ["5"]}
    assert httpx.get(f"http://127.0.0.1:{ports[1]}/plain").json() == {}
