"""The Operations interface the bridge serves: the service over every tracked operation,
WaitOperation waiters and the producer kit for services that create their own operations.

Transport-free: the gRPC servicer and the REST views in :mod:`lrobridge.adapters` call in.
May import :mod:`lrobridge.core`, :mod:`lrobridge.delivery`, :mod:`lrobridge.ports`, config
and errors; no adapter, no storage backend, no I/O library.
"""
