"""Discovery documents: /ServiceProviderConfig, /ResourceTypes, /Schemas (RFC 7643 §5-7).

Generated from the attribute map (through ``schema.py``) and the paging configuration, once per
base URL, and served as precomputed JSON text. They say honestly what this service does: read
only (patch, bulk, changePassword unsupported), filters, sorting, ETags, index and cursor
paging with the maximum page size, bearer-token authentication.
"""

from __future__ import annotations

import json
from functools import lru_cache

from idm_facade.scim import schema as s
from idm_facade.scim.paging import PagingConfig
from schemas.attributes import (
    CORE_GROUP,
    CORE_USER,
    ENTERPRISE_USER,
    MUNICIPAL_GROUP,
    MUNICIPAL_USER,
    REFERENCE,
)

SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RT_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"

_SCHEMA_INFO = {
    CORE_USER: ("User", "User account: the account's person, engagements' placement, "
                        "addresses and effective roles."),
    ENTERPRISE_USER: ("EnterpriseUser", "Enterprise User extension (RFC 7643 §4.3)."),
    MUNICIPAL_USER: ("MunicipalUser", "Municipal data of a user: engagements, org-unit paths, "
                                      "KLE, role provenance, and CPR for granted clients."),
    CORE_GROUP: ("Group", "Org units, job-function roles and role groups; members are "
                          "user accounts."),
    MUNICIPAL_GROUP: ("MunicipalGroup", "Municipal data of a group: its kind (unit, role, "
                                        "rolegroup), codes, hierarchy and unit addresses."),
}


def _sub_definition(sub: s.Sub) -> dict:
    doc = {"name": sub.name, "type": sub.type, "multiValued": False,
           "description": sub.description or sub.name, "required": False,
           "caseExact": sub.case_exact, "mutability": "readOnly", "returned": "default",
           "uniqueness": "none"}
    if sub.type == REFERENCE:
        doc["referenceTypes"] = ["User", "Group", "uri"] if sub.name == "$ref" else ["Group"]
    return doc


def attribute_definition(attr: s.ScimAttr) -> dict:
    """One attribute as RFC 7643 §7 describes it."""
    doc = {"name": attr.name, "type": attr.type, "multiValued": attr.multi,
           "description": attr.description or attr.name, "required": attr.name == "userName",
           "caseExact": attr.case_exact, "mutability": "readOnly", "returned": attr.returned,
           "uniqueness": "server" if attr.name == "userName" else "none"}
    if attr.subs:
        doc["subAttributes"] = [_sub_definition(sub) for sub in attr.subs.values()]
    return doc


def schema_documents(base: str) -> list[dict]:
    """Every schema served, generated from the attribute map."""
    docs = []
    for resource in (s.USER, s.GROUP):
        for urn, table in s.SCHEMAS[resource].items():
            name, description = _SCHEMA_INFO[urn]
            attrs = [attribute_definition(a) for a in table.values() if a.name not in s.COMMON]
            docs.append({"schemas": [SCHEMA_SCHEMA], "id": urn, "name": name,
                         "description": description, "attributes": attrs,
                         "meta": {"resourceType": "Schema",
                                  "location": f"{base}/Schemas/{urn}"}})
    return docs


def resource_type_documents(base: str) -> list[dict]:
    """The User and Group resource types with their extensions."""
    docs = []
    for resource in (s.USER, s.GROUP):
        docs.append({
            "schemas": [RT_SCHEMA], "id": resource, "name": resource,
            "endpoint": f"/{s.ENDPOINTS[resource]}",
            "description": _SCHEMA_INFO[s.CORE[resource]][1],
            "schema": s.CORE[resource],
            "schemaExtensions": [{"schema": ext, "required": False}
                                 for ext in s.EXTENSIONS[resource]],
            "meta": {"resourceType": "ResourceType",
                     "location": f"{base}/ResourceTypes/{resource}"},
        })
    return docs


def service_provider_config(base: str, paging: PagingConfig) -> dict:
    """What this service provider supports (read-only)."""
    return {
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": False},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": paging.max_page_size},
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [{
            "type": "oauthbearertoken", "name": "Bearer token",
            "description": "A client token issued with `idm-facade clients add NAME --scim`, "
                           "sent as `Authorization: Bearer <token>`.",
            "specUri": "https://www.rfc-editor.org/rfc/rfc6750", "primary": True}],
        "pagination": {"cursor": True, "index": True, "defaultPaginationMethod": "index",
                       "defaultPageSize": paging.default_page_size,
                       "maxPageSize": paging.max_page_size,
                       "cursorTimeout": paging.cursor_timeout},
        "meta": {"resourceType": "ServiceProviderConfig",
                 "location": f"{base}/ServiceProviderConfig"},
    }


def list_response(resources: list[dict]) -> dict:
    """A ListResponse holding every item (discovery lists are never paged)."""
    return {"schemas": [LIST_SCHEMA], "totalResults": len(resources),
            "startIndex": 1, "itemsPerPage": len(resources), "Resources": resources}


class Discovery:
    """Precomputed discovery JSON, per base URL."""

    def __init__(self, paging: PagingConfig) -> None:
        self.paging = paging

    @lru_cache(maxsize=64)  # noqa: B019 - one Discovery per app, a handful of base URLs
    def documents(self, base: str) -> dict[str, str]:
        """{key: JSON text}: spc, rts, rt:<id>, schemas, schema:<urn lower>."""
        dump = json.dumps
        out = {"spc": dump(service_provider_config(base, self.paging))}
        rts = resource_type_documents(base)
        out["rts"] = dump(list_response(rts))
        for doc in rts:
            out[f"rt:{doc['id'].lower()}"] = dump(doc)
        schemas = schema_documents(base)
        out["schemas"] = dump(list_response(schemas))
        for doc in schemas:
            out[f"schema:{doc['id'].lower()}"] = dump(doc)
        return out
