"""Turning SIGINT, SIGTERM and SIGHUP into one orderly stop of the launcher.

The handler only notes the signal and unwinds the main thread with ``StopRequested``
(like KeyboardInterrupt, so blocking waits and gRPC calls end promptly). It raises once:
later signals are only noted, so nothing cuts the ordered stop of the services short.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class StopRequested(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def stop_signals() -> list[signal.Signals]:
    # SIGHUP does not exist on Windows.
    return [signal.Signals[name] for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


class StopSignals:
    """``with StopSignals() as signals:`` handles the stop signals in the main thread
    until the block ends, then restores the previous handlers.

    A SIGHUP that is ignored on entry (``nohup contentembed up``) stays ignored: the
    operator asked for the stack to survive the terminal.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._raised = False
        self._held = 0
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in stop_signals():
            current = signal.getsignal(signum)
            if signum != signal.SIGINT and current == signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes, possibly while that thread holds
        # a lock (logging's, a console's): no logging, no printing, only note and unwind.
        if self.received is None:
            self.received = signum
        if not self._raised and not self._held:
            self._raised = True
            raise StopRequested(signum)

    def disarm(self) -> None:
        """From now on signals are only noted: the caller is already stopping."""
        self._raised = True

    @contextmanager
    def held(self) -> Iterator[None]:
        """Delays StopRequested to the end of the block (e.g. between starting a child and
        recording its pid, so that no child escapes the ordered stop)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if not self._held and self.received is not None and not self._raised:
            self._raised = True
            raise StopRequested(self.received)
