from __future__ import annotations

import pytest

from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from tests.conftest import running_service, settings_for_test


@pytest.fixture(scope="session")
def text_encoder():
    """The real all-MiniLM-L6-v2 behind a real server; loaded once per test run."""
    settings = settings_for_test(TextEncoderSettings, max_batch_size=16, max_input_bytes=4096)
    with running_service(TextEncoderService, settings) as runtime:
        assert runtime.load_error is None, runtime.load_error
        yield runtime
