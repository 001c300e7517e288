"""``contentembed shards``: the index shards' replica groups as an operator sees them.

Every command asks the replicas themselves, directly (``ReplicationService`` and
``IndexService`` on each replica's own address), so it works while the gateway is down
too. Which replicas: the gateway's ``ListShards`` (``--target``; a replicated shard's
endpoint is its replica addresses joined by ``|``), or ``--endpoints`` given directly in
the gateway's ``--index-endpoints`` form: shards separated by ``,``, a shard's replicas by
``|`` (``a:1|a:2,b:1|b:2``).

Channels to the replicas are configured like the SDK's (``channel_from_env``): TLS with
CONTENTEMBED_TLS_CA_FILE (and CONTENTEMBED_TLS_CERT_FILE / _KEY_FILE for mutual TLS),
the ``x-api-key`` header from CONTENTEMBED_API_KEY (an admin key: the replication calls
need one on a shard that checks keys). Without them: plaintext, no key.

- ``shards`` / ``shards list``: each replica's role, term, whether it is in sync (as it
  says, and as the primary counts it), its total seq (the sum of its versions' last seqs)
  and its lag behind the primary (records). Exit 1 unless every shard has one primary
  and every replica is in sync.
- ``shards verify``: every replica's versions (item count, seq, content sha256) and
  aliases against its primary's. Exit 1 on a difference or a replica that did not answer.
- ``shards promote SHARD REPLICA_ID``: the primary hands the shard to that replica.

The pure parts (``shard_report``, ``compare_states``) take replica states as messages,
so that tests can hand-make them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import grpc
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contentembed.client import DEFAULT_TARGET, ApiError, client_from_env
from contentembed.client.client import channel_from_env
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.index.v1 import replication_service_pb2 as rpb
from contentembed.index.v1 import replication_service_pb2_grpc as rpb_grpc
from contentembed.rpc_status import error_reason

app = typer.Typer(
    help="The index shards' replica groups: roles, sync and lag (the default), verify "
    "that replicas hold the same data, hand a shard's primary over.\n\n"
    "Replicas are asked directly: from the gateway's shard list (--target) or from "
    "--endpoints. Channels use CONTENTEMBED_TLS_CA_FILE (TLS; _CERT_FILE/_KEY_FILE for "
    "mutual TLS) and CONTENTEMBED_API_KEY (an admin key) when set. Options given before "
    "a subcommand apply to it too.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

REPLICA_SEPARATOR = "|"
SHARD_SEPARATOR = ","
PRIMARY, FOLLOWER, DOWN, UNKNOWN = "primary", "follower", "down", "unknown"
ROLE_NAMES = {rpb.REPLICA_ROLE_PRIMARY: PRIMARY, rpb.REPLICA_ROLE_FOLLOWER: FOLLOWER}
# `list`: how long each replica is given to answer.
LIST_TIMEOUT_S = 3.0
# `verify`: reading every item of every version for its digest takes longer.
VERIFY_TIMEOUT_S = 60.0
# `verify`: differences are read again after this long, and only those seen twice are
# reported (a write in flight reaches the primary a moment before its followers).
VERIFY_RECHECK_S = 1.0
# `promote`: how long TransferPrimary may take, and how often the successor is asked.
TRANSFER_TIMEOUT_S = 10.0
PROMOTE_POLL_S = 0.1
PROMOTE_WAIT_S = 15.0
# The most replicas asked at once.
PROBE_WORKERS = 32

TargetOption = Annotated[
    str | None,
    typer.Option("--target", "-t", envvar="CONTENTEMBED_TARGET",
                 help=f"Gateway host:port whose shard list to use (default {DEFAULT_TARGET})."),
]
EndpointsOption = Annotated[
    str | None,
    typer.Option("--endpoints", "-e", help="The replicas without asking a gateway: shards "
                 "separated by ',', a shard's replicas by '|' (a:1|a:2,b:1|b:2)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


# -- where the replicas are --------------------------------------------------------------
@dataclass(frozen=True)
class ShardAddresses:
    shard: int
    addresses: tuple[str, ...]


def split_replicas(entry: str) -> tuple[str, ...]:
    """The replica addresses of one shard entry (``"a:1|a:2"``).

    Raises:
        ValueError: an empty address, or one listed twice.
    """
    parts = tuple(part.strip() for part in entry.split(REPLICA_SEPARATOR))
    if not all(parts):
        raise ValueError(f"an empty replica address in the shard entry {entry!r}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"a replica listed twice in the shard entry {entry!r}")
    return parts


def parse_endpoints(text: str) -> list[ShardAddresses]:
    """``--endpoints``: shard i is the i-th ``,``-separated entry.

    Raises:
        ValueError: an empty shard or replica address.
    """
    entries = [entry.strip() for entry in text.split(SHARD_SEPARATOR)]
    if not all(entries):
        raise ValueError(f"an empty shard entry in {text!r}")
    return [ShardAddresses(n, split_replicas(entry)) for n, entry in enumerate(entries)]


def resolve_shards(target: str | None, endpoints: str | None) -> list[ShardAddresses]:
    if endpoints is not None:
        try:
            return parse_endpoints(endpoints)
        except ValueError as error:
            raise fail(f"--endpoints: {error}") from None
    target = target or DEFAULT_TARGET
    try:
        with client_from_env(target, timeout=LIST_TIMEOUT_S) as client:
            listed = client.list_shards()
    except ApiError as error:
        raise fail(f"asking the gateway at {target} for its shards: {error} "
                   "(give the replicas with --endpoints to do without it)") from None
    try:
        return [ShardAddresses(s.shard_index, split_replicas(s.address)) for s in listed]
    except ValueError as error:
        raise fail(f"the gateway at {target} lists a shard as {error}") from None


# -- asking the replicas -----------------------------------------------------------------
@dataclass
class Probe:
    """One replica's answer to GetReplicaState, or why none came."""

    address: str
    state: rpb.ReplicaState | None = None
    error: str = ""
    # The replica runs without replication (no ReplicationService: a shard of one); then
    # ``info`` is its IndexService's word on itself.
    unreplicated: bool = False
    info: pb.ReplicaInfo | None = None

    @property
    def answered(self) -> bool:
        return self.state is not None or self.info is not None


