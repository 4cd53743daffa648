"""The composition root: :mod:`.parts` builds every piece from :class:`~lrobridge.config.Settings`
lazily (the webhook feature's included), :mod:`.runtime` runs them in a process (drainer and
webhook threads, gRPC server, close). :class:`lrobridge.bridge.Bridge` delegates to both.

Wiring may import everything but :mod:`lrobridge.cli` and :mod:`lrobridge.bridge`; nothing but
:mod:`lrobridge.bridge`, the entry points and the CLI imports wiring.
"""
