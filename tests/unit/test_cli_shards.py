"""`contentembed shards` without servers: the comparison `verify` makes, the health `list`
judges, the messages `promote` gives, and the command line against replicas that are not
there (shown down, exit 1, never a traceback)."""

from __future__ import annotations

import json
import socket

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from typer.testing import CliRunner

from contentembed.cli import shards
from contentembed.cli.main import app
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import replication_service_pb2 as rpb

PRIMARY, FOLLOWER = rpb.REPLICA_ROLE_PRIMARY, rpb.REPLICA_ROLE_FOLLOWER


def version(collection: str = "c", name: str = "live", seq: int = 10, items: int = 5,
            sha: str = "a" * 64, pending: bool = False) -> rpb.ReplicaVersion:
    if pending:
        return rpb.ReplicaVersion(collection=collection, version=name, seq=seq, pending=True)
    return rpb.ReplicaVersion(collection=collection, version=name, seq=seq, item_count=items,
                              content_sha256=sha)


def state(replica_id: str = "0", role: int = PRIMARY, term: int = 3, in_sync: bool = True,
          versions: list[rpb.ReplicaVersion] | None = None,
          aliases: list[rpb.ReplicaAlias] | None = None) -> rpb.ReplicaState:
    return rpb.ReplicaState(
        replica_id=replica_id, role=role, term=term, in_sync=in_sync,
        versions=[version()] if versions is None else versions,
        aliases=[rpb.ReplicaAlias(collection="c", active="live")] if aliases is None else aliases,
    )


def probe(s: rpb.ReplicaState | None, address: str = "", error: str = "") -> shards.Probe:
    return shards.Probe(address or f"10.0.0.{s.replica_id if s else 9}:1", state=s, error=error)


# -- compare_states (verify) -------------------------------------------------------------
def test_equal_states_do_not_differ() -> None:
    two = [version(), version(name="v2", seq=4, items=2, sha="b" * 64), version(name="p", pending=True)]
    assert shards.compare_states(state(versions=two), state("1", FOLLOWER, versions=list(two))) == []


@pytest.mark.parametrize("changed, field", [
    (dict(items=4), "items"), (dict(seq=9), "seq"), (dict(sha="c" * 64), "content_sha256"),
])
def test_a_version_that_differs_in_count_seq_or_content_is_named_with_the_field(
    changed: dict, field: str,
) -> None:
    differences = shards.compare_states(state(), state("1", FOLLOWER, versions=[version(**changed)]))
    assert len(differences) == 1
    difference = differences[0]
    assert (difference.collection, difference.version) == ("c", "live")
    assert difference.problem == f"differs in {field}"
    assert difference.primary == {"seq": 10, "items": 5, "content_sha256": "a" * 64}
    assert difference.replica is not None and difference.replica != difference.primary
    assert str(difference) == f"c/live: differs in {field}"


def test_versions_missing_on_either_side_are_differences() -> None:
    primary = state(versions=[version(), version(name="v2")])
    follower = state("1", FOLLOWER, versions=[version(), version(name="old")])
    found = {(d.version, d.problem) for d in shards.compare_states(primary, follower)}
    assert found == {("v2", "missing on the replica"),
                     ("old", "on the replica only (not on the primary)")}


def test_a_pending_version_compares_its_seq_alone() -> None:
    primary = state(versions=[version(name="p", pending=True, seq=3)])
    assert shards.compare_states(primary, state("1", FOLLOWER, versions=[
        version(name="p", pending=True, seq=3)])) == []
    behind = shards.compare_states(primary, state("1", FOLLOWER, versions=[
        version(name="p", pending=True, seq=2)]))
    assert [d.problem for d in behind] == ["differs in seq"]
    installed = shards.compare_states(primary, state("1", FOLLOWER, versions=[
        version(name="p", seq=3)]))
    assert installed[0].problem.startswith("differs in pending")


def test_an_alias_that_points_elsewhere_is_a_difference() -> None:
    follower = state("1", FOLLOWER, aliases=[rpb.ReplicaAlias(collection="c", active="v2",
                                                              previous="live")])
    (difference,) = shards.compare_states(state(), follower)
    assert (difference.collection, difference.version) == ("c", "")
    assert difference.primary == {"active": "live", "previous": ""}
    assert str(difference) == "alias c: the alias differs"