def code_of(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def details_of(error: grpc.RpcError) -> str:
    details = getattr(error, "details", None)
    return (details() if callable(details) else str(error)) or ""


def describe_rpc_error(error: grpc.RpcError) -> str:
    """``CODE REASON: the first line of the details``."""
    code, details, reason = code_of(error), details_of(error), error_reason(error)
    name = code.name if code is not None else "ERROR"
    return f"{name}{f' {reason}' if reason else ''}: {details.splitlines()[0] if details else name}"


class Replicas:
    """Channels to replicas, opened once per address, closed on exit."""

    def __init__(self) -> None:
        self._channels: dict[str, tuple[grpc.Channel, tuple[tuple[str, str], ...]]] = {}

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, *exc: object) -> None:
        for channel, _ in self._channels.values():
            channel.close()
        self._channels.clear()

    def _channel(self, address: str) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
        if address not in self._channels:
            self._channels[address] = channel_from_env(address)
        return self._channels[address]

    def replication(self, address: str) -> tuple[rpb_grpc.ReplicationServiceStub, Any]:
        channel, metadata = self._channel(address)
        return rpb_grpc.ReplicationServiceStub(channel), metadata

    def index(self, address: str) -> tuple[pb_grpc.IndexServiceStub, Any]:
        channel, metadata = self._channel(address)
        return pb_grpc.IndexServiceStub(channel), metadata

    def shard_info(self, address: str, timeout: float) -> pb.ReplicaInfo:
        """The replica's ``ShardInfo.replica`` (a primary's lists the ids it counts in
        sync): from the cheapest read there is.

        Raises:
            grpc.RpcError: it did not answer.
        """
        stub, metadata = self.index(address)
        answer = stub.ListCollections(pb.ListCollectionsRequest(page_size=1), timeout=timeout,
                                      metadata=metadata)
        return answer.shard.replica

    def probe(self, address: str, timeout: float, digests: bool = False) -> Probe:
        stub, metadata = self.replication(address)
        try:
            answer = stub.GetReplicaState(rpb.GetReplicaStateRequest(term=0, digests=digests),
                                          timeout=timeout, metadata=metadata)
            return Probe(address, state=answer.state)
        except grpc.RpcError as error:
            if code_of(error) != grpc.StatusCode.UNIMPLEMENTED:
                return Probe(address, error=describe_rpc_error(error))
        try:  # a shard without replication: its IndexService says whether it is up
            return Probe(address, unreplicated=True, info=self.shard_info(address, timeout))
        except grpc.RpcError as error:
            return Probe(address, unreplicated=True, error=describe_rpc_error(error))

    def probe_all(self, addresses: Sequence[str], timeout: float,
                  digests: bool = False) -> list[Probe]:
        """Every address at once, in order; none takes longer than ``timeout``."""
        if not addresses:
            return []
        with ThreadPoolExecutor(min(PROBE_WORKERS, len(addresses))) as pool:
            return list(pool.map(lambda a: self.probe(a, timeout, digests), addresses))


