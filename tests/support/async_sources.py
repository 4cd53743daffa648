"""The asyncio sources seen through the sync :class:`lrobridge.ports.OperationsSource` calls, so
one test suite checks both twins (tests/integration/test_sources.py).

:class:`BlockingAsyncSource` runs an :class:`~lrobridge.ports.AsyncOperationsSource` on an event
loop of its own (a thread) and waits for each call. The asyncio sources have no Cancel or Delete
(the facade uses the sync ones): those calls skip the test. :meth:`BlockingAsyncSource.shutdown`
ends it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from lrobridge.core.codec import Snapshot
from lrobridge.ports import AsyncOperationsSource

T = TypeVar("T")


class BlockingAsyncSource:
    """An asyncio source called from sync code (tests only)."""

    def __init__(self, open_async: Callable[[], AsyncOperationsSource]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="async-source", daemon=True
        )
        self._thread.start()
        self._source = self._run_sync(open_async)
        self.url = self._source.url

    def _run_sync(self, make: Callable[[], T]) -> T:
        async def call() -> T:
            return make()

        return self._run(call())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def get_operation(self, name: str, *, timeout: float) -> Snapshot:
        return self._run(self._source.get_operation(name, timeout=timeout))

    def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot:
        return self._run(self._source.wait_operation(name, wait=wait, timeout=timeout))

    def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[list[Snapshot], str]:
        return self._run(
            self._source.list_operations(
                parent, filter=filter, page_size=page_size, page_token=page_token, timeout=timeout
            )
        )

    def cancel_operation(self, name: str, *, timeout: float) -> None:
        pytest.skip("the asyncio sources have no CancelOperation (the facade's are sync)")

    def delete_operation(self, name: str, *, timeout: float) -> None:
        pytest.skip("the asyncio sources have no DeleteOperation (the facade's are sync)")

    def close(self) -> None:
        """Close the source (the loop stays: a closed source must still answer Unavailable)."""
        self._run(self._source.aclose())

    def shutdown(self) -> None:
        """Close the source and stop and close the loop."""
        self.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
