"""lrobridge: Pub/Sub-driven notifications for google.longrunning Operations.

Public API: :class:`Bridge` (configuration, callbacks, app, watcher) and
:class:`CompletionEvent` (what callbacks receive). It imports only those two.

Where things live (docs/architecture.md has the module tables): ``core/`` pure rules,
``watching/`` ``operations/`` ``webhooks/`` the features, ``delivery/`` relay, push and
dispatch, ``ports.py`` the Protocol seams, ``storage/`` the store rulebook and its backends,
``adapters/`` everything that talks to the outside, ``wiring/`` the parts and the process
runtime, ``bridge.py`` the user's object, ``cli/`` the command line.
"""

from lrobridge.bridge import Bridge
from lrobridge.delivery.dispatch import CompletionEvent

__all__ = ["Bridge", "CompletionEvent"]
__version__ = "0.1.0"
