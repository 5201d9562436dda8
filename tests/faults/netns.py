"""Worker "hosts" as Linux network namespaces (no fixtures; tests/faults/conftest.py wires them).

The layout, on 10.213.<k>.0/24 (<k> picked so that no interface of the machine uses it):

    root namespace                                 namespace celif-<name>-<pid>
    cfs<pid> (veth, "the service host")  10.213.k.1/32
    cf<name><pid>  10.213.k.(4i+5)/30  <== veth ==>  cf<name><pid>p  10.213.k.(4i+6)/30, lo up
                                                   route 10.213.k.1 via 10.213.k.(4i+5)

PostgreSQL, Redis, the API and the object store listen on the service address (and on
127.0.0.1 for the test process), so every host reaches them at the same address over its own
link, and the server sees each host's own source address. Cutting a host is `ip link set
<root-side veth> down`: its packets go nowhere, so its established TCP connections hang (no
reset; the neighbour entries are permanent, so no ARP failure turns into "no route to host"),
as when a host drops off the network; `restore()` brings the link back and the same
connections carry on. The hosts share the machine's filesystem, clock and process table.

Names carry the test process's pid; `remove_leftovers()` deletes those of dead processes (an
earlier run that crashed before its cleanup).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

SUBNET_PREFIX = "10.213"
NETNS_RE = re.compile(r"^celif-[a-z]-(\d+)$")
LINK_RE = re.compile(r"^cf[a-z](\d+)p?$")


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth links)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    probe = f"celif-p-{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"`ip netns add` does not work here: {exc}"
    ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Delete namespaces and links of earlier runs whose process is gone (and of this pid)."""
    removed = []
    me = os.getpid()
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        m = NETNS_RE.match(name)
        if m and (int(m.group(1)) == me or not _alive(int(m.group(1)))):
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        m = LINK_RE.match(name)
        if m and (int(m.group(1)) == me or not _alive(int(m.group(1)))):
            ip("link", "del", name, check=False)  # deleting one end removes its peer
            removed.append(name)
    return removed


def _mac(link: str, netns: str | None = None) -> str:
    return json.loads(ip("-j", "link", "show", "dev", link, netns=netns))[0]["address"]


def _free_subnet() -> int:
    used = ip("-o", "-4", "addr", "show")
    start = os.getpid() % 250
    for i in range(250):
        k = (start + i) % 250 + 1
        if f" {SUBNET_PREFIX}.{k}." not in used:
            return k
    raise RuntimeError(f"no free {SUBNET_PREFIX}.x.0/24 subnet")


@dataclass
class Host:
    name: str  # "a", "b"
    netns: str
    link: str  # the root-side end of its veth pair
    address: str  # the host's own address (its connections' source)
    gateway: str  # the root-side address of its link
    cuts: list[str] = field(default_factory=list)

    def cut(self) -> None:
        """The host drops off the network (its processes keep running)."""
        ip("link", "set", self.link, "down")
        self.cuts.append("down")

    def restore(self) -> None:
        ip("link", "set", self.link, "up")
        self.cuts.append("up")

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run on this host: in its network namespace, with a hostname of its own (a UTS
        namespace), so worker ids and Celery node names name the host. Every launcher execs
        the next, so the process is `argv`'s own (its pid, its process group)."""
        hostname = f"host-{self.name}"
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv,
        ]  # fmt: skip

    @property
    def hostname(self) -> str:
        return f"host-{self.name}"


class Network:
    """The service address and one namespace per host; `up()` builds it, `down()` removes it
    (idempotent; the processes on the hosts must be stopped first)."""

    def __init__(self, names: Sequence[str] = ("a", "b")):
        self.pid = os.getpid()
        self.names = list(names)
        self.hosts: dict[str, Host] = {}
        self.service_link = f"cfs{self.pid}"
        self.subnet = ""
        self.service_address = ""

    def up(self) -> Network:
        remove_leftovers()
        k = _free_subnet()
        self.subnet = f"{SUBNET_PREFIX}.{k}.0/24"
        self.service_address = f"{SUBNET_PREFIX}.{k}.1"
        try:
            # The service address sits on a veth pair of its own in the root namespace (this
            # kernel may have no dummy links); an up link's address is reachable from any link.
            ip("link", "add", self.service_link, "type", "veth", "peer", "name", f"{self.service_link}p")  # fmt: skip
            ip("addr", "add", f"{self.service_address}/32", "dev", self.service_link)
            ip("link", "set", self.service_link, "up")
            ip("link", "set", f"{self.service_link}p", "up")
            for i, name in enumerate(self.names):
                self.hosts[name] = self._add_host(name, k, i)
        except BaseException:
            self.down()
            raise
        return self

    def _add_host(self, name: str, k: int, i: int) -> Host:
        netns, link = f"celif-{name}-{self.pid}", f"cf{name}{self.pid}"
        gateway, address = f"{SUBNET_PREFIX}.{k}.{4 * i + 5}", f"{SUBNET_PREFIX}.{k}.{4 * i + 6}"
        ip("netns", "add", netns)
        ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
        ip("link", "set", f"{link}p", "netns", netns)
        ip("addr", "add", f"{gateway}/30", "dev", link)
        ip("link", "set", link, "up")
        ip("addr", "add", f"{address}/30", "dev", f"{link}p", netns=netns)
        ip("link", "set", f"{link}p", "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        ip("route", "add", f"{self.service_address}/32", "via", gateway, netns=netns)
        # Permanent neighbour entries both ways: with the link down, an ARP entry that expires
        # turns into EHOSTUNREACH on the host's sockets, and established connections fail
        # within seconds instead of hanging as they do when a host drops off a routed network.
        ip("neigh", "replace", gateway, "lladdr", _mac(link), "dev", f"{link}p", "nud", "permanent", netns=netns)  # fmt: skip
        ip("neigh", "replace", address, "lladdr", _mac(f"{link}p", netns), "dev", link, "nud", "permanent")  # fmt: skip
        return Host(name, netns, link, address, gateway)

    def down(self) -> None:
        for host in self.hosts.values():
            ip("netns", "del", host.netns, check=False)  # takes its veth pair with it
            ip("link", "del", host.link, check=False)
        ip("link", "del", self.service_link, check=False)
        self.hosts.clear()