def probe_shards(replicas: Replicas, shards: Sequence[ShardAddresses], timeout: float,
                 digests: bool = False) -> list[list[Probe]]:
    flat = [address for shard in shards for address in shard.addresses]
    probes = iter(replicas.probe_all(flat, timeout, digests))
    return [[next(probes) for _ in shard.addresses] for shard in shards]


def role_of(probe: Probe) -> str:
    if not probe.answered:
        return DOWN
    if probe.unreplicated:
        return PRIMARY
    assert probe.state is not None
    return ROLE_NAMES.get(probe.state.role, UNKNOWN)


def primary_of(probes: Sequence[Probe]) -> Probe | None:
    """The replica that says it is primary; of several (one stale), the highest term's."""
    primaries = [p for p in probes if role_of(p) == PRIMARY]
    if not primaries:
        return None
    return max(primaries, key=lambda p: p.state.term if p.state is not None else 0)


def total_seq(state: rpb.ReplicaState) -> int:
    return sum(v.seq for v in state.versions)


def lag_behind(primary: rpb.ReplicaState, replica: rpb.ReplicaState) -> int:
    """Records the replica lacks: per version of the primary, how far its seq is ahead (a
    version missing on the replica counts whole). The primary's total seq minus the
    replica's whenever both hold the same versions."""
    held = {(v.collection, v.version): v.seq for v in replica.versions}
    return sum(max(0, v.seq - held.get((v.collection, v.version), 0)) for v in primary.versions)


# -- `shards` / `shards list` ------------------------------------------------------------
@dataclass
class ReplicaRow:
    address: str
    replica_id: str
    role: str  # primary | follower | down | unknown
    term: int | None = None
    in_sync: bool | None = None  # as the replica says
    listed: bool | None = None  # in the primary's in-sync set (None: no list to go by)
    total_seq: int | None = None
    lag: int | None = None
    error: str = ""


@dataclass
class ShardReport:
    shard: int
    primary: str | None  # the primary's replica id
    term: int | None
    replicas: list[ReplicaRow]
    problems: list[str] = field(default_factory=list)
    unreplicated: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def name_of(row: ReplicaRow) -> str:
    return f"replica {row.replica_id} ({row.address})" if row.replica_id else row.address


