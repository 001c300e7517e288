"""Faults done to a local stack's real processes, as an operator or a node loss would."""

from __future__ import annotations

import os
import signal

from contentembed.cli.stack import LocalStack, ServiceProcess


def service(stack: LocalStack, name: str) -> ServiceProcess:
    return next(s for s in stack.services if s.name == name)


def kill(stack: LocalStack, name: str) -> None:
    """SIGKILL, as an OOM kill or a node loss does; returns once the process is gone."""
    process = service(stack, name)
    os.kill(process.pid, signal.SIGKILL)
    process.process.wait(10)
