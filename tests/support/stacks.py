"""A whole gateway stack in this process for CLI and SDK tests: the given text encoder, a
pixels image encoder, two index shards and a gateway routing to them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.image_encoder.service import ImageEncoderService, ImageEncoderSettings
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import running_service, settings_for_test


@contextmanager
def gateway_stack(text_encoder: Any, shard_count: int = 2, **gateway_settings: Any) -> Iterator[Any]:
    """Yields the gateway's runtime (``.address``); stops everything it started after.
    ``gateway_settings`` override the gateway's settings."""
    with ExitStack() as stack:
        image = stack.enter_context(running_service(ImageEncoderService, settings_for_test(
            ImageEncoderSettings, backend="pixels", max_batch_size=8)))
        shards = [
            stack.enter_context(running_service(IndexService, settings_for_test(
                IndexSettings, shard_index=n, shard_count=shard_count)))
            for n in range(shard_count)
        ]
        yield stack.enter_context(running_service(GatewayService, settings_for_test(
            GatewaySettings, encoder_endpoints=[text_encoder.address, image.address],
            index_endpoints=[s.address for s in shards], downstream_wait_s=60.0,
            **gateway_settings)))
