"""What one GetOperation of a watched operation saw, for the modes that poll synchronously (the
Pub/Sub-driven and the Cloud Tasks modes): the snapshot, or the failure as lrobridge's error
tree, which is what the one poll decision (:func:`lrobridge.core.poll.decide`) takes.

May import :mod:`lrobridge.core`, :mod:`lrobridge.ports` and errors.
"""

from __future__ import annotations

from collections.abc import Callable

from lrobridge.core import codec
from lrobridge.errors import BridgeError, classify_api_error
from lrobridge.ports import OperationsSource


def get_observation(
    sources: Callable[[str], OperationsSource], url: str, operation: str, *, timeout: float
) -> codec.Snapshot | BridgeError:
    """GetOperation of ``operation`` on the source at ``url`` (opened by ``sources``); a
    failure, opening the source included, is returned, not raised."""
    try:
        return sources(url).get_operation(operation, timeout=timeout)
    except BridgeError as exc:
        return exc
    except Exception as exc:  # an adapter let a library error through
        return classify_api_error(exc)
