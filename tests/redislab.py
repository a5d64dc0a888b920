"""A Redis high-availability group on 127.0.0.1 for the tests: a primary, a replica and three sentinels,
each a real ``redis-server`` on a free port in the test's temp dir, stopped by process id."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from tests.procs import RedisServer, free_port

MASTER = "orch"


class SentinelGroup:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[RedisServer] = []
        self.sentinels: list[tuple[int, subprocess.Popen[bytes]]] = []

    @property
    def url(self) -> str:
        ports = ",".join(f"127.0.0.1:{port}" for port, _ in self.sentinels)
        return f"sentinel://{ports}/0?master={MASTER}"

    def start(self) -> SentinelGroup:
        for name in ("primary", "replica"):
            (self.workdir / name).mkdir()
            self.servers.append(RedisServer(self.workdir / name, persistent=True))
        primary, replica = self.servers
        primary.start()
        replica.start(["--replicaof", "127.0.0.1", str(primary.port)])
        for n in range(3):
            port = free_port()
            config = self.workdir / f"sentinel{n}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            proc = subprocess.Popen(["redis-server", str(config), "--sentinel"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            self.sentinels.append((port, proc))
        self.wait(lambda: self._replica_known() and self._sentinels_known(), "the sentinels to see the group")
        return self

    def wait(self, ready, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def _ask(self, n: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinels[n][0], socket_timeout=1, decode_responses=True)

    def _replica_known(self) -> bool:
        replicas = self._ask().sentinel_slaves(MASTER)
        info = self.servers[1]
        link = redis.Redis(port=info.port, socket_timeout=1).info("replication")
        return bool(replicas) and link.get("master_link_status") == "up"

    def _sentinels_known(self) -> bool:
        return all(len(self._ask(n).sentinel_sentinels(MASTER)) == 2 for n in range(3))

    def primary_port(self) -> int:
        return int(self._ask().sentinel_get_master_addr_by_name(MASTER)[1])

    def kill_primary(self) -> int:
        """SIGKILL the current primary; the port of the replica the sentinels promote instead."""
        port = self.primary_port()
        old = next(server for server in self.servers if server.port == port)
        old.kill()
        self.wait(lambda: self.primary_port() != port, "the failover", timeout=60)
        return self.primary_port()

    def stop(self) -> None:
        for _, proc in self.sentinels:
            proc.terminate()
        for _, proc in self.sentinels:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in self.servers:
            server.stop()
