"""SCIM error responses (RFC 7644 §3.12; RFC 9865 cursor errors).

Every failure a client can cause is a :class:`ScimError` raised anywhere below the routes and
turned into one JSON body with the status as a string, an optional ``scimType`` and a
``detail`` that names the problem. All SCIM responses, errors included, are
``application/scim+json``.
"""

from __future__ import annotations

import json

from flask import Response

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_JSON = "application/scim+json"


class ScimError(Exception):
    """A protocol error with its HTTP status, ``scimType`` and a human-readable detail."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type
        self.headers = headers or {}

    def body(self) -> dict:
        """The RFC 7644 §3.12 error object."""
        doc: dict = {"schemas": [ERROR_SCHEMA], "status": str(self.status)}
        if self.scim_type:
            doc["scimType"] = self.scim_type
        doc["detail"] = self.detail
        return doc

    def response(self) -> Response:
        """This error as a Flask response."""
        resp = Response(json.dumps(self.body()), status=self.status, mimetype=SCIM_JSON)
        for key, value in self.headers.items():
            resp.headers[key] = value
        return resp


def invalid_filter(detail: str) -> ScimError:
    """400 invalidFilter: the filter cannot be parsed or names something unknown."""
    return ScimError(400, detail, "invalidFilter")


def invalid_value(detail: str) -> ScimError:
    """400 invalidValue: a request parameter or body member is wrong."""
    return ScimError(400, detail, "invalidValue")


def too_large(detail: str) -> ScimError:
    """413: a request body over the limit (read no further than needed to know)."""
    return ScimError(413, detail)


def unauthorized(detail: str = "a valid bearer token is required") -> ScimError:
    """401 with the challenge RFC 6750 asks for."""
    return ScimError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="SCIM"'})


def not_found(detail: str) -> ScimError:
    """404 for an unknown resource or URL."""
    return ScimError(404, detail)


def read_only(method: str) -> ScimError:
    """405: this service provider serves reads only (the SPC says so)."""
    return ScimError(405, f"{method} is not supported: this SCIM service is read-only",
                     headers={"Allow": "GET, HEAD"})
