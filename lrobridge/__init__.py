"""lrobridge: Pub/Sub-driven notifications for google.longrunning Operations.

Public API: :class:`Bridge` (configuration, callbacks, app, watcher) and
:class:`CompletionEvent` (what callbacks receive).
"""

from lrobridge.bridge import Bridge
from lrobridge.delivery.dispatch import CompletionEvent

__all__ = ["Bridge", "CompletionEvent"]
__version__ = "0.1.0"
