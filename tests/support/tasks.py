"""A Cloud Tasks double with the real service's naming rules, for unit tests (no network).

:class:`FakeTaskQueue` implements :class:`lrobridge.ports.TaskQueue` as Cloud Tasks documents
it where the emulator does not: a task name can be used once (creating a name that is pending,
ran or was deleted answers ALREADY_EXISTS, here ``False``), ``delete`` removes a pending task.
Tests deliver tasks themselves (:meth:`FakeTaskQueue.take`), so time never has to pass; the
:attr:`fail_creates` counter makes the next creates fail as Cloud Tasks being unavailable.
"""

from __future__ import annotations

import dataclasses
import threading

from lrobridge.errors import Unavailable


@dataclasses.dataclass(frozen=True)
class FakeTask:
    queue: str
    name: str
    url: str
    body: bytes
    schedule_time: float


class FakeTaskQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending: dict[str, FakeTask] = {}
        self.used: set[str] = set()  # every name ever created (Cloud Tasks' tombstones)
        self.created: list[FakeTask] = []
        self.deleted: list[str] = []
        self.fail_creates = 0

    def create(self, queue: str, name: str, *, url: str, body: bytes, schedule_time: float) -> bool:
        with self._lock:
            if self.fail_creates:
                self.fail_creates -= 1
                raise Unavailable("Cloud Tasks is unavailable (test)")
            if name in self.used:
                return False
            task = FakeTask(queue, name, url, body, schedule_time)
            self.used.add(name)
            self.pending[name] = task
            self.created.append(task)
            return True

    def delete(self, queue: str, name: str) -> bool:
        with self._lock:
            if self.pending.pop(name, None) is None:
                return False
            self.deleted.append(name)
            return True

    def take(self, name: str | None = None) -> FakeTask:
        """Remove a pending task for delivery: the one named, or the only one."""
        with self._lock:
            if name is None:
                (name,) = self.pending
            return self.pending.pop(name)

    def close(self) -> None:
        pass
