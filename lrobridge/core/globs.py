"""Resource-name globs for subscription filters: ``*`` is one segment, ``**`` any number.

``projects/*/operations/*`` matches ``projects/p/operations/op1`` but not
``projects/p/locations/l/operations/op1``; ``projects/**/operations/*`` matches both.
Pure module.
"""

from __future__ import annotations

import functools
import re

from lrobridge.errors import InvalidArgument


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    if not pattern:
        raise InvalidArgument("empty operation glob")
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


def glob_matches(pattern: str, name: str) -> bool:
    return compile_glob(pattern).fullmatch(name) is not None