def shard_report(shard: int, probes: Sequence[Probe],
                 primary_info: pb.ReplicaInfo | str | None) -> ShardReport:
    """What ``list`` shows of one shard: its replicas' answers, and the primary's
    ``ShardInfo.replica`` (or why it did not give it; None when there is no primary)."""
    primary = primary_of(probes)
    if probes and all(p.unreplicated for p in probes):
        rows = [ReplicaRow(p.address, "", role_of(p), in_sync=p.answered or None,
                           listed=p.answered or None, error=p.error) for p in probes]
        problems = [f"{p.address} is down: {p.error}" for p in probes if not p.answered]
        return ShardReport(shard, "" if primary else None, None, rows, problems, unreplicated=True)
    listed: set[str] | None = None
    problems: list[str] = []
    if isinstance(primary_info, pb.ReplicaInfo):
        listed = set(primary_info.in_sync_replicas)
        if not primary_info.primary:
            problems.append(f"replica {primary_info.replica_id} stopped being primary while "
                            "asked (a hand-over or failover under way?)")
    rows: list[ReplicaRow] = []
    for probe in probes:
        role = role_of(probe)
        if probe.state is None:
            rows.append(ReplicaRow(probe.address, "", role, error=probe.error))
            continue
        state = probe.state
        rows.append(ReplicaRow(
            probe.address, state.replica_id, role, state.term, state.in_sync,
            None if listed is None else state.replica_id in listed, total_seq(state),
            lag_behind(primary.state, state) if primary is not None and primary.state else None,
        ))
    primaries = [row for row in rows if row.role == PRIMARY]
    if primary is None:
        problems.append("no replica says it is primary: writes fail until one takes over")
    elif len(primaries) > 1:
        problems.append("several replicas say they are primary: "
                        + ", ".join(f"{name_of(r)} in term {r.term}" for r in primaries)
                        + " (the lower term's is stale)")
    elif isinstance(primary_info, str):
        problems.append(f"the primary did not say which replicas it counts in sync: {primary_info}")
    ids = [row.replica_id for row in rows if row.replica_id]
    for twice in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"replica id {twice} answers at several addresses")
    for row in rows:
        if row.role == DOWN:
            problems.append(f"{name_of(row)} is down: {row.error}")
        elif row.role == UNKNOWN:
            problems.append(f"{name_of(row)} reports no role")
        elif row.in_sync is False:
            behind = f", {row.lag} records behind" if row.lag else ""
            problems.append(f"{name_of(row)} is not in sync (catching up{behind})")
        elif row.listed is False:
            problems.append(f"{name_of(row)} says it is in sync but the primary does not "
                            "count it in sync")
    # An id the primary counts that no address answered as (unless one is down: its id
    # is not known): the addresses asked are not the group's.
    if listed is not None and not any(row.role == DOWN for row in rows):
        known = {row.replica_id for row in rows}
        for stranger in sorted(listed - known):
            problems.append(f"the primary counts replica {stranger} in sync, which is not "
                            "among the addresses asked")
    return ShardReport(
        shard, primary.state.replica_id if primary is not None and primary.state else None,
        primary.state.term if primary is not None and primary.state else None, rows, problems,
    )


def gather_reports(replicas: Replicas, shards: Sequence[ShardAddresses],
                   timeout: float) -> list[ShardReport]:
    probes = probe_shards(replicas, shards, timeout)
    primaries = [primary_of(shard_probes) for shard_probes in probes]

    def info(primary: Probe | None) -> pb.ReplicaInfo | str | None:
        if primary is None or primary.unreplicated:
            return None
        try:
            return replicas.shard_info(primary.address, timeout)
        except grpc.RpcError as error:
            return describe_rpc_error(error)

    with ThreadPoolExecutor(max(1, min(PROBE_WORKERS, len(shards)))) as pool:
        infos = list(pool.map(info, primaries))
    return [shard_report(shard.shard, shard_probes, primary_info)
            for shard, shard_probes, primary_info in zip(shards, probes, infos)]


def yes_no(value: bool | None) -> str:
    if value is None:
        return "[dim]-[/]"
    return "[green]yes[/]" if value else "[bold red]no[/]"


ROLE_STYLE = {PRIMARY: "[bold green]primary[/]", FOLLOWER: "follower", DOWN: "[bold red]down[/]",
              UNKNOWN: "[yellow]unknown[/]"}


def print_reports(reports: Sequence[ShardReport]) -> None:
    # Narrow enough for 80 columns (a pipe or a log) with addresses of 21 characters.
    table = Table(title="index shards", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, collapse_padding=True, pad_edge=False)
    for column, justify in (("shard", "right"), ("replica", "left"), ("address", "left"),
                            ("role", "left"), ("term", "right"), ("in sync", "left"),
                            ("primary\ncounts it", "left"), ("total\nseq", "right"),
                            ("lag", "right")):
        address = column == "address"  # folded rather than cut short when too long
        table.add_column(column, justify=justify, no_wrap=not address,  # type: ignore[arg-type]
                         overflow="fold" if address else "ellipsis")
    for report in reports:
        for n, row in enumerate(report.replicas):
            lag = "" if row.lag is None else (f"[yellow]{row.lag}[/]" if row.lag else "0")
            table.add_row(
                str(report.shard) if n == 0 else "",
                escape(row.replica_id) if row.replica_id else "[dim]-[/]",
                escape(row.address),
                ROLE_STYLE.get(row.role, row.role),
                "" if row.term is None else str(row.term),
                yes_no(row.in_sync),
                yes_no(row.listed),
                "" if row.total_seq is None else str(row.total_seq),
                lag,
                end_section=n == len(report.replicas) - 1,
            )
    console.print(table)
    for report in reports:
        if report.unreplicated:
            console.print(f"shard {report.shard}: not replicated (one replica, no "
                          "ReplicationService)", style="dim")


