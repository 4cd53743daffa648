"""Validation of the names users hand to lrobridge: operation names and resource ids.

Pure module. Errors are :class:`~lrobridge.errors.InvalidArgument` that quote the bad part.
"""

from __future__ import annotations

import re

from lrobridge.errors import InvalidArgument

# Pub/Sub limits attribute values and ordering keys to 1 KiB; the operation name is both.
MAX_OPERATION_NAME_BYTES = 1024
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~\-@:+=%,!$&'*()]+")


def is_digits(text: str) -> bool:
    """Whether ``text`` is one or more ASCII digits 0-9: what ``int()`` reads as a plain number.

    ``str.isdigit()`` alone also says yes to ``'\u00b2'`` (a Latin-1 header byte), which
    ``int()`` refuses, and to other scripts' digits; every number read from outside goes
    through this instead.
    """
    return text.isascii() and text.isdigit()


def validate_operation_name(name: str) -> str:
    """Return ``name`` if it is a usable operation name, else raise InvalidArgument.

    Operation names are server-assigned and opaque (``operations/123``,
    ``projects/p/locations/l/operations/op-1``), so the check only refuses what cannot be a
    resource name: empty, surrounding slashes, empty or dot segments, whitespace, control
    characters, query or fragment marks, or more than 1 KiB.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument("operation name is empty")
    check_text(name, "operation name")
    if len(name.encode()) > MAX_OPERATION_NAME_BYTES:
        raise InvalidArgument(
            f"operation name is {len(name.encode())} bytes; at most {MAX_OPERATION_NAME_BYTES}"
        )
    if name.startswith("/") or name.endswith("/"):
        raise InvalidArgument(f"operation name {name!r} must not start or end with '/'")
    for segment in name.split("/"):
        if not segment:
            raise InvalidArgument(f"operation name {name!r} has an empty segment ('//')")
        if segment in {".", ".."}:
            raise InvalidArgument(f"operation name {name!r} has a {segment!r} segment")
        if not _SEGMENT_RE.fullmatch(segment):
            bad = next(ch for ch in segment if not _SEGMENT_RE.fullmatch(ch))
            raise InvalidArgument(
                f"operation name {name!r} contains {bad!r}, which is not allowed in a resource name"
            )
    return name


def check_text(value: str, what: str) -> str:
    """``value`` if it can be written as UTF-8: refuses the unpaired surrogates that a JSON
    ``\\ud800`` escape or an undecodable command-line byte leave in a Python string."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{what} contains {value[exc.start]!r}, which is not a character (an unpaired "
            "surrogate: a JSON \\ud8xx escape without its pair, or bytes that are not UTF-8)"
        ) from None
    return value


_ID_RE = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")


def validate_resource_id(value: str, kind: str) -> str:
    """Ids that lrobridge assigns (watches/{id}, webhooks/{id}): lowercase letters, digits, '-'."""
    if not _ID_RE.fullmatch(value):
        raise InvalidArgument(f"{value!r} is not a valid {kind} id")
    return value
