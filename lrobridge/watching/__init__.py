"""Watching operations: the Watch resource, the in-process poller and the Pub/Sub-driven mode.

Every mode reaches sources, Pub/Sub and the store only through :mod:`lrobridge.ports`; no
module here imports an adapter or an I/O library.
"""
