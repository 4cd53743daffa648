"""The composition root's parts: building the pieces from :class:`~lrobridge.config.Settings`
lazily, and running them in a process (threads, gRPC server, close).

Wiring may import everything but :mod:`lrobridge.cli`; nothing but :mod:`lrobridge.bridge`,
the entry points and the CLI imports wiring.
"""
