"""Several hosts on one machine: network namespaces joined by a bridge.

``Network`` builds a private test subnet of its own: a *switch* namespace holding
a bridge, one namespace per host (each with an ``eth0`` whose peer is a port of
that bridge) and one veth from the root namespace, so the test process itself is
a client on the subnet. Only addresses of this subnet are ever assigned, and the
subnet is chosen so that it overlaps no route of the root namespace. Cutting a
host's link takes its bridge port down: the host keeps its address and route
(its interface loses carrier), so its connections stall as when a cable is
pulled instead of failing at once. ``close()`` ends every process started in a
namespace and deletes the namespaces, which deletes every veth and the bridge.

Needs root (``ip netns``); ``unavailable()`` says why it cannot run elsewhere.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

NETNS_DIR = Path("/run/netns")


class NetnsError(RuntimeError):
    """A namespace command failed; ``str()`` names the command and its output."""


def unavailable() -> str | None:
    """Why namespaces cannot be built here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns)"
    for tool, package in (("ip", "iproute2"), ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            return f"the `{tool}` command ({package}) is not installed"
    # Root without CAP_SYS_ADMIN / CAP_NET_ADMIN (an unprivileged container) cannot.
    probe = f"cc-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def ip(*args: str, netns: str | None = None) -> str:
    """Run ``ip [-n NETNS] ARGS``; return its stdout, raise NetnsError on failure."""
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def free_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A /24 of 10.0.0.0/8 that overlaps no route or address of the root namespace."""
    rng = rng or random.Random()
    taken = [ipaddress.IPv4Network(word, strict=False)
             for line in (ip("-4", "route", "show", "table", "all") + ip("-4", "-o", "addr")).splitlines()
             for word in line.split() if "/" in word and word[0].isdigit()]
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randint(160, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise NetnsError("no free 10.x.y.0/24 test subnet")


@dataclass
class Host:
    """One namespace on the test subnet."""

    name: str  # the role, e.g. "temporal"
    netns: str
    address: str
    port: str  # its bridge port in the switch namespace (the other end of its eth0)

    def inode(self) -> int:
        """The namespace's inode: a process is on this host when its ns/net has it."""
        return (NETNS_DIR / self.netns).stat().st_ino


@dataclass
class Network:
    """A bridge, its hosts and the processes started in them; use as a context manager."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: ipaddress.IPv4Network = field(default_factory=free_subnet)
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"cc-{self.tag}-switch"

    @property
    def client_address(self) -> str:
        """The root namespace's address on the subnet (the test process as a client)."""
        return str(self.subnet.network_address + 1)

    def __enter__(self) -> Network:
        try:
            self._add_namespace(self.switch)
            ip("link", "add", "br0", "type", "bridge", netns=self.switch)
            ip("link", "set", "br0", "up", netns=self.switch)
            # The root namespace's link: root end "cc<tag>c", switch end "c" on the bridge.
            root_end = f"cc{self.tag}c"
            ip("link", "add", root_end, "type", "veth", "peer", "name", "c", "netns", self.switch)
            ip("link", "set", "c", "master", "br0", "up", netns=self.switch)
            ip("addr", "add", f"{self.client_address}/{self.subnet.prefixlen}", "dev", root_end)
            ip("link", "set", root_end, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        """A namespace with ``lo`` and an ``eth0`` on the bridge at the next free address."""
        netns = f"cc-{self.tag}-{name}"
        address = str(self.subnet.network_address + 2 + len(self.hosts))
        port = f"p{len(self.hosts)}"
        self._add_namespace(netns)
        ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns,
           netns=self.switch)
        ip("link", "set", port, "master", "br0", "up", netns=self.switch)
        ip("addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0", netns=netns)
        ip("link", "set", "eth0", "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        host = Host(name, netns, address, port)
        self.hosts[name] = host
        return host

    def set_link(self, host: Host, up: bool) -> None:
        """Connect or cut ``host``: its bridge port up or down."""
        ip("link", "set", host.port, "up" if up else "down", netns=self.switch)

    def spawn(self, host: Host, argv: Sequence[str], *, env: dict[str, str] | None = None,
              out: IO[bytes] | None = None, user: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host`` (as ``user`` when given); ``close()`` ends it.

        ``ip netns exec`` and ``setpriv`` exec the command, so the pid is the command's own.
        """
        prefix = ["ip", "netns", "exec", host.netns]
        if user is not None:
            prefix += ["setpriv", "--reuid", user, "--regid", user, "--clear-groups"]
        proc = subprocess.Popen([*prefix, *argv], env=env, stdout=out or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, host: Host, argv: Sequence[str], *, env: dict[str, str] | None = None,
            timeout: float = 120) -> str:
        """Run ``argv`` on ``host`` to completion; return its output, raise on failure."""
        done = subprocess.run(["ip", "netns", "exec", host.netns, *argv], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} on {host.name}: {done.stdout}{done.stderr}")
        return done.stdout

    def host_of(self, pid: int) -> str | None:
        """The name of the host whose namespace process ``pid`` runs in (None: gone or other)."""
        try:
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None
        return next((h.name for h in self.hosts.values() if h.inode() == inode), None)

    def close(self) -> None:
        """End every spawned process (its whole session), then delete every namespace."""
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()
        for netns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        self._namespaces.clear()
        # Deleting the switch deleted the root end's peer, and so the root end; make sure.
        subprocess.run(["ip", "link", "del", f"cc{self.tag}c"], capture_output=True, timeout=30)

    def _add_namespace(self, netns: str) -> None:
        ip("netns", "add", netns)
        self._namespaces.append(netns)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal ``proc``'s process group, wait, then SIGKILL the group if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
