"""Watching operations: the Watch resource, the in-process poller and the Pub/Sub-driven mode.

Every mode reaches sources, Pub/Sub and the store only through :mod:`lrobridge.ports`. May
import :mod:`lrobridge.core`, :mod:`lrobridge.delivery`, :mod:`lrobridge.ports`, the generated
``lrobridge.proto`` messages, config and errors; no adapter, no storage, no I/O library.
"""
