"""`contentembed shards` as an operator runs it, against 2 shards x 2 real replica
processes: the listing (roles, sync, lag; exit 0 only when healthy), verify (replicas hold
the primary's data), a follower killed and restarted, the shard list taken from a real
gateway, and a primary handed over with `promote`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.services.common.sharding import shard_for_id
from tests.support.replica_stack import DIM, ReplicaGroupStack, upsert_request

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
SHARDS = 2
CLI_TIMEOUT_S = 60


class Groups:
    def __init__(self, root: Path) -> None:
        self.stacks: list[ReplicaGroupStack] = []
        try:
            for n in range(SHARDS):
                self.stacks.append(ReplicaGroupStack(root, 2, shard_index=n,
                                                     shard_count=SHARDS).start())
        except BaseException:
            self.stop()
            raise
        self.written = 0

    @property
    def endpoints(self) -> str:
        return ",".join("|".join(r.address for r in s.replicas) for s in self.stacks)

    def write(self, count: int) -> None:
        """``count`` new ids, each upserted on its shard's primary."""
        ids = [f"item-{self.written + n}" for n in range(count)]
        self.written += count
        for n, stack in enumerate(self.stacks):
            mine = [i for i in ids if shard_for_id(i, SHARDS) == n]
            if mine:
                stack.primary().index.Upsert(upsert_request("c", mine), timeout=10)

    def healthy(self) -> None:
        """Every replica running and in sync (what each test starts from)."""
        for stack in self.stacks:
            for replica in stack.replicas:
                if replica.process.returncode is not None:
                    stack.restart(replica)
            stack.wait_all_in_sync()

    def stop(self) -> None:
        for stack in self.stacks:
            stack.stop()


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Groups]:
    groups = Groups(tmp_path_factory.mktemp("shards"))
    try:
        for stack in groups.stacks:
            stack.primary().index.CreateCollection(
                pb.CreateCollectionRequest(name="c", space_id="s@1", dim=DIM), timeout=10)
            stack.wait_all_in_sync()
        yield groups
    finally:
        groups.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONTENTEMBED_API_KEY", "CONTENTEMBED_TLS", "CONTENTEMBED_TARGET"))}
    return subprocess.run([sys.executable, "-m", "contentembed.cli.main", "shards", *args],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env)


def listed(groups: Groups) -> tuple[int, dict]:
    run = cli("--endpoints", groups.endpoints, "--json")
    return run.returncode, json.loads(run.stdout)


def eventually_healthy(groups: Groups, timeout: float = 30.0) -> dict:
    """The JSON listing once it exits 0 (a replica back in sync is counted by its primary
    a moment after it says so)."""
    deadline = time.monotonic() + timeout
    while True:
        code, answer = listed(groups)
        if code == 0:
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)


def test_list_shows_every_shards_primary_and_followers_in_sync(groups: Groups) -> None:
    groups.healthy()
    groups.write(40)
    run = cli("--endpoints", groups.endpoints)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    roles = re.findall(r"127\.0\.0\.1:\d+\s+(\w+)\s+\d+\s+yes\s+yes", run.stdout)
    assert sorted(roles) == ["follower", "follower", "primary", "primary"], run.stdout
    assert "all 2 shards have a primary and every replica in sync" in run.stdout

    answer = eventually_healthy(groups)
    assert answer["ok"] is True
    for n, (shard, stack) in enumerate(zip(answer["shards"], groups.stacks)):
        assert shard["shard"] == n and shard["problems"] == []
        assert shard["primary"] == stack.primary().replica_id
        rows = {r["address"]: r for r in shard["replicas"]}
        assert set(rows) == {r.address for r in stack.replicas}
        assert sorted(r["role"] for r in rows.values()) == ["follower", "primary"]
        assert all(r["in_sync"] and r["listed"] and r["lag"] == 0 for r in rows.values())
        assert len({r["total_seq"] for r in rows.values()}) == 1
        assert rows[stack.primary().address]["total_seq"] > 0
    # `shards list` is the same command as `shards`.
    assert cli("list", "--endpoints", groups.endpoints).returncode == 0


