from __future__ import annotations

import pytest

from contentembed.services.common.config import load_settings
from contentembed.services.gateway.service import GatewaySettings
from contentembed.services.index.service import IndexSettings


def test_flags_override_environment_which_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTENTEMBED_PORT", "7001")
    monkeypatch.setenv("CONTENTEMBED_MAX_TOP_K", "50")
    settings = load_settings(IndexSettings, ["--port", "7002"])
    assert settings.port == 7002
    assert settings.max_top_k == 50
    assert settings.hnsw_m == 16


def test_endpoint_lists_accept_commas_in_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTENTEMBED_INDEX_ENDPOINTS", "a:1, b:2")
    assert load_settings(GatewaySettings, []).index_endpoints == ["a:1", "b:2"]
    flags = load_settings(GatewaySettings, ["--index-endpoints", "c:3,d:4"])
    assert flags.index_endpoints == ["c:3", "d:4"]


def test_invalid_shard_position_is_refused() -> None:
    with pytest.raises(Exception, match="shard_index"):
        IndexSettings(shard_index=2, shard_count=2)
