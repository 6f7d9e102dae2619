"""SCIM filter expressions -> the directory's filter tree.

Parsing uses scim2-filter-parser's lexer and parser (its AST only; its SQL transpilers are not
used). Around them this module closes the gaps that library leaves open:

- every attribute path is resolved against the resource's schemas (``schema.py``),
  case-insensitively and with optional URN prefix; an unknown attribute is a 400
  ``invalidFilter``, never "no condition" (the library silently drops unknown attributes);
- values are compared under each attribute's own ``caseExact`` rule by the directory (the
  library folds case for ``userName`` only);
- ``eq null`` / ``ne null`` mean absent / present (the library reads ``null`` as a string);
- quoted strings may carry JSON escapes and numbers may have several digits, a sign and a
  fraction (the library's lexer splits ``42`` into two tokens and rejects ``\\"``): quoted
  strings and numbers are lifted out before lexing and put back after parsing;
- ``gt``/``ge``/``lt``/``le`` on booleans and comparisons against ``null`` are rejected with
  ``invalidFilter`` as RFC 7644 §3.4.2.2 asks.

Value paths ``emails[type eq "work" and value co "@x"]`` become ``Any_`` over the entry's
complex elements; Entra's ``emails[type eq "work"].value eq "x"`` becomes the same value path
with ``value eq "x"`` added inside. Translations are cached: a filter string is parsed once.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from scim2_filter_parser import ast
from scim2_filter_parser.lexer import SCIMLexer
from scim2_filter_parser.parser import SCIMParser

from idm_facade.directory import filters as f
from idm_facade.scim import schema as s
from idm_facade.scim.errors import ScimError, invalid_filter
from schemas.attributes import ACCOUNT, BOOLEAN, DATETIME, INTEGER, STRING, normalise

_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_NUMBER = re.compile(r"(?<![\w.$:-])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.:])")
_ORDERING = {"gt": f.Gt, "ge": f.Ge, "lt": f.Lt, "le": f.Le}
#: The filter node each comparison operator becomes (for the operator x type table).
_NODE: dict[str, type] = {"eq": f.Eq, "ne": f.Eq, "co": f.Substring, "sw": f.Substring,
                          "ew": f.Substring, **_ORDERING}
_KNOWN_OPS = {"eq", "ne", "co", "sw", "ew", "pr", "gt", "ge", "lt", "le"}
_NULL = object()


class _Literal:
    """A comparison value lifted out of the filter text before lexing."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _lift(text: str) -> tuple[str, list[_Literal]]:
    """Replace quoted strings and numbers by ``"#n"`` placeholders the lexer accepts."""
    literals: list[_Literal] = []
    out: list[str] = []
    pos = 0

    def numbers(chunk: str) -> str:
        def repl(match: re.Match) -> str:
            raw = match.group(0)
            number = float(raw) if any(c in raw for c in ".eE") else int(raw)
            literals.append(_Literal(number))
            return f'"#{len(literals) - 1}"'

        return _NUMBER.sub(repl, chunk)

    while True:
        start = text.find('"', pos)
        if start < 0:
            out.append(numbers(text[pos:]))
            break
        match = _STRING.match(text, start)
        if match is None:
            raise invalid_filter(f"unterminated string at position {start + 1}")
        out.append(numbers(text[pos:start]))
        try:
            value = json.loads(match.group(0))
        except ValueError as exc:
            raise invalid_filter(f"bad string escape at position {start + 1}") from exc
        literals.append(_Literal(value))
        out.append(f'"#{len(literals) - 1}"')
        pos = match.end()
    return "".join(out), literals


def parse(text: str) -> tuple[ast.AST, list[_Literal]]:
    """Parse filter text with scim2-filter-parser; 400 invalidFilter on any syntax error."""
    lifted, literals = _lift(text)
    try:
        tree = SCIMParser().parse(SCIMLexer().tokenize(lifted))
    except Exception as exc:  # the library raises ValueError / SCIMParserError / IndexError
        message = str(exc).replace(lifted, text)
        raise invalid_filter(f"filter syntax error: {message}") from None
    if tree is None:
        raise invalid_filter("filter syntax error: empty filter")
    return tree, literals


