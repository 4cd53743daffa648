"""The ``filter`` of ListOperations: the subset of AIP-160 the bridge understands.

A filter is conditions joined by ``AND`` (or by plain whitespace, which AIP-160 reads as AND)::

    done = true
    done = false AND name = "projects/p/operations/build-*"
    error.code = 5            error.code != 0          error.code >= 9
    metadata.@type = "type.googleapis.com/acme.v1.BuildMetadata"

Fields: ``done`` (``=``/``!=`` a boolean), ``name`` (``=``/``!=`` a string; a trailing ``*``
makes it a prefix), ``error.code`` (``= != < <= > >=`` an integer; an operation without an error
has code 0), ``metadata.@type`` and ``response.@type`` (``=``/``!=`` a type URL). Strings are
quoted with ``"`` or ``'`` (a bare word without spaces is accepted too). Anything else (``OR``,
``NOT``, ``-``, parentheses, the ``:`` operator, other fields) is refused with InvalidArgument
naming what is unsupported: a filter is never silently ignored.

Pure module.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from lrobridge.errors import InvalidArgument

Field = Literal["done", "name", "error.code", "metadata.@type", "response.@type"]
Op = Literal["=", "!=", "<", "<=", ">", ">="]
MAX_FILTER_LENGTH = 2048

_FIELDS: dict[str, tuple[type, frozenset[str]]] = {
    "done": (bool, frozenset({"=", "!="})),
    "name": (str, frozenset({"=", "!="})),
    "error.code": (int, frozenset({"=", "!=", "<", "<=", ">", ">="})),
    "metadata.@type": (str, frozenset({"=", "!="})),
    "response.@type": (str, frozenset({"=", "!="})),
}
_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op><=|>=|!=|=|<|>|:)
      | (?P<paren>[()])
      | (?P<word>[^\s()=!<>:"']+)
    )""",
    re.VERBOSE,
)


@dataclasses.dataclass(frozen=True)
class Condition:
    """One comparison of a ListOperations filter (``field op value``)."""

    field: Field
    op: Op
    value: bool | int | str

    @property
    def is_prefix(self) -> bool:
        return self.field == "name" and isinstance(self.value, str) and self.value.endswith("*")


@dataclasses.dataclass(frozen=True)
class OperationFilter:
    """Parsed filter; the empty filter matches everything."""

    conditions: tuple[Condition, ...] = ()

    def matches(
        self, *, name: str, done: bool, error_code: int, metadata_type: str, response_type: str
    ) -> bool:
        values: dict[str, bool | int | str] = {
            "done": done,
            "name": name,
            "error.code": error_code,
            "metadata.@type": metadata_type,
            "response.@type": response_type,
        }
        return all(_holds(c, values[c.field]) for c in self.conditions)


def _holds(condition: Condition, actual: bool | int | str) -> bool:
    expected = condition.value
    if condition.is_prefix:
        assert isinstance(actual, str) and isinstance(expected, str)
        equal = actual.startswith(expected[:-1])
    else:
        equal = actual == expected
    match condition.op:
        case "=":
            return equal
        case "!=":
            return not equal
    assert isinstance(actual, int) and isinstance(expected, int)
    match condition.op:
        case "<":
            return actual < expected
        case "<=":
            return actual <= expected
        case ">":
            return actual > expected
        case _:
            return actual >= expected


def parse_filter(text: str) -> OperationFilter:
    """The filter in ``text`` (see the module docstring); InvalidArgument names what is wrong."""
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidArgument(f"filter is {len(text)} characters; at most {MAX_FILTER_LENGTH}")
    tokens = _tokenize(text)
    conditions: list[Condition] = []
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "word" and value == "AND":
            if not conditions or i + 1 == len(tokens):
                raise InvalidArgument(f"filter {text!r}: AND needs a condition on both sides")
            i += 1
            continue
        _refuse_unsupported(text, kind, value)
        if i + 2 >= len(tokens):
            raise InvalidArgument(
                f"filter {text!r}: {value!r} is not a condition; write FIELD OPERATOR VALUE, "
                'e.g. done = true or name = "operations/build-*"'
            )
        (_, op), (value_kind, raw) = tokens[i + 1], tokens[i + 2]
        conditions.append(_condition(text, value, op, value_kind, raw))
        i += 3
    return OperationFilter(tuple(conditions))


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    stripped_end = len(text.rstrip())
    while pos < stripped_end:
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise InvalidArgument(f"filter {text!r}: cannot read it at {text[pos : pos + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _refuse_unsupported(text: str, kind: str, value: str) -> None:
    if kind == "paren":
        raise InvalidArgument(f"filter {text!r}: parentheses are not supported; use AND only")
    if kind == "word" and value in ("OR", "NOT"):
        raise InvalidArgument(f"filter {text!r}: {value} is not supported; use AND only")
    if kind == "word" and value.startswith("-"):
        raise InvalidArgument(f"filter {text!r}: negation with '-' is not supported; use !=")
    if kind != "word":
        raise InvalidArgument(f"filter {text!r}: expected a field name, got {value!r}")
    if value not in _FIELDS:
        raise InvalidArgument(
            f"filter {text!r}: field {value!r} is not supported; filterable fields are "
            f"{', '.join(_FIELDS)}"
        )


def _condition(text: str, field: str, op: str, value_kind: str, raw: str) -> Condition:
    value_type, ops = _FIELDS[field]
    if op == ":":
        raise InvalidArgument(
            f"filter {text!r}: the ':' (has) operator is not supported; use = (with a trailing * "
            "for a name prefix)"
        )
    if op not in ops:
        raise InvalidArgument(
            f"filter {text!r}: operator {op!r} does not apply to {field}; "
            f"use {' or '.join(sorted(ops))}"
        )
    if value_kind not in ("word", "string"):
        raise InvalidArgument(f"filter {text!r}: {field} {op} needs a value, got {raw!r}")
    value: bool | int | str
    if value_type is bool:
        if raw not in ("true", "false"):
            raise InvalidArgument(f"filter {text!r}: {field} takes true or false, got {raw!r}")
        value = raw == "true"
    elif value_type is int:
        if not re.fullmatch(r"-?\d{1,10}", raw):
            raise InvalidArgument(f"filter {text!r}: {field} takes an integer, got {raw!r}")
        value = int(raw)
    else:
        value = _unquote(raw) if value_kind == "string" else raw
        if "*" in value[:-1] or (value.endswith("*") and field != "name"):
            raise InvalidArgument(
                f"filter {text!r}: '*' is only supported at the end of a name value (a prefix)"
            )
    return Condition(field, op, value)  # type: ignore[arg-type]


def _unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", r"\1", body)
