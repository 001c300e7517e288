"""Retrieval-quality metrics exported by a real gateway."""

from __future__ import annotations

import time
import urllib.request
from contextlib import ExitStack

from prometheus_client.parser import text_string_to_metric_families

from contentembed.client import Client
from tests.service.test_gateway import DOCUMENTS
from tests.service.test_gateway_routing import gateway_over


def samples(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_recall_drift_and_catalog_coverage_are_measured(text_encoder) -> None:
    with ExitStack() as stack:
        gateway = gateway_over(
            stack, [text_encoder], recall_sample_rate=1.0, drift_reference_size=5, drift_window=5,
            encoder_refresh_s=0.2,
        )
        with Client(gateway.address) as client:
            client.create_collection("shop")
            client.upsert_documents("shop", DOCUMENTS)
            for query in ["coffee", "espresso beans", "grinder", "milk frother", "latte",
                          "tent", "sleeping bag", "stove", "hiking", "camping gear"]:
                client.search("shop", text=query, top_k=3)
        assert gateway.service.gateway.wait_for_shadow()
        space = text_encoder.service.backend.space.space_id
        deadline = time.monotonic() + 5
        while ("contentembed_query_drift_psi", (("space", space),)) not in samples(gateway.metrics_port):
            assert time.monotonic() < deadline, "drift gauges never appeared"
            time.sleep(0.1)
        values = samples(gateway.metrics_port)
    recall = ("contentembed_sampled_recall_at_k_count", (("collection", "shop"),))
    recall_sum = ("contentembed_sampled_recall_at_k_sum", (("collection", "shop"),))
    assert values[recall] == 10 and values[recall_sum] == 10.0  # 12 items: HNSW is exact here
    # Coffee queries first, camping last: the recent mean moved away from the reference.
    assert values[("contentembed_query_drift_cosine", (("space", space),))] < 0.95
    covered = values[("contentembed_catalog_coverage_ratio", (("collection", "shop"),))]
    assert 0 < covered <= 1