class _Translator:
    """Walks one parsed filter for one resource type (or all, for the root endpoint)."""

    def __init__(self, resources: tuple[str, ...], literals: list[_Literal]) -> None:
        self.resources = resources
        self.literals = literals

    # ------------------------------------------------------------------ values

    def value(self, comp: ast.CompValue | None) -> Any:
        if comp is None:
            return None
        raw = comp.value
        if isinstance(raw, str) and raw.startswith("#") and raw[1:].isdigit():
            return self.literals[int(raw[1:])].value
        if raw == "null":
            return _NULL
        if raw in ("true", "false"):
            return raw == "true"
        raise invalid_filter(f"bad comparison value {raw!r}")

    # ------------------------------------------------------------------ tree

    def node(self, tree: ast.AST) -> f.Filter:
        if isinstance(tree, ast.Filter):
            if getattr(tree, "namespace", None) is not None:
                inner = self.value_path(tree.namespace, tree.expr, None, None)
            else:
                inner = self.node(tree.expr)
            return f.Not(inner) if tree.negated else inner
        if isinstance(tree, ast.LogExpr):
            both = (self.node(tree.expr1), self.node(tree.expr2))
            return f.all_of(both) if tree.op.lower() == "and" else f.any_of(both)
        if isinstance(tree, ast.AttrExpr):
            path = tree.attr_path
            if isinstance(path.attr_name, ast.Filter):  # emails[type eq "work"].value eq "x"
                holder = path.attr_name
                return self.value_path(holder.namespace, holder.expr, tree.value,
                                       tree.comp_value)
            return self.attr_expr(path, tree.value, tree.comp_value)
        raise invalid_filter(f"unsupported filter element {type(tree).__name__}")

    def value_path(self, namespace: ast.AttrPath, inner: ast.AST, op: str | None,
                   comp: ast.CompValue | None) -> f.Filter:
        """``attr[inner]`` or Entra's ``attr[inner].sub op value``."""
        options = []
        for resource in self.resources:
            attr = self.resolve_top(resource, namespace)
            if attr is None:
                continue
            if attr.type != s.COMPLEX_TYPE:
                raise invalid_filter(f"{attr.name} is not a complex attribute")
            cond = self.sub_filter(resource, attr, inner)
            sub_name = namespace.sub_attr.value if namespace.sub_attr is not None else None
            if op is not None:
                extra = self.sub_comparison(attr, sub_name or "value", op, comp)
                cond = f.And((cond, extra))
            elif sub_name is not None:
                raise invalid_filter("a value path with a sub-attribute needs an operator")
            options.append(self.wrap(attr, cond, resource))
        return self.combine(options, _path_text(namespace))

    def wrap(self, attr: s.ScimAttr, cond: f.Filter, resource: str) -> f.Filter:
        """Element-wise condition over ``attr``: ``Any_`` when the directory keeps elements,
        otherwise the sub-attributes are the flattened directory attributes themselves."""
        result: f.Filter
        if attr.complex:
            result = f.Any_(attr.complex, cond)
        else:
            result = _flat(cond, attr)
        return self.scope(result, resource)

    def sub_filter(self, resource: str, attr: s.ScimAttr, tree: ast.AST) -> f.Filter:
        """The filter inside ``[...]``, over the complex attribute's sub-attribute names."""
        if isinstance(tree, ast.Filter):
            if getattr(tree, "namespace", None) is not None:
                raise invalid_filter("value paths cannot be nested")
            inner = self.sub_filter(resource, attr, tree.expr)
            return f.Not(inner) if tree.negated else inner
        if isinstance(tree, ast.LogExpr):
            both = (self.sub_filter(resource, attr, tree.expr1),
                    self.sub_filter(resource, attr, tree.expr2))
            return f.all_of(both) if tree.op.lower() == "and" else f.any_of(both)
        if isinstance(tree, ast.AttrExpr):
            path = tree.attr_path
            if not isinstance(path.attr_name, str) or path.sub_attr is not None or path.uri:
                raise invalid_filter("value path filters name sub-attributes only")
            return self.sub_comparison(attr, path.attr_name, tree.value, tree.comp_value)
        raise invalid_filter(f"unsupported filter element {type(tree).__name__}")

    def sub_comparison(self, attr: s.ScimAttr, sub_name: str, op: str,
                       comp: ast.CompValue | None) -> f.Filter:
        sub = attr.subs.get(sub_name.lower())
        if sub is None:
            raise invalid_filter(f"unknown sub-attribute {attr.name}.{sub_name}")
        key = sub.name if attr.complex else (sub.directory or "")
        if not attr.complex and not sub.directory:
            raise invalid_filter(f"{attr.name}.{sub.name} cannot be filtered on")
        return self.compare(key, sub.type, sub.case_exact, op, comp, f"{attr.name}.{sub.name}")

    def compare(self, key: str, type_: str, case_exact: bool, op: str,
                comp: ast.CompValue | None, label: str) -> f.Filter:
        """One ``attr op value`` over directory attribute (or element key) ``key``."""
        op = op.lower()
        if op not in _KNOWN_OPS:
            raise invalid_filter(f"unknown operator {op!r}")
        if op == "pr":
            return f.Present(key)
        value = self.value(comp)
        if value is _NULL:
            if op == "eq":
                return f.Not(f.Present(key))
            if op == "ne":
                return f.Present(key)
            raise invalid_filter(f"{op} cannot compare {label} with null")
        if not f.defined(_NODE[op], type_):
            raise invalid_filter(f"{op} is not defined for {type_} attribute {label}")
        if type_ == BOOLEAN:
            if not isinstance(value, bool):
                raise invalid_filter(f"{label} is boolean: compare with true or false")
        elif type_ == INTEGER:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise invalid_filter(f"{label} is an integer: compare with a number")
        elif type_ == DATETIME:
            try:
                normalise(DATETIME, True, str(value))
            except (TypeError, ValueError):
                raise invalid_filter(f"{label} is a dateTime: {value!r} is not one") from None
            value = str(value)
        else:
            if isinstance(value, bool) or not isinstance(value, str):
                if op in ("co", "sw", "ew"):
                    raise invalid_filter(f"{op} needs a string value for {label}")
                value = json.dumps(value) if isinstance(value, bool) else str(value)
        if op == "eq":
            return f.Eq(key, value)
        if op == "ne":
            return f.Not(f.Eq(key, value))
        if op == "co":
            return f.Substring(key, any=(value,)) if value else f.Present(key)
        if op == "sw":
            return f.Substring(key, initial=value) if value else f.Present(key)
        if op == "ew":
            return f.Substring(key, final=value) if value else f.Present(key)
        return _ORDERING[op](key, value)

    def attr_expr(self, path: ast.AttrPath, op: str, comp: ast.CompValue | None) -> f.Filter:
        name = path.attr_name
        sub_name = path.sub_attr.value if path.sub_attr is not None else None
        options = []
        for resource in self.resources:
            if name.lower() == "meta" and path.uri is None:
                found = self.meta(resource, sub_name, op, comp)
                if found is not None:
                    options.append(found)
                continue
            attr = self.resolve_top(resource, path)
            if attr is None:
                continue
            options.append(self.scope(self.on_attr(resource, attr, sub_name, op, comp),
                                      resource))
        return self.combine(options, _path_text(path))

    def on_attr(self, resource: str, attr: s.ScimAttr, sub_name: str | None, op: str,
                comp: ast.CompValue | None) -> f.Filter:
        if attr.type != s.COMPLEX_TYPE:
            if sub_name is not None:
                raise invalid_filter(f"{attr.name} has no sub-attribute {sub_name}")
            result = self.compare(attr.directory or "", attr.type, attr.case_exact, op, comp,
                                  attr.name)
            if attr.directory == "id" and isinstance(result, f.Eq) and \
                    str(result.value) != str(result.value).lower():
                return f.FALSE  # ids are lower-case and caseExact
            return result
        if sub_name is None:
            if op.lower() == "pr":
                flat = [sub.directory for sub in attr.subs.values() if sub.directory]
                if attr.complex:
                    return f.Any_(attr.complex, f.TRUE)
                return f.Or(tuple(f.Present(d) for d in flat)) if flat else f.FALSE
            if "value" not in attr.subs:
                raise invalid_filter(f"{attr.name} is complex: name a sub-attribute")
            sub_name = "value"
        sub = attr.subs.get(sub_name.lower())
        if sub is None:
            raise invalid_filter(f"unknown sub-attribute {attr.name}.{sub_name}")
        if sub.directory:  # flattened and indexed: no element walk needed
            return self.compare(sub.directory, sub.type, sub.case_exact, op, comp,
                                f"{attr.name}.{sub.name}")
        if not attr.complex:
            raise invalid_filter(f"{attr.name}.{sub.name} cannot be filtered on")
        return f.Any_(attr.complex, self.sub_comparison(attr, sub.name, op, comp))

    def meta(self, resource: str, sub_name: str | None, op: str,
             comp: ast.CompValue | None) -> f.Filter | None:
        if sub_name is None:
            raise invalid_filter("meta is complex: name a sub-attribute")
        key = sub_name.lower()
        if key == "resourcetype":
            cond = self.compare("__rt", STRING, True, op, comp, "meta.resourceType")
            return self.scope(_resource_type(cond, resource), resource)
        if key in s.META:
            return self.scope(self.compare(s.META[key], DATETIME, True, op, comp,
                                           f"meta.{sub_name}"), resource)
        if key in ("location", "version"):
            raise invalid_filter(f"meta.{sub_name} cannot be filtered on")
        raise invalid_filter(f"unknown attribute meta.{sub_name}")

    def resolve_top(self, resource: str, path: ast.AttrPath) -> s.ScimAttr | None:
        name = path.attr_name
        if not isinstance(name, str):
            raise invalid_filter("bad attribute path")
        uri = path.uri
        if uri is not None:
            # urn:...:User:name.givenName is lexed with the resource name inside the URI when
            # the attribute itself is dotted; both spellings are resolved here.
            if uri.lower() not in s.all_urns():
                raise invalid_filter(f"unknown schema {uri}")
        return s.lookup(resource, name, uri)

    def scope(self, node: f.Filter, resource: str) -> f.Filter:
        """On the root endpoint an attribute of one resource type matches only that type."""
        if len(self.resources) == 1:
            return node
        kinds = s.KINDS[resource]
        kind = f.Eq("kind", ACCOUNT) if kinds == frozenset({ACCOUNT}) else f.Not(
            f.Eq("kind", ACCOUNT))
        return f.And((kind, node))

    def combine(self, options: list[f.Filter], label: str) -> f.Filter:
        if not options:
            raise invalid_filter(f"unknown attribute {label}")
        return options[0] if len(options) == 1 else f.Or(tuple(options))