def reports_json(reports: Sequence[ShardReport]) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in reports),
        "shards": [
            {"shard": r.shard, "ok": r.ok, "primary": r.primary, "term": r.term,
             "replicated": not r.unreplicated, "problems": r.problems,
             "replicas": [asdict(row) for row in r.replicas]}
            for r in reports
        ],
    }


def print_problems(title: str, problems: Sequence[tuple[int, str]]) -> None:
    err_console.print(f"[bold red]{title}[/]", soft_wrap=True)
    for shard, problem in problems:
        err_console.print(f"  shard {shard}: {escape(problem)}", soft_wrap=True)


@dataclass
class GroupOptions:
    """What ``contentembed shards --target/--endpoints/--json`` gave, for its subcommands."""

    target: str | None = None
    endpoints: str | None = None
    as_json: bool = False
    timeout: float | None = None


def group_options(ctx: typer.Context) -> GroupOptions:
    parent = ctx.parent
    obj = parent.obj if parent is not None else None
    return obj if isinstance(obj, GroupOptions) else GroupOptions()


def run_list(target: str | None, endpoints: str | None, as_json: bool, timeout: float) -> None:
    shards = resolve_shards(target, endpoints)
    with Replicas() as replicas:
        reports = gather_reports(replicas, shards, timeout)
    if as_json:
        print(json.dumps(reports_json(reports), indent=2))
    else:
        print_reports(reports)
    problems = [(r.shard, problem) for r in reports for problem in r.problems]
    if problems:
        print_problems("not healthy:", problems)
        raise typer.Exit(1)
    if not as_json:
        console.print(f"[green]all {len(reports)} shards have a primary and every replica "
                      "in sync[/]")


ListTimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", min=0.1, help=f"Seconds each replica is given to answer "
                 f"(default {LIST_TIMEOUT_S:g})."),
]


@app.callback()
def shards_main(
    ctx: typer.Context,
    target: TargetOption = None,
    endpoints: EndpointsOption = None,
    as_json: JsonOption = False,
    timeout: ListTimeoutOption = None,
) -> None:
    """Without a subcommand: `shards list`. Options given here apply to the subcommand
    too (--timeout to the listing only)."""
    ctx.obj = GroupOptions(target, endpoints, as_json, timeout)
    if ctx.invoked_subcommand is None:
        run_list(target, endpoints, as_json, timeout or LIST_TIMEOUT_S)


@app.command("list")
def list_command(
    ctx: typer.Context,
    target: TargetOption = None,
    endpoints: EndpointsOption = None,
    as_json: JsonOption = False,
    timeout: ListTimeoutOption = None,
) -> None:
    """Every replica of every shard: role, term, in sync, total seq, lag (the default).

    In sync: as the replica says, and whether the primary counts it in its in-sync set.
    Total seq: the sum of its versions' last seqs; lag: records behind the primary. A
    replica that does not answer within --timeout is shown down. Exit 0 when every shard
    has one primary and all its replicas in sync, 1 otherwise (the reasons last)."""
    group = group_options(ctx)
    run_list(target or group.target, endpoints or group.endpoints, as_json or group.as_json,
             timeout or group.timeout or LIST_TIMEOUT_S)


# -- `shards verify` ---------------------------------------------------------------------
@dataclass
class Difference:
    """One version (or alias) in which a replica differs from its primary."""

    collection: str
    version: str  # "" for an alias
    problem: str
    primary: dict[str, Any] | None
    replica: dict[str, Any] | None

    def __str__(self) -> str:
        what = f"{self.collection}/{self.version}" if self.version else f"alias {self.collection}"
        return f"{what}: {self.problem}"


def version_figures(version: rpb.ReplicaVersion) -> dict[str, Any]:
    figures: dict[str, Any] = {"seq": version.seq}
    if version.pending:
        figures["pending"] = True
    else:
        figures["items"] = version.item_count
        figures["content_sha256"] = version.content_sha256
    return figures


def alias_figures(alias: rpb.ReplicaAlias) -> dict[str, Any]:
    return {"active": alias.active, "previous": alias.previous}


