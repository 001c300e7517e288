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


@pytest.mark.parametrize(("hostname", "expected"), [("index-0", 0), ("index-3", 3),
                                                    ("contentembed-index-12.svc", 12)])
def test_shard_index_from_the_statefulset_hostname(
    monkeypatch: pytest.MonkeyPatch, hostname: str, expected: int
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: hostname)
    monkeypatch.setenv("CONTENTEMBED_SHARD_COUNT", "16")
    settings = load_settings(IndexSettings, ["--shard-index-from-hostname"])
    assert (settings.shard_index, settings.shard_count) == (expected, 16)
    monkeypatch.setenv("CONTENTEMBED_SHARD_INDEX_FROM_HOSTNAME", "true")
    assert load_settings(IndexSettings, []).shard_index == expected


@pytest.mark.parametrize("hostname", ["index", "index-", "index-a", "my-host-x1", "index-\u0663"])
def test_shard_index_from_hostname_refuses_a_hostname_without_a_number(
    monkeypatch: pytest.MonkeyPatch, hostname: str
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: hostname)
    with pytest.raises(Exception, match="does not end in -<number>"):
        IndexSettings(shard_index_from_hostname=True, shard_count=4)


def test_shard_index_from_hostname_must_be_below_the_shard_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "index-2")
    with pytest.raises(Exception, match="CONTENTEMBED_SHARD_COUNT"):
        IndexSettings(shard_index_from_hostname=True, shard_count=2)
    with pytest.raises(Exception, match="not both"):
        IndexSettings(shard_index_from_hostname=True, shard_index=1, shard_count=4)


@pytest.mark.parametrize("listed", ["k1,,k2", "k1,", ",k1", "k1, ,k2"])
def test_an_empty_entry_in_a_key_or_endpoint_list_is_refused(
    monkeypatch: pytest.MonkeyPatch, listed: str
) -> None:
    """Dropped silently before: a key lost to a pasting slip went unnoticed."""
    monkeypatch.setenv("CONTENTEMBED_API_KEYS", listed)
    with pytest.raises(Exception, match="empty entry"):
        load_settings(IndexSettings, [])
    monkeypatch.delenv("CONTENTEMBED_API_KEYS")
    with pytest.raises(Exception, match="empty entry"):
        load_settings(GatewaySettings, ["--index-endpoints", listed.replace("k", "h:")])
    monkeypatch.setenv("CONTENTEMBED_API_KEYS", "")
    assert load_settings(IndexSettings, []).api_keys == []  # set but empty: no keys
