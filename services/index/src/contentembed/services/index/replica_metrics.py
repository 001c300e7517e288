"""Prometheus metrics of a replica group, read from it at scrape time (no counters to
keep in step): role, term, the in-sync set, each follower's lag and last catch-up,
failovers and refused stale-term messages."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from contentembed.services.index.replica_group import PRIMARY, ReplicaGroup


class ReplicationCollector(Collector):
    def __init__(self, group: ReplicaGroup, shard_index: int) -> None:
        self.group = group
        self.shard = str(shard_index)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        group, shard = self.group, self.shard
        labels = ["shard", "replica"]
        own = [shard, group.replica_id]

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_text, labels=labels)
            family.add_metric(own, value)
            return family

        yield gauge("contentembed_replica_primary", "1 while this replica is its shard's primary.",
                    1.0 if group.role == PRIMARY else 0.0)
        yield gauge("contentembed_replica_term", "The highest term this replica has seen.", group.term)
        yield gauge("contentembed_replica_in_sync",
                    "1 while this replica holds every acknowledged write (serves reads).",
                    1.0 if group.in_sync else 0.0)
        yield gauge("contentembed_replica_group_size", "Replicas the shard is configured with.",
                    1 + len(group.peers))
        failovers = CounterMetricFamily("contentembed_replica_failovers",
                                        "Times this replica became primary.", labels=labels)
        failovers.add_metric(own, group.failovers)
        yield failovers
        stale = CounterMetricFamily("contentembed_replica_stale_term_refusals",
                                    "Messages refused for an older term (a replaced primary).",
                                    labels=labels)
        stale.add_metric(own, group.follower.stale_term_refusals)
        yield stale
        replicator = group.replicator
        in_sync_set = GaugeMetricFamily(
            "contentembed_replica_in_sync_replicas",
            "On the primary: replicas in its in-sync set, itself included.", labels=labels)
        per_follower = ["shard", "replica", "follower"]
        lag_records = GaugeMetricFamily(
            "contentembed_replication_lag_records",
            "On the primary: log records a follower has not confirmed.", labels=per_follower)
        lag_seconds = GaugeMetricFamily(
            "contentembed_replication_lag_seconds",
            "On the primary: how long the oldest write a follower has not confirmed has waited "
            "(for a follower out of the in-sync set: since it left it).", labels=per_follower)
        catch_up = GaugeMetricFamily(
            "contentembed_replica_catch_up_seconds",
            "On the primary: how long a follower's last catch-up took.", labels=per_follower)
        if replicator is not None:  # followers export the families without samples
            in_sync_set.add_metric(own, len(replicator.in_sync_ids()))
            now = time.monotonic()
            for link in replicator.links:
                key = [*own, link.replica_id]
                lag_records.add_metric(key, link.lag_records)
                lag_seconds.add_metric(key, link.lag_seconds(now))
                if link.caught_up_s is not None:
                    catch_up.add_metric(key, link.caught_up_s)
        yield in_sync_set
        yield lag_records
        yield lag_seconds
        yield catch_up