def figures_text(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "none"
    parts = []
    for key, value in figures.items():
        if key == "content_sha256":
            parts.append(f"sha256 {value[:12] or '-'}")
        elif key == "pending":
            parts.append("pending")
        elif key == "previous":
            parts.append(f"previous {value or '-'}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def compare_states(primary: rpb.ReplicaState, replica: rpb.ReplicaState) -> list[Difference]:
    """How ``replica`` differs from ``primary``: every version's item count, seq and
    content sha256 (a pending version: seq only, it has no items yet), versions missing on
    either side, and which version each collection's alias points at.

    Both states should be read with ``digests=True``; without, only seqs are compared."""
    differences: list[Difference] = []
    ours = {(v.collection, v.version): v for v in primary.versions}
    theirs = {(v.collection, v.version): v for v in replica.versions}
    for key in sorted(ours.keys() | theirs.keys()):
        mine, other = ours.get(key), theirs.get(key)
        if other is None:
            assert mine is not None
            differences.append(Difference(*key, "missing on the replica",
                                          version_figures(mine), None))
        elif mine is None:
            differences.append(Difference(*key, "on the replica only (not on the primary)",
                                          None, version_figures(other)))
        else:
            a, b = version_figures(mine), version_figures(other)
            if a != b:
                fields = [name for name in ("pending", "items", "seq", "content_sha256")
                          if a.get(name) != b.get(name)]
                differences.append(Difference(*key, "differs in " + ", ".join(fields), a, b))
    aliases = {a.collection: a for a in primary.aliases}
    others = {a.collection: a for a in replica.aliases}
    for name in sorted(aliases.keys() | others.keys()):
        mine_alias, other_alias = aliases.get(name), others.get(name)
        a_fig = alias_figures(mine_alias) if mine_alias is not None else None
        b_fig = alias_figures(other_alias) if other_alias is not None else None
        if a_fig != b_fig:
            differences.append(Difference(name, "", "the alias differs", a_fig, b_fig))
    return differences


@dataclass
class ReplicaVerdict:
    address: str
    replica_id: str
    role: str
    differences: list[Difference] = field(default_factory=list)
    error: str = ""


@dataclass
class ShardVerdict:
    shard: int
    primary: str | None
    term: int | None
    versions: int
    replicas: list[ReplicaVerdict]
    problems: list[str] = field(default_factory=list)
    unreplicated: bool = False
    items: int = 0  # in the primary's versions, together

    @property
    def ok(self) -> bool:
        return not self.problems and not any(r.differences for r in self.replicas)


def verify_shard(shard: int, probes: Sequence[Probe]) -> ShardVerdict:
    """Every replica of one shard against its primary (states read with digests)."""
    primary = primary_of(probes)
    if probes and all(p.unreplicated for p in probes):
        verdicts = [ReplicaVerdict(p.address, "", role_of(p), error=p.error) for p in probes]
        return ShardVerdict(shard, "", None, 0, verdicts,
                            [f"{p.address} is down: {p.error}" for p in probes if not p.answered],
                            unreplicated=True)
    verdicts, problems = [], []
    for probe in probes:
        state = probe.state
        verdict = ReplicaVerdict(probe.address, state.replica_id if state else "",
                                 role_of(probe), error=probe.error)
        if state is None:
            problems.append(f"{probe.address} is down: {probe.error}")
        elif primary is not None and primary.state is not None and probe is not primary:
            verdict.differences = compare_states(primary.state, state)
        verdicts.append(verdict)
    if primary is None or primary.state is None:
        problems.append("no replica says it is primary: nothing to compare against")
        return ShardVerdict(shard, None, None, 0, verdicts, problems)
    return ShardVerdict(shard, primary.state.replica_id, primary.state.term,
                        len(primary.state.versions), verdicts, problems,
                        items=sum(v.item_count for v in primary.state.versions))


def verdict_json(verdicts: Sequence[ShardVerdict]) -> dict[str, Any]:
    return {
        "ok": all(v.ok for v in verdicts),
        "shards": [
            {"shard": v.shard, "ok": v.ok, "primary": v.primary, "term": v.term,
             "versions": v.versions, "items": v.items, "replicated": not v.unreplicated,
             "problems": v.problems,
             "replicas": [
                 {"replica_id": r.replica_id, "address": r.address, "role": r.role,
                  "error": r.error, "differences": [asdict(d) for d in r.differences]}
                 for r in v.replicas
             ]}
            for v in verdicts
        ],
    }


def print_verdicts(verdicts: Sequence[ShardVerdict]) -> None:
    for verdict in verdicts:
        if verdict.unreplicated:
            head = "not replicated, nothing to compare"
            console.print(f"shard {verdict.shard}: "
                          + ("[green]OK[/] " if verdict.ok else "[bold red]FAILED[/] ")
                          + f"({head})")
        elif verdict.ok:
            versions = f"{verdict.versions} version{'' if verdict.versions == 1 else 's'}"
            console.print(
                f"shard {verdict.shard}: [green]OK[/]: {len(verdict.replicas)} replicas hold the "
                f"same {versions} ({verdict.items} items) as primary "
                f"{escape(verdict.primary or '')} (term {verdict.term})", soft_wrap=True,
            )
        else:
            count = sum(len(r.differences) for r in verdict.replicas)
            console.print(f"shard {verdict.shard}: [bold red]FAILED[/]"
                          + (f": {count} differences" if count else ""))
        for problem in verdict.problems:
            console.print(f"  {escape(problem)}", soft_wrap=True)
        for replica in verdict.replicas:
            for difference in replica.differences:
                console.print(
                    f"  replica {escape(replica.replica_id)} ({escape(replica.address)}): "
                    f"{escape(str(difference))}\n"
                    f"      primary: {escape(figures_text(difference.primary))}\n"
                    f"      replica: {escape(figures_text(difference.replica))}",
                    soft_wrap=True,
                )


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    target: TargetOption = None,
    endpoints: EndpointsOption = None,
    as_json: JsonOption = False,
    timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds each replica is given to digest every item it holds.")
    ] = VERIFY_TIMEOUT_S,
) -> None:
    """Whether every replica holds exactly what its shard's primary holds.

    Compares each version's item count, last seq and content sha256 (over every item's
    id, vector, text and metadata), versions missing on either side, and the aliases.

    Reads every item on every replica. A difference is read again a second later and
    reported only if it is still there (a write in flight reaches the followers a moment
    after the primary). Exit 1 on any difference, or a replica or primary missing."""
    group = group_options(ctx)
    as_json = as_json or group.as_json
    shards = resolve_shards(target or group.target, endpoints or group.endpoints)
    with Replicas() as replicas:
        verdicts = [verify_shard(s.shard, p)
                    for s, p in zip(shards, probe_shards(replicas, shards, timeout, digests=True))]
        again = [n for n, v in enumerate(verdicts)
                 if any(r.differences for r in v.replicas)]
        if again:
            time.sleep(VERIFY_RECHECK_S)
            recheck = [shards[n] for n in again]
            for n, probes in zip(again, probe_shards(replicas, recheck, timeout, digests=True)):
                verdicts[n] = verify_shard(shards[n].shard, probes)
    if as_json:
        print(json.dumps(verdict_json(verdicts), indent=2))
    else:
        print_verdicts(verdicts)
    failed = [v.shard for v in verdicts if not v.ok]
    if failed:
        err_console.print(f"[bold red]verify failed[/] on shard{'s' if len(failed) > 1 else ''} "
                          + ", ".join(map(str, failed)), soft_wrap=True)
        raise typer.Exit(1)