def test_verify_a_shard_passes_when_its_replicas_match() -> None:
    verdict = shards.verify_shard(0, [probe(state()), probe(state("1", FOLLOWER))])
    assert verdict.ok and verdict.primary == "0" and verdict.versions == 1 and verdict.items == 5


def test_verify_fails_on_a_difference_a_down_replica_or_no_primary() -> None:
    different = shards.verify_shard(0, [probe(state()), probe(state("1", FOLLOWER, versions=[
        version(items=6)]))])
    assert not different.ok and not different.problems
    assert [d.problem for d in different.replicas[1].differences] == ["differs in items"]
    down = shards.verify_shard(0, [probe(state()), probe(None, "h:2", "UNAVAILABLE: refused")])
    assert not down.ok and down.problems == ["h:2 is down: UNAVAILABLE: refused"]
    headless = shards.verify_shard(0, [probe(state("0", FOLLOWER)), probe(state("1", FOLLOWER))])
    assert not headless.ok and "no replica says it is primary" in headless.problems[0]
    as_json = shards.verdict_json([different, down])
    assert as_json["ok"] is False
    assert as_json["shards"][0]["replicas"][1]["differences"][0]["problem"] == "differs in items"
    json.dumps(as_json)


def test_verify_compares_with_the_highest_terms_primary() -> None:
    stale = state("0", PRIMARY, term=2, versions=[version(seq=5)])
    current = state("1", PRIMARY, term=3)
    verdict = shards.verify_shard(0, [probe(stale), probe(current)])
    assert verdict.primary == "1"
    assert [d.problem for d in verdict.replicas[0].differences] == ["differs in seq"]


# -- shard_report (list) -----------------------------------------------------------------
def info(in_sync: tuple[str, ...] = ("0", "1"), primary: bool = True) -> pb.ReplicaInfo:
    return pb.ReplicaInfo(replica_id="0", primary=primary, term=3, in_sync=True,
                          in_sync_replicas=in_sync, primary_id="0")


def test_a_healthy_shard_has_no_problems() -> None:
    report = shards.shard_report(0, [probe(state()), probe(state("1", FOLLOWER))], info())
    assert report.ok and report.primary == "0" and report.term == 3
    assert [(r.role, r.in_sync, r.listed, r.total_seq, r.lag) for r in report.replicas] == [
        ("primary", True, True, 10, 0), ("follower", True, True, 10, 0)]


def test_a_lagging_follower_out_of_sync_is_a_problem_with_its_lag() -> None:
    follower = state("1", FOLLOWER, in_sync=False, versions=[version(seq=4)])
    report = shards.shard_report(0, [probe(state()), probe(follower)], info(("0",)))
    assert report.replicas[1].lag == 6 and report.replicas[1].listed is False
    assert report.problems == ["replica 1 (10.0.0.1:1) is not in sync (catching up, 6 records behind)"]


def test_lag_counts_a_version_missing_on_the_replica_whole() -> None:
    primary = state(versions=[version(seq=10), version(name="v2", seq=7)])
    assert shards.lag_behind(primary, state("1", FOLLOWER, versions=[version(seq=8)])) == 9
    assert shards.total_seq(primary) == 17


def test_a_replica_the_primary_does_not_count_is_a_problem_even_if_it_says_in_sync() -> None:
    report = shards.shard_report(0, [probe(state()), probe(state("1", FOLLOWER))], info(("0",)))
    assert report.problems == [
        "replica 1 (10.0.0.1:1) says it is in sync but the primary does not count it in sync"]


def test_a_down_replica_no_primary_or_two_primaries_are_problems() -> None:
    down = shards.shard_report(0, [probe(state()), probe(None, "h:2", "UNAVAILABLE: refused")],
                               info())
    assert down.replicas[1].role == "down"
    assert down.problems == ["h:2 is down: UNAVAILABLE: refused"]
    headless = shards.shard_report(0, [probe(state("0", FOLLOWER)), probe(state("1", FOLLOWER))],
                                   None)
    assert headless.primary is None
    assert headless.problems[0].startswith("no replica says it is primary")
    assert all(r.lag is None for r in headless.replicas)
    two = shards.shard_report(0, [probe(state(term=2)), probe(state("1", PRIMARY, term=3))], info())
    assert two.primary == "1" and "several replicas say they are primary" in two.problems[0]


