"""Stopping work whose caller is gone (pure: no grpc).

Long work (a batch of searches, a scan of every item's metadata, an exact search over a
collection) checks an ``Interrupt`` between chunks of bounded cost, so a caller that
cancels or whose deadline passes stops the work within one chunk instead of leaving the
service computing an answer nobody will read. The gRPC edge builds one from the call
(``interceptor.interrupt_of``); code called without a caller uses ``NEVER``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from contentembed.services.common.errors import Cancelled, DeadlineExceeded


@dataclass(frozen=True)
class Interrupt:
    """``check()`` raises DeadlineExceeded once ``deadline`` (a time.monotonic() value)
    has passed, Cancelled once ``is_active()`` says the caller went away."""

    deadline: float | None = None
    is_active: Callable[[], bool] | None = None

    def check(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the deadline passed; the work was stopped")
        if self.is_active is not None and not self.is_active():
            raise Cancelled("the caller went away; the work was stopped")


NEVER = Interrupt()