# -- `shards promote` --------------------------------------------------------------------
def find_shard(shards: Sequence[ShardAddresses], index: int) -> ShardAddresses:
    for shard in shards:
        if shard.shard == index:
            return shard
    raise fail(f"there is no shard {index} (shards: {', '.join(str(s.shard) for s in shards)})")


def promote_error(error: grpc.RpcError, primary: Probe, successor: str) -> str:
    assert primary.state is not None
    reason = error_reason(error)
    details = details_of(error)
    who = f"replica {primary.state.replica_id} ({primary.address})"
    if reason == "NOT_PRIMARY":
        return (f"{who} is no longer primary (a failover or another hand-over got there "
                "first); nothing was handed over by this call. See `contentembed shards` "
                "and try again")
    if reason == "REPLICA_NOT_IN_SYNC":
        return (f"replica {successor} is not in the primary's in-sync set, so it may lack "
                "acknowledged writes; nothing was handed over. Wait until `contentembed "
                f"shards` shows it in sync, or name another replica ({details})")
    return f"TransferPrimary on {who}: {describe_rpc_error(error)}"


@app.command("promote")
def promote_command(
    ctx: typer.Context,
    shard: Annotated[int, typer.Argument(help="The shard's index.")],
    replica_id: Annotated[str, typer.Argument(help="The replica id to make primary "
                                              "(the `replica` column of `contentembed shards`).")],
    target: TargetOption = None,
    endpoints: EndpointsOption = None,
    as_json: JsonOption = False,
    timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for the replica to report itself primary.")
    ] = PROMOTE_WAIT_S,
) -> None:
    """Hand SHARD's primary over to the replica REPLICA_ID.

    The primary stops taking writes and the named replica, which must be in its in-sync
    set, leads under the next term (the gateway retries writes on it meanwhile). Waits
    until it reports itself primary; exit 1 if it is not in sync, the primary changed
    meanwhile, or it does not lead within --timeout."""
    group = group_options(ctx)
    as_json = as_json or group.as_json
    shards = resolve_shards(target or group.target, endpoints or group.endpoints)
    addresses = find_shard(shards, shard)
    with Replicas() as replicas:
        probes = replicas.probe_all(addresses.addresses, LIST_TIMEOUT_S)
        if any(p.unreplicated for p in probes):
            raise fail(f"shard {shard} is not replicated: there is no other replica to promote")
        successor = next((p for p in probes if p.state and p.state.replica_id == replica_id), None)
        if successor is None:
            ids = sorted(p.state.replica_id for p in probes if p.state is not None)
            down = [p.address for p in probes if p.state is None]
            raise fail(f"no replica {replica_id} answers in shard {shard} (replicas that "
                       f"answered: {', '.join(ids) or 'none'}"
                       + (f"; down: {', '.join(down)}" if down else "") + ")")
        primary = primary_of(probes)
        if primary is None or primary.state is None:
            raise fail(f"shard {shard} has no primary now, so there is nothing to hand over "
                       "(one may be taking over: see `contentembed shards` in a few seconds)")
        old_id, old_term = primary.state.replica_id, primary.state.term
        if primary is successor:
            result = {"shard": shard, "primary": replica_id, "address": successor.address,
                      "term": old_term, "previous_primary": old_id, "previous_term": old_term,
                      "changed": False}
            if as_json:
                print(json.dumps(result, indent=2))
            else:
                console.print(f"shard {shard}: replica {escape(replica_id)} is primary already "
                              f"(term {old_term})")
            return
        stub, metadata = replicas.replication(primary.address)
        try:
            answer = stub.TransferPrimary(rpb.TransferPrimaryRequest(successor_id=replica_id),
                                          timeout=TRANSFER_TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as error:
            raise fail(promote_error(error, primary, replica_id)) from None
        if not as_json:
            console.print(f"shard {shard}: replica {escape(old_id)} handed over to replica "
                          f"{escape(replica_id)} (term {answer.term}); waiting for it to lead ...",
                          soft_wrap=True)
        started = time.monotonic()
        deadline = started + timeout
        last: Probe = successor
        while True:
            last = replicas.probe(successor.address, min(LIST_TIMEOUT_S, timeout))
            if (last.state is not None and last.state.role == rpb.REPLICA_ROLE_PRIMARY
                    and last.state.term >= answer.term):
                break
            if time.monotonic() >= deadline:
                now = replicas.probe_all(addresses.addresses, LIST_TIMEOUT_S)
                leader = primary_of(now)
                who = (f"replica {leader.state.replica_id} is primary (term "
                       f"{leader.state.term})" if leader is not None and leader.state
                       else "no replica is primary")
                raise fail(f"replica {replica_id} did not report itself primary within "
                           f"{timeout:g} s ({last.error or 'it is ' + role_of(last)}); now "
                           f"{who}. See `contentembed shards`")
            time.sleep(PROMOTE_POLL_S)
    assert last.state is not None
    seconds = time.monotonic() - started
    if as_json:
        print(json.dumps({"shard": shard, "primary": replica_id, "address": successor.address,
                          "term": last.state.term, "previous_primary": old_id,
                          "previous_term": old_term, "changed": True,
                          "seconds": round(seconds, 3)}, indent=2))
    else:
        console.print(f"shard {shard}: replica {escape(replica_id)} ({escape(successor.address)}) "
                      f"is primary in term {last.state.term} (was replica {escape(old_id)}, term "
                      f"{old_term}) after {seconds:.1f} s", soft_wrap=True)
