"""How every CLI list command prints: ``--format table`` (the default, aligned columns for
people) or ``--format json`` (the API's response exactly as it came, for scripts).

One flag (:func:`add_format_flag`) and one printer (:func:`print_listing`) serve every list
command (``watches list``, ``quarantine list``, ``webhooks list``, ``webhooks deliveries``), so
they read alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lrobridge.cli.common import print_json

FORMATS = ("table", "json")

Item = Mapping[str, Any]
Column = tuple[str, Callable[[Item], object]]


def add_format_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table: aligned columns for people (default); json: the API's response as it is",
    )


def print_listing(
    response: Mapping[str, Any],
    key: str,
    columns: Sequence[Column],
    fmt: str,
    *,
    details: Callable[[Item], Sequence[str]] | None = None,
) -> None:
    """Print the items under ``response[key]`` as ``fmt``; in a table, ``details`` adds
    indented lines under an item's row (a delivery's attempts)."""
    if fmt == "json":
        print_json(response, ensure_ascii=False)
        return
    items: list[Item] = list(response.get(key, []))
    if not items:
        print(f"no {key}")
        return
    rows = [[header for header, _ in columns]]
    rows += [[_cell(value(item)) for _, value in columns] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for n, row in enumerate(rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if n and details is not None:
            for line in details(items[n - 1]):
                print(f"  {line}")
    if response.get("nextPageToken"):
        print(f"({len(items)} shown; there are more)")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    text = " ".join(str(value).split())  # one line per row, whatever a field holds
    return text or "-"
