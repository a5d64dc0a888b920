"""One job under Redis ``MONITOR``: every command the chain sends, grouped by command and key shape.

Why: ``INFO commandstats`` says how many ``HSET`` a job costs, not who sends them. To cut the count
the next engineer needs the trace: which key each command touches (``orch:job:<job>``, kombu's
``unacked``, ``celery-task-meta-<uuid>``, the ``celeryev`` channel ...). Ids are replaced by their
kind, so one job's trace reads as a profile. Idle traffic (BRPOP/BLMOVE loops, heartbeats) falls in
the same window and is listed too; the window is kept short (submit → end + 0.2 s).

A raw socket reads MONITOR's lines (``+1700000000.123456 [0 127.0.0.1:5555] "HSET" "orch:job:..."``),
in a thread, until the job has ended.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter

_LINE = re.compile(r'^\+[0-9.]+ \[\d+ [^\]]+\] "([^"]+)"(?: "((?:[^"\\]|\\.)*)")?')
_SHAPES = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{32,64}(?![0-9a-f])"), "<hex>"),
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{12}(?![0-9a-f])"), "<job>"),
    (re.compile(r"r\d\d-c\d{5}"), "<name>"),
]


def shape(key: str) -> str:
    for pattern, word in _SHAPES:
        key = pattern.sub(word, key)
    return key


class Monitor(threading.Thread):
    """Collects (command, key shape) pairs from MONITOR until :meth:`stop`."""

    def __init__(self, port: int) -> None:
        super().__init__(name="redis-monitor", daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        self.sock.sendall(b"MONITOR\r\n")
        self.counts: Counter[tuple[str, str]] = Counter()
        self._stopping = threading.Event()

    def run(self) -> None:
        buf = b""
        while not self._stopping.is_set():
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\r\n")
            for raw in lines:
                m = _LINE.match(raw.decode(errors="replace"))
                if m:
                    self.counts[(m.group(1).lower(), shape(m.group(2) or ""))] += 1

    def stop(self) -> Counter[tuple[str, str]]:
        time.sleep(0.2)  # the last replies' commands are on their way
        self._stopping.set()
        self.join(2)
        self.sock.close()
        self.counts.pop(("monitor", ""), None)
        return self.counts


def report(counts: Counter[tuple[str, str]], seconds: float, limit: int = 40) -> str:
    """The trace as Markdown lines: total, then the most frequent (command, key shape) pairs."""
    total = sum(counts.values())
    lines = [
        f"One job traced with `MONITOR` ({total} commands in a {seconds:.2f} s window, idle loops included):",
        "",
    ]
    lines += [f"- {n} × `{f'{cmd} {key}'.strip()}`" for (cmd, key), n in counts.most_common(limit)]
    if len(counts) > limit:
        rest = sum(n for _, n in counts.most_common()[limit:])
        lines.append(f"- … {rest} more in {len(counts) - limit} other shapes")
    return "\n".join(lines)
