"""Hosts of their own on this machine: one network namespace per service, each with an
address on a private bridge in the root namespace, reached by address as pods are.

Needs root (CAP_NET_ADMIN) and iproute2; ``Topology.probe`` tries once and says why not.
Names carry the creating process's pid (``cemh<pid>…``), so ``remove_leftovers`` only
removes what a process that is gone left behind.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

PREFIX = "cemh"
_LEFTOVER = re.compile(rf"^{PREFIX}(\d+)")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=check, timeout=10
    )


def tc(*args: str, namespace: str | None = None) -> None:
    command = ["tc", *args]
    if namespace is not None:
        command = ["ip", "netns", "exec", namespace, *command]
    subprocess.run(command, capture_output=True, text=True, check=True, timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Namespaces and links of ours whose creating process is gone; returns their names."""
    removed: list[str] = []
    namespaces = ip("netns", "list", check=False).stdout.split("\n")
    for line in namespaces:
        name = line.split(" ")[0]
        found = _LEFTOVER.match(name)
        if found and not _alive(int(found.group(1))):
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        found = _LEFTOVER.match(name)
        if found and not _alive(int(found.group(1))):
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def free_subnet(third_octets: range = range(1, 255)) -> ipaddress.IPv4Network:
    """A 10.213.x.0/24 that no address or route here overlaps, picked from our pid."""
    taken = []
    for listing in (ip("-4", "-o", "addr", "show").stdout, ip("-4", "route", "show").stdout):
        for word in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", listing):
            taken.append(ipaddress.ip_network(word, strict=False))
    start = os.getpid() % len(third_octets)
    for step in range(len(third_octets)):
        third = third_octets[(start + step) % len(third_octets)]
        candidate = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.213.x.0/24 on this machine")


@dataclass
class Host:
    """One namespace: ``address`` on its end of a veth whose other end is on the bridge."""

    name: str  # the namespace
    address: str
    outside: str  # veth end in the root namespace, on the bridge
    inside: str  # veth end in the namespace

    @property
    def launcher(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


@dataclass
class Topology:
    subnet: ipaddress.IPv4Network
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    _links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway_address(self) -> str:
        """The root namespace's address on the bridge."""
        return str(self.subnet.network_address + 1)

    @staticmethod
    def probe() -> str | None:
        """None when namespaces can be made here; otherwise why not (to skip with)."""
        if shutil.which("ip") is None or shutil.which("tc") is None:
            return "iproute2 (ip, tc) is not installed"
        name = f"{PREFIX}{os.getpid()}probe"
        try:
            made = ip("netns", "add", name, check=False)
            if made.returncode != 0:
                return f"`ip netns add` failed (root with CAP_NET_ADMIN needed): {made.stderr.strip()}"
            link = ip("netns", "exec", name, "ip", "link", "set", "lo", "up", check=False)
            if link.returncode != 0:
                return f"cannot configure links in a namespace: {link.stderr.strip()}"
            try:
                tc("qdisc", "add", "dev", "lo", "root", "pfifo", "limit", "0", namespace=name)
            except subprocess.CalledProcessError as error:
                return f"cannot add a queueing discipline (tc): {error.stderr.strip()}"
            return None
        except (OSError, subprocess.SubprocessError) as error:
            return f"cannot run ip: {error}"
        finally:
            ip("netns", "del", name, check=False)

    def create(self, names: list[str]) -> None:
        """The bridge (with the root namespace's address) and one namespace per name."""
        prefix = self.subnet.prefixlen
        ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        ip("addr", "add", f"{self.gateway_address}/{prefix}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for number, label in enumerate(names):
            namespace = f"{self.tag}-{label}"
            host = Host(
                namespace,
                str(self.subnet.network_address + 10 + number),
                f"{self.tag}h{number}",
                f"{self.tag}n{number}",
            )
            ip("netns", "add", namespace)
            self.hosts[label] = host
            ip("link", "add", host.outside, "type", "veth", "peer", "name", host.inside)
            self._links.append(host.outside)
            ip("link", "set", host.inside, "netns", namespace)
            ip("link", "set", host.outside, "master", self.bridge)
            ip("link", "set", host.outside, "up")
            inside = ["netns", "exec", namespace, "ip"]
            ip(*inside, "addr", "add", f"{host.address}/{prefix}", "dev", host.inside)
            ip(*inside, "link", "set", host.inside, "up")
            ip(*inside, "link", "set", "lo", "up")

    def black_hole(self, label: str) -> None:
        """Every packet to and from the host vanishes (no RST, no ICMP): a partitioned
        node or a dead switch port, the case a caller only learns about from its deadline.

        A FIFO queue of length 0 on both ends of its veth drops every packet on enqueue.
        Not ``netem loss 100%``: netem, like tc's classifiers and actions, is a module
        that minimal kernels (this machine's among them) lack; pfifo is always built in."""
        host = self.hosts[label]
        tc("qdisc", "add", "dev", host.outside, "root", "pfifo", "limit", "0")
        tc("qdisc", "add", "dev", host.inside, "root", "pfifo", "limit", "0", namespace=host.name)

    def restore(self, label: str) -> None:
        host = self.hosts[label]
        tc("qdisc", "del", "dev", host.outside, "root")
        tc("qdisc", "del", "dev", host.inside, "root", namespace=host.name)

    def destroy(self) -> None:
        """Removes everything ``create`` made (deleting a namespace deletes its veth end,
        and with it the pair); safe to call after a partial ``create``."""
        for host in self.hosts.values():
            ip("netns", "del", host.name, check=False)
        for link in reversed(self._links):
            ip("link", "del", link, check=False)
        self.hosts.clear()
        self._links.clear()
