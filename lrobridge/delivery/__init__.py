"""From "the bridge knows" to "every subscriber was told": the outbox relay, push decoding,
the push endpoint's logic and the callback dispatcher.

Pure of I/O libraries: Pub/Sub, tokens and the store are reached through :mod:`lrobridge.ports`.
May import :mod:`lrobridge.core`, :mod:`lrobridge.ports`, config and errors only.
"""
