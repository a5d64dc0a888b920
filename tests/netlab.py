"""Network namespaces the tests create, to make agents that cannot reach each other.

A :class:`NetNs` is a namespace of the test's own joined to the host namespace by a veth pair with a
private /30 that exists only on that pair (10.213.N.1 on the host's end, 10.213.N.2 inside). An agent
started through :attr:`NetNs.prefix` (``nsenter --net``: not ``ip netns exec``, which remounts /sys and
drops the cgroup mounts runc needs) listens inside: the worker on the host reaches it over the veth, but
from inside, 127.0.0.1 is the namespace's own loopback, so an agent listening on the host's 127.0.0.1
is out of its reach. Nothing is routed anywhere else.
"""

from __future__ import annotations

import itertools
import os
import subprocess

_SEQUENCE = itertools.count(1)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NetNs:
    """One namespace and its veth pair; :meth:`delete` removes both (idempotent)."""

    def __init__(self) -> None:
        n = next(_SEQUENCE)
        tag = f"{os.getpid() % 100000}x{n}"
        self.name = f"orch-test-{tag}"
        self.host_if, self.inner_if = f"oh{tag}"[:15], f"oi{tag}"[:15]
        subnet = (os.getpid() * 7 + n) % 60 * 4  # a /30 of 10.213.x: several test runs side by side
        self.host_ip = f"10.213.{n % 250}.{subnet + 1}"
        self.inner_ip = f"10.213.{n % 250}.{subnet + 2}"

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("nsenter", f"--net=/run/netns/{self.name}")

    def create(self) -> NetNs:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if)
            _ip("link", "set", self.inner_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            inside = ("-n", self.name)
            _ip(*inside, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_if)
            _ip(*inside, "link", "set", self.inner_if, "up")
            _ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
