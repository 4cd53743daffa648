"""Kept so that ``from lrobridge.producer import ProducedOperation`` (the README's producer
example since the first release) goes on working; the kit lives in
:mod:`lrobridge.operations.producer`."""

from lrobridge.operations.producer import ProducedOperation, Producer

__all__ = ["ProducedOperation", "Producer"]
