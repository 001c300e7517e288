"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.support.flaky_gateway import FlakyGateway
from tests.support.recording_gateway import serving_gateway


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FlakyGateway, str]]:
    servicer = FlakyGateway()
    with serving_gateway(servicer) as address:
        yield servicer, address


@pytest.fixture
def flaky_gateway(fake) -> tuple[FlakyGateway, str]:
    servicer, address = fake
    servicer.calls.clear()
    servicer.failures = 0
    servicer.failure = grpc.StatusCode.UNAVAILABLE
    return servicer, address