def test_the_primarys_list_unknown_or_naming_a_stranger_is_a_problem() -> None:
    answered = [probe(state()), probe(state("1", FOLLOWER))]
    unknown = shards.shard_report(0, answered, "DEADLINE_EXCEEDED: slow")
    assert unknown.replicas[0].listed is None
    assert unknown.problems == ["the primary did not say which replicas it counts in sync: "
                                "DEADLINE_EXCEEDED: slow"]
    stranger = shards.shard_report(0, answered, info(("0", "1", "7")))
    assert stranger.problems == ["the primary counts replica 7 in sync, which is not among "
                                 "the addresses asked"]
    stepped_down = shards.shard_report(0, answered, info(primary=False))
    assert "stopped being primary" in stepped_down.problems[0]


def test_an_unreplicated_shard_is_its_own_primary() -> None:
    alone = shards.Probe("h:1", unreplicated=True, info=pb.ReplicaInfo(primary=True, in_sync=True))
    report = shards.shard_report(0, [alone], None)
    assert report.ok and report.unreplicated and report.replicas[0].role == "primary"
    assert shards.verify_shard(0, [alone]).ok
    gone = shards.Probe("h:1", unreplicated=True, error="UNAVAILABLE: x")
    assert not shards.shard_report(0, [gone], None).ok


def test_endpoints_parse_like_the_gateways() -> None:
    parsed = shards.parse_endpoints("a:1|a:2, b:1 | b:2")
    assert [(s.shard, s.addresses) for s in parsed] == [(0, ("a:1", "a:2")), (1, ("b:1", "b:2"))]
    for bad in ("a:1||a:2", "a:1,", "a:1|a:1"):
        with pytest.raises(ValueError):
            shards.parse_endpoints(bad)


# -- promote's messages ------------------------------------------------------------------
class FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, reason: str) -> None:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason))
        self._code, self._details = code, details
        self._status = status_pb2.Status(code=code.value[0], message=details, details=[info])

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def test_promote_explains_a_race_and_a_replica_out_of_sync() -> None:
    assert code_pb2.UNAVAILABLE == grpc.StatusCode.UNAVAILABLE.value[0]
    primary = probe(state())
    race = shards.promote_error(
        FailedCall(grpc.StatusCode.UNAVAILABLE, "not the primary", "NOT_PRIMARY"), primary, "1")
    assert "replica 0 (10.0.0.0:1) is no longer primary" in race and "try again" in race
    behind = shards.promote_error(
        FailedCall(grpc.StatusCode.FAILED_PRECONDITION, "replica '1' is not in the in-sync set",
                   "REPLICA_NOT_IN_SYNC"), primary, "1")
    assert "replica 1 is not in the primary's in-sync set" in behind
    other = shards.promote_error(
        FailedCall(grpc.StatusCode.PERMISSION_DENIED, "an admin key", "KEY_ROLE"), primary, "1")
    assert other.endswith("PERMISSION_DENIED KEY_ROLE: an admin key")


# -- the command line, with nothing listening ----------------------------------------------
def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_list_and_verify_show_replicas_that_do_not_answer_as_down() -> None:
    endpoints = f"{closed_address()}|{closed_address()}"
    runner = CliRunner()
    listed = runner.invoke(app, ["shards", "--endpoints", endpoints, "--timeout", "2", "--json"])
    assert listed.exit_code == 1, listed.output
    answer = json.loads(listed.stdout)
    assert answer["ok"] is False
    assert [r["role"] for r in answer["shards"][0]["replicas"]] == ["down", "down"]
    as_table = runner.invoke(app, ["shards", "list", "--endpoints", endpoints, "--timeout", "2"])
    assert as_table.exit_code == 1 and "down" in as_table.stdout
    assert "no replica says it is primary" in as_table.stderr
    verified = runner.invoke(app, ["shards", "verify", "--endpoints", endpoints, "--timeout", "2"])
    assert verified.exit_code == 1 and "FAILED" in verified.stdout
    promoted = runner.invoke(app, ["shards", "promote", "0", "1", "--endpoints", endpoints])
    assert promoted.exit_code == 1 and "no replica 1 answers in shard 0" in promoted.stderr


def test_bad_endpoints_and_an_absent_gateway_are_one_line_errors() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["shards", "--endpoints", "a:1||a:2"])
    assert bad.exit_code == 1 and "--endpoints: an empty replica address" in bad.stderr
    absent = runner.invoke(app, ["shards", "--target", closed_address()])
    assert absent.exit_code == 1 and "asking the gateway at" in absent.stderr
    assert "--endpoints" in absent.stderr
    for result in (bad, absent):
        assert isinstance(result.exception, SystemExit), result.exception
