"""Which completion events a webhook receives: operation-name glob, outcomes, metadata type.

A :class:`WebhookFilter` is validated when it is built (the same checks for REST, CLI and Python
callers) and matched against each event by :meth:`WebhookFilter.matches`. Every part is
optional; an empty filter matches every completion. Progress events (outcome ``progress``) reach
only webhooks whose outcomes name them, as with Python callbacks. The glob syntax is
:mod:`lrobridge.core.globs` (``*`` one segment, ``**`` any number).

Pure module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from lrobridge.core.globs import compile_glob, glob_matches
from lrobridge.delivery.dispatch import EVENT_TYPES
from lrobridge.errors import InvalidArgument

MAX_GLOB_LENGTH = 1024
MAX_TYPE_URL_LENGTH = 1024


@dataclasses.dataclass(frozen=True)
class WebhookFilter:
    """Which events a webhook receives: operation glob, outcomes, metadata type."""

    operation: str = ""  # glob; empty matches every name
    outcomes: frozenset[str] = frozenset()  # empty: every completion outcome (not progress)
    metadata_type: str = ""  # exact type URL; empty matches any

    def __post_init__(self) -> None:
        if self.operation:
            if len(self.operation) > MAX_GLOB_LENGTH:
                raise InvalidArgument(f"operation glob is longer than {MAX_GLOB_LENGTH} characters")
            compile_glob(self.operation)
        for outcome in self.outcomes:
            if outcome not in EVENT_TYPES:
                raise InvalidArgument(
                    f"unknown outcome {outcome!r}; use one of {', '.join(EVENT_TYPES)}"
                )
        if len(self.metadata_type) > MAX_TYPE_URL_LENGTH:
            raise InvalidArgument(f"metadata type is longer than {MAX_TYPE_URL_LENGTH} characters")
        if self.metadata_type and any(c.isspace() for c in self.metadata_type):
            raise InvalidArgument(f"metadata type {self.metadata_type!r} contains whitespace")

    @classmethod
    def build(
        cls,
        *,
        operation: str | None = None,
        outcomes: str | Iterable[str] | None = None,
        metadata_type: str | None = None,
    ) -> WebhookFilter:
        if isinstance(outcomes, str):
            outcomes = [outcomes]
        return cls(
            operation=(operation or "").strip(),
            outcomes=frozenset(o.strip().lower() for o in outcomes or () if o.strip()),
            metadata_type=(metadata_type or "").strip(),
        )

    def matches(self, *, name: str, outcome: str, metadata_type: str) -> bool:
        if self.outcomes:
            if outcome not in self.outcomes:
                return False
        elif outcome == "progress":
            return False
        if self.operation and not glob_matches(self.operation, name):
            return False
        return not self.metadata_type or self.metadata_type == metadata_type
