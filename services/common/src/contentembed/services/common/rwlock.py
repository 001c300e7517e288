"""A phase-fair readers-writer lock: searches run in parallel, writes alone, and neither
starves the other.

Waiting writers go before new readers (a stream of searches cannot starve upserts), and
when a writer releases the lock, the readers that were waiting for it go before the next
writer, even one that asks again at once: a large upsert applied slice by slice (each
slice a write) lets the searches waiting on it run between its slices instead of after
the whole write.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        # Set when a writer leaves with readers waiting: their turn before the next writer.
        self._read_turn = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._readers_waiting += 1
            while self._writer or (self._writers_waiting and not self._read_turn):
                self._cond.wait()
            self._readers_waiting -= 1
            self._readers += 1
            if not self._readers_waiting:
                self._read_turn = False
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers or self._read_turn:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._read_turn = self._readers_waiting > 0
                self._cond.notify_all()