def test_verify_passes_after_writes(groups: Groups) -> None:
    groups.healthy()
    groups.write(60)
    run = cli("verify", "--endpoints", groups.endpoints)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": OK: 2 replicas hold the same 1 version (") == 2
    assert sum(s["items"] for s in json.loads(
        cli("verify", "--json", "--endpoints", groups.endpoints).stdout)["shards"]) == groups.written
    as_json = cli("--endpoints", groups.endpoints, "verify", "--json")  # group options too
    answer = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and answer["ok"] is True
    assert all(not r["differences"] for s in answer["shards"] for r in s["replicas"])


def test_a_killed_follower_is_down_fails_list_and_verify_until_it_is_back(groups: Groups) -> None:
    groups.healthy()
    stack = groups.stacks[1]
    follower = next(r for r in stack.replicas if r is not stack.primary())
    stack.kill(follower)
    try:
        groups.write(20)  # the primary goes on without it
        started = time.monotonic()
        run = cli("--endpoints", groups.endpoints, "--timeout", "2")
        assert time.monotonic() - started < 30
        print(run.stdout, run.stderr)
        assert run.returncode == 1
        assert "down" in run.stdout
        assert f"shard 1: {follower.address} is down" in run.stderr
        code, answer = listed(groups)
        assert code == 1 and answer["shards"][0]["ok"] and not answer["shards"][1]["ok"]
        row = next(r for r in answer["shards"][1]["replicas"] if r["address"] == follower.address)
        assert row["role"] == "down" and row["error"].startswith("UNAVAILABLE")

        verified = cli("verify", "--endpoints", groups.endpoints)
        assert verified.returncode == 1
        assert "shard 0: OK" in verified.stdout and "shard 1: FAILED" in verified.stdout
    finally:
        stack.restart(follower)
    stack.wait_all_in_sync()
    eventually_healthy(groups)
    verified = cli("verify", "--endpoints", groups.endpoints)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_shard_list_comes_from_the_gateway(groups: Groups) -> None:
    """`--target`: a real gateway's ListShards names each shard's replicas joined by |."""
    from contentembed.services.gateway.service import GatewayService, GatewaySettings
    from contentembed.services.image_encoder.service import (
        ImageEncoderService,
        ImageEncoderSettings,
    )
    from tests.conftest import running_service, settings_for_test

    groups.healthy()
    with running_service(ImageEncoderService, settings_for_test(
            ImageEncoderSettings, backend="pixels", max_batch_size=8)) as encoder, \
         running_service(GatewayService, settings_for_test(
            GatewaySettings, encoder_endpoints=[encoder.address],
            index_endpoints=groups.endpoints.split(","), downstream_wait_s=60.0)) as gateway:
        run = cli("--target", gateway.address, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    answer = json.loads(run.stdout)
    assert [[r["address"] for r in s["replicas"]] for s in answer["shards"]] == [
        [r.address for r in stack.replicas] for stack in groups.stacks]


def test_promote_hands_a_shards_primary_to_its_follower(groups: Groups) -> None:
    groups.healthy()
    stack = groups.stacks[0]
    old = stack.primary()
    new = next(r for r in stack.replicas if r is not old)
    old_term = old.state().term
    run = cli("promote", "0", new.replica_id, "--endpoints", groups.endpoints, "--timeout", "15")
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"replica {new.replica_id} ({new.address}) is primary in term" in run.stdout
    assert new.state().term > old_term

    answer = eventually_healthy(groups)
    shard = answer["shards"][0]
    assert shard["primary"] == new.replica_id and shard["term"] > old_term
    roles = {r["replica_id"]: r["role"] for r in shard["replicas"]}
    assert roles == {new.replica_id: "primary", old.replica_id: "follower"}
    # Writes go to the new primary and reach the old one.
    groups.write(20)
    assert cli("verify", "--endpoints", groups.endpoints).returncode == 0
    # Naming the primary again changes nothing; a replica that is not there is an error.
    again = cli("promote", "0", new.replica_id, "--endpoints", groups.endpoints, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    unknown = cli("promote", "0", "9", "--endpoints", groups.endpoints)
    assert unknown.returncode == 1 and "no replica 9 answers in shard 0" in unknown.stderr
