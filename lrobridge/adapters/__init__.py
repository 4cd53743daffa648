"""Adapters: the only code that talks to the outside (gRPC, HTTP, Pub/Sub, Google's token
certificates, webhook receivers).

An adapter implements a seam of :mod:`lrobridge.ports` or serves the core over a transport. It
may import the core, :mod:`lrobridge.ports`, its I/O library and other adapters; never
:mod:`lrobridge.wiring`, :mod:`lrobridge.cli` or :mod:`lrobridge.bridge`.
"""