def _flat(cond: f.Filter, attr: s.ScimAttr) -> f.Filter:
    """Sub-attribute conditions of a complex attribute without kept elements already name
    flattened directory attributes (``members[value eq "x"]`` is ``member eq "x"``)."""
    return cond


def _resource_type(cond: f.Filter, resource: str) -> f.Filter:
    """Evaluate a ``meta.resourceType`` comparison for one resource type statically."""

    class Fake:
        attrs = {"__rt": (resource,)}
        complex: dict = {}

    return f.TRUE if f.matches(Fake, cond) else f.FALSE


def _path_text(path: ast.AttrPath) -> str:
    name = path.attr_name if isinstance(path.attr_name, str) else "?"
    text = f"{path.uri}:{name}" if path.uri else name
    if path.sub_attr is not None:
        text += f".{path.sub_attr.value}"
    return text


@lru_cache(maxsize=4096)
def translate(text: str, resources: tuple[str, ...]) -> f.Filter:
    """Filter text -> directory filter tree for ``resources`` (one, or all for ``/``).

    Raises ScimError 400 invalidFilter on bad syntax or an attribute the resource types do not
    declare. Attributes the client may not read are not special here: the directory rewrites
    them to "absent" under the client's policy, so such a filter matches as if the value were
    missing and reveals nothing.
    """
    if len(text) > 8192:
        raise invalid_filter("filter too long (more than 8192 characters)")
    tree, literals = parse(text)
    try:
        return _Translator(resources, literals).node(tree)
    except ScimError:
        raise
    except (AttributeError, TypeError, IndexError) as exc:
        raise invalid_filter(f"cannot interpret filter: {exc}") from None


def sort_attribute(path: str, resources: tuple[str, ...]) -> str:
    """The directory attribute to sort by for a ``sortBy`` path (400 invalidValue if unknown
    or not a single-valued simple attribute)."""
    from idm_facade.scim.errors import invalid_value

    text = path.strip()
    uri = None
    lowered = text.lower()
    for urn in sorted(s.all_urns(), key=len, reverse=True):
        if lowered.startswith(urn + ":"):
            uri, text = text[: len(urn)], text[len(urn) + 1:]
            break
    top, _, sub = text.partition(".")
    if top.lower() == "meta" and sub.lower() in s.META:
        return s.META[sub.lower()]
    for resource in resources:
        attr = s.lookup(resource, top, uri)
        if attr is None:
            continue
        if attr.type == s.COMPLEX_TYPE:
            found = attr.subs.get((sub or "value").lower())
            if found is not None and found.directory:
                return found.directory
        elif not sub and attr.directory:
            return attr.directory
    raise invalid_value(f"cannot sort by {path!r}: not a sortable attribute")
