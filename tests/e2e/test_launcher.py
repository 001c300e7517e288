"""`contentembed up` as an operator runs it: a real launcher process, real services, real
signals. Child pids come from the port files; "nothing left" also means no process on the
machine still names the test's run directory on its command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from contentembed.cli.stack import (
    LocalStack,
    ServiceProcess,
    StackError,
    StackEvent,
    port_is_free,
)
from contentembed.client import ApiError, Client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PDEATHSIG"),
]
CLI = [sys.executable, "-m", "contentembed.cli.main"]
HOST = "127.0.0.1"
# gateway, text-encoder, image-encoder, index-0, then their four /metrics ports.
PORTS_PER_STACK = 8
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
ORPHAN_TIMEOUT_S = 20.0

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Polls ``check`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)


def free_port_block(size: int) -> int:
    """First of ``size`` consecutive loopback ports that are free now (`up` places the
    image-encoder at encoder+1 and the /metrics ports one after another)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            base = probe.getsockname()[1]
        if base + size < 65536 and all(port_is_free(port) for port in range(base, base + size)):
            return base
    raise RuntimeError(f"no block of {size} free ports found")


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan reaped late by init is gone
    for every practical purpose)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_naming(path: Path) -> list[int]:
    """Running processes whose command line contains ``path`` (every service the launcher
    starts gets its port file under the run directory)."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and is_running(int(entry.name)):
            found.append(int(entry.name))
    return found


@dataclass
class Launcher:
    process: subprocess.Popen[bytes]
    run_dir: Path
    output_path: Path
    base_port: int

    @property
    def ports(self) -> list[int]:
        return list(range(self.base_port, self.base_port + PORTS_PER_STACK))

    @property
    def gateway_address(self) -> str:
        return f"{HOST}:{self.base_port}"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def port_files(self) -> dict[str, dict[str, int]]:
        found = {}
        for path in (self.run_dir / "ports").glob("*.json"):
            try:
                found[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced under us: read it on the next poll
        return found

    def pids(self) -> dict[str, int]:
        return {name: ports["pid"] for name, ports in self.port_files().items()}

    def pids_once_all_bound(self) -> dict[str, int] | None:
        pids = self.pids()
        return pids if len(pids) == 4 else None

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT_S) -> None:
        def printed() -> bool:
            if self.process.poll() is not None and text not in self.output():
                raise AssertionError(
                    f"up exited with {self.process.returncode} before printing {text!r}:\n"
                    f"{self.output()}"
                )
            return text in self.output()

        eventually(printed, timeout, f"up printed {text!r}; output so far:\n{self.output()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"up still running {timeout:g} s later:\n{self.output()}") from None

    def kill_everything(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        kill_processes_naming(self.run_dir)


def hangup_default() -> None:
    # Under nohup the test runner ignores SIGHUP, the launcher would inherit that and
    # rightly keep ignoring it; these tests want the interactive case.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def up_command(run_dir: Path, base: int) -> list[str]:
    return [
        *CLI, "up", "--shards", "1", "--run-dir", str(run_dir),
        "--gateway-port", str(base), "--encoder-port", str(base + 1),
        "--index-base-port", str(base + 3), "--metrics-base-port", str(base + 4),
    ]


def kill_processes_naming(path: Path) -> None:
    for pid in processes_naming(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    """Starts `contentembed up --shards 1` on free ports; kills whatever is left at the end."""
    started: list[Launcher] = []

    def start(*extra: str) -> Launcher:
        base = free_port_block(PORTS_PER_STACK)
        run_dir = tmp_path / f"run-{len(started)}"
        output_path = tmp_path / f"up-{len(started)}.log"
        with output_path.open("wb") as output:
            process = subprocess.Popen(
                [*up_command(run_dir, base), *extra], stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=hangup_default,
            )
        launcher = Launcher(process, run_dir, output_path, base)
        started.append(launcher)
        return launcher

    try:
        yield start
    finally:
        for launcher in started:
            launcher.kill_everything()


def assert_all_gone(launcher: Launcher, pids: dict[str, int], timeout: float) -> None:
    eventually(
        lambda: not any(is_running(pid) for pid in pids.values()),
        timeout,
        f"every service exits; still running: "
        f"{ {name: pid for name, pid in pids.items() if is_running(pid)} }",
    )
    assert processes_naming(launcher.run_dir) == []


def assert_ports_free(launcher: Launcher) -> None:
    taken = [port for port in launcher.ports if not port_is_free(port)]
    assert taken == [], f"still bound after the stop: {taken}"


def last_drain_time(launcher: Launcher, service: str) -> str:
    """When ``service`` last logged that a stop signal made it drain (ISO timestamp)."""
    lines = (launcher.run_dir / "logs" / f"{service}.log").read_text().splitlines()
    drains = [json.loads(line)["ts"] for line in lines if '"signal received, draining"' in line]
    assert drains, f"{service} never drained"
    return drains[-1]


def search_ids(client: Client, text: str) -> list[str]:
    return [hit.id for hit in client.search("docs", text=text, top_k=1).hits]


def search_when_available(client: Client, text: str, timeout: float) -> list[str] | None:
    """The gateway answers UNAVAILABLE while a shard restarts and until its channel
    reconnects; anything else is a real failure."""
    def attempt() -> list[str] | None:
        try:
            return search_ids(client, text)
        except ApiError as error:
            if error.code != "UNAVAILABLE":
                raise
            return None

    return eventually(attempt, timeout, "search works again after the shard restarted")


def test_a_killed_shard_is_restarted_and_sigterm_stops_everything_in_order(launch) -> None:
    launcher = launch()
    launcher.wait_for_output("contentembed is up")
    first = launcher.pids()
    assert set(first) == {"gateway", "text-encoder", "image-encoder", "index-0"}
    shard_port = launcher.port_files()["index-0"]["port"]
    with Client(launcher.gateway_address, timeout=30) as client:
        client.create_collection("docs", exist_ok=True)
        client.upsert_documents("docs", [
            {"id": "scarf", "text": "a warm red wool scarf for winter"},
            {"id": "mug", "text": "a stainless steel travel mug that keeps coffee hot"},
        ])
        assert search_ids(client, "cup for coffee on my commute") == ["mug"]

        os.kill(first["index-0"], signal.SIGKILL)
        launcher.wait_for_output("index-0 exited with code -9; restarting (1 of 5)", timeout=30)
        def restarted_port_file() -> dict[str, int] | None:
            ports = launcher.port_files().get("index-0")
            return ports if ports and ports["pid"] != first["index-0"] else None

        restarted = eventually(restarted_port_file, 30, "the restarted shard writes its port file")
        assert restarted["port"] == shard_port
        # What was acknowledged before the kill is back: the shard reloads its --data-dir.
        assert search_when_available(client, "cup for coffee on my commute", timeout=60) == ["mug"]
        assert search_ids(client, "something to keep my neck warm") == ["scarf"]
    launcher.wait_for_output("index-0 is SERVING again", timeout=30)

    pids = launcher.pids()
    launcher.signal(signal.SIGTERM)
    assert launcher.wait_exit() == 0
    assert_all_gone(launcher, {**pids, "killed index-0": first["index-0"]}, timeout=5)
    assert_ports_free(launcher)
    output = launcher.output()
    assert "SIGTERM received" in output and "stopped." in output
    drains = [last_drain_time(launcher, s) for s in ("gateway", "index-0", "image-encoder", "text-encoder")]
    assert drains == sorted(drains), f"stop order gateway, shards, encoders: {drains}"


def test_services_exit_by_themselves_when_up_is_sigkilled(launch) -> None:
    launcher = launch()
    launcher.wait_for_output("contentembed is up")
    # A restarted child too: supervision spawns it later, from the same long-lived thread.
    killed = launcher.pids()["index-0"]
    os.kill(killed, signal.SIGKILL)
    eventually(
        lambda: launcher.pids().get("index-0") not in (None, killed),
        30,
        "the shard is restarted",
    )
    pids = launcher.pids()
    launcher.signal(signal.SIGKILL)
    launcher.wait_exit()
    assert_all_gone(launcher, pids, timeout=ORPHAN_TIMEOUT_S)
    assert_ports_free(launcher)


def test_a_service_that_keeps_dying_stops_the_stack_with_its_log(launch) -> None:
    launcher = launch("--max-restarts", "1", "--restart-window", "120")
    launcher.wait_for_output("contentembed is up")
    first = launcher.pids()
    os.kill(first["index-0"], signal.SIGKILL)
    second = eventually(
        lambda: (pid := launcher.pids().get("index-0")) not in (None, first["index-0"]) and pid,
        30,
        "the shard is restarted once",
    )
    os.kill(second, signal.SIGKILL)
    assert launcher.wait_exit() == 1
    output = launcher.output()
    assert "index-0 exited with code -9 again; its restart budget (1 per 120 s) is used up" in output
    assert '"service": "index"' in output  # the shard's log tail
    assert_all_gone(launcher, first, timeout=5)
    assert_ports_free(launcher)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_a_stop_signal_while_starting_stops_what_was_started(launch, signum: int) -> None:
    """Sent once every service has bound its port but before the stack is SERVING (the
    text-encoder is still loading), the cheap way to cover the other two signals."""
    launcher = launch()
    pids = eventually(launcher.pids_once_all_bound, START_TIMEOUT_S, "every service binds")
    launcher.signal(signum)
    assert launcher.wait_exit() == 0
    assert_all_gone(launcher, pids, timeout=5)
    assert_ports_free(launcher)
    assert f"{signal.Signals(signum).name} received" in launcher.output()


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    base = free_port_block(PORTS_PER_STACK)
    run_dir = tmp_path / "run"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((HOST, base + 3))  # where index-0 would listen
            squatter.listen()
            result = subprocess.run(
                up_command(run_dir, base), capture_output=True, text=True, timeout=60
            )
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert f"{HOST}:{base + 3}" in output and "index-0" in output, output
        assert not list(run_dir.glob("logs/*")) and not list(run_dir.glob("ports/*"))
        assert processes_naming(run_dir) == []
    finally:
        kill_processes_naming(run_dir)


def test_local_stack_restarts_on_the_port_it_had_even_with_port_0(tmp_path: Path) -> None:
    stack = LocalStack(run_dir=tmp_path)
    shard = ServiceProcess(
        "index-0", "contentembed.services.index",
        ["--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "data")], tmp_path,
    )
    stack.services = [shard]
    try:
        shard.start(stack.child_env())
        shard.wait_for_port(time.monotonic() + 60)
        shard.wait_until_serving(time.monotonic() + 60)
        address, metrics_port, killed = shard.address, shard.metrics_port, shard.pid
        os.kill(killed, signal.SIGKILL)
        events: list[StackEvent] = eventually(stack.poll, 10, "poll restarts the shard")
        assert [str(e) for e in events] == [
            f"index-0 exited with code -9; restarting (1 of 5) on {address}, pid {shard.pid}"
        ]
        assert shard.pid != killed
        shard.wait_until_serving(time.monotonic() + 60)
        assert (shard.address, shard.metrics_port) == (address, metrics_port)
        recovered = eventually(stack.poll, 10, "poll reports the shard SERVING again")
        assert [str(e) for e in recovered] == [f"index-0 is SERVING again on {address}"]
    finally:
        stack.stop(timeout=10)
    assert not is_running(shard.pid)


def test_local_stack_gives_up_after_its_restart_budget(tmp_path: Path) -> None:
    stack = LocalStack(run_dir=tmp_path, max_restarts=2, restart_window_s=60)
    crasher = ServiceProcess("crasher", "contentembed.services.no_such_service", [], tmp_path)
    stack.services = [crasher]
    messages: list[str] = []
    crasher.start(stack.child_env())

    def poll_until_it_gives_up() -> str | None:
        try:
            messages.extend(str(event) for event in stack.poll())
        except StackError as error:
            return str(error)
        return None

    try:
        error = eventually(poll_until_it_gives_up, 30, "the stack gives up on the crasher")
    finally:
        stack.stop(timeout=5)
    assert [m.split(" on ")[0] for m in messages] == [
        "crasher exited with code 1; restarting (1 of 2)",
        "crasher exited with code 1; restarting (2 of 2)",
    ]
    assert "crasher exited with code 1 again; its restart budget (2 per 60 s) is used up" in error
    assert "No module named contentembed.services.no_such_service" in error


def test_a_service_that_fails_to_load_stops_the_start_at_once_with_its_cause(tmp_path: Path) -> None:
    stack = LocalStack(run_dir=tmp_path, shard_count=1, text_model=str(tmp_path / "no-such-model"))
    started = time.monotonic()
    try:
        with pytest.raises(StackError, match="text-encoder failed to load") as caught:
            stack.start(timeout=300)
    finally:
        stack.stop()
    assert "no-such-model" in str(caught.value)  # the log tail names the cause
    assert time.monotonic() - started < 120, "it waited for the start-up timeout"
    assert all(service.returncode is not None for service in stack.services)


def test_a_service_started_from_a_worker_thread_outlives_that_thread(tmp_path: Path) -> None:
    """The parent-death signal follows the forking *thread*: only the main thread may ask
    for it, or a service started by a helper thread dies when the helper ends."""
    import threading

    shard = ServiceProcess(
        "index", "contentembed.services.index", ["--port", "0", "--metrics-port", "-1"], tmp_path
    )
    starter = threading.Thread(target=shard.start, args=(dict(os.environ),))
    starter.start()
    starter.join(30)
    try:
        shard.wait_for_port(time.monotonic() + 60)
        shard.wait_until_serving(time.monotonic() + 60)
        time.sleep(1.0)  # the starting thread is long gone
        assert shard.returncode is None and shard.is_serving(timeout=5)
    finally:
        shard.stop(10)
