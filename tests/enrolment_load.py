"""Anonymous password guessers and a trusted latency probe, for tests/test_enrolment.py.

Plain ``http.client`` over the standard ``ssl`` module, so that each guesser owns exactly one TLS
connection, can bind its own source address (many IPv6 /64s inside a network namespace) and completes
its handshake before the guessing starts. Run as a program (``python -m tests.enrolment_load hammer|probe
...``) it prints one JSON line: the load runs in a process of its own (or in a network namespace), so
that the client's own GIL does not distort the latency the probe measures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: str | None

    @property
    def checked(self) -> bool:
        """The agent ran scrypt for this request (a wrong password's 403)."""
        return self.status == 403 and "wrong trust password" in str(self.body.get("error"))


def context(server_crt: Path, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """Pin the agent's self-signed certificate; optionally present a client certificate."""
    ctx = ssl.create_default_context(cafile=str(server_crt))
    ctx.check_hostname = False
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    return ctx


def split_addr(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


def connect(addr: str, ctx: ssl.SSLContext, source: str | None = None) -> http.client.HTTPSConnection:
    """A connection with its TLS handshake done."""
    host, port = split_addr(addr)
    conn = http.client.HTTPSConnection(
        host, port, context=ctx, timeout=30, source_address=(source, 0) if source else None
    )
    conn.connect()
    return conn


def send(conn: http.client.HTTPSConnection, method: str, path: str, body: Any = None) -> Answer:
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {"raw": raw[:200].decode(errors="replace")}
    return Answer(response.status, data, response.getheader("Retry-After"))


def guess(pem: str, password: str = "wrong guess") -> dict[str, str]:
    return {"certificate": pem, "password": password, "name": "guesser"}


@dataclass
class HammerResult:
    statuses: Counter[int] = field(default_factory=Counter)
    checked: int = 0
    busy: int = 0  # 429s for the global cap or rate, not for the key's own back-off
    errors: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "checked": self.checked,
            "busy": self.busy,
            "errors": self.errors,
            "seconds": self.seconds,
        }


def hammer(
    addr: str, server_crt: Path, pem: str, threads: int, seconds: float, sources: list[str] | None = None
) -> HammerResult:
    """``threads`` guessers, each on its own connection (and source address), guessing for ``seconds``."""
    result, lock = HammerResult(), threading.Lock()
    ctx = context(server_crt)
    clock = {"began": 0.0, "deadline": 0.0}

    def go() -> None:  # run once, when every guesser is connected, before any is released
        clock["began"] = time.monotonic()
        clock["deadline"] = clock["began"] + seconds

    started = threading.Barrier(threads + 1, action=go)

    def run(index: int) -> None:
        source = sources[index % len(sources)] if sources else None
        conn: http.client.HTTPSConnection | None = connect(addr, ctx, source)
        started.wait()
        while time.monotonic() < clock["deadline"]:
            try:
                if conn is None:
                    conn = connect(addr, ctx, source)
                answer = send(conn, "POST", "/1.0/certificates", guess(pem))
            except (OSError, http.client.HTTPException):
                with lock:
                    result.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            with lock:
                result.statuses[answer.status] += 1
                result.checked += answer.checked
                result.busy += answer.status == 429 and "busy" in str(answer.body.get("error"))
        if conn is not None:
            conn.close()

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    started.wait()
    for worker in workers:
        worker.join()
    result.seconds = time.monotonic() - clock["began"]
    return result


def probe(
    addr: str, server_crt: Path, client_cert: tuple[Path, Path], samples: int, pause: float
) -> list[float]:
    """Latencies (seconds) of a trusted client's ``GET /1.0/containers`` on one kept-alive connection."""
    conn = connect(addr, context(server_crt, client_cert))
    latencies = []
    for _ in range(samples):
        started = time.perf_counter()
        answer = send(conn, "GET", "/1.0/containers")
        latencies.append(time.perf_counter() - started)
        if answer.status != 200:
            raise RuntimeError(f"trusted request failed: {answer.status} {answer.body}")
        time.sleep(pause)
    conn.close()
    return latencies


def median_ms(latencies: list[float]) -> float:
    return round(statistics.median(latencies) * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("hammer")
    h.add_argument("--threads", type=int, default=32)
    h.add_argument("--seconds", type=float, default=5.0)
    h.add_argument("--source", action="append", help="source addresses, one per guesser in turn")
    h.add_argument("--pem", type=Path, required=True, help="any certificate to send with the guesses")
    p = sub.add_parser("probe")
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--pause", type=float, default=0.05)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    for command in (h, p):
        command.add_argument("--addr", required=True)
        command.add_argument("--server-crt", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "hammer":
        pem = args.pem.read_text()
        out = hammer(args.addr, args.server_crt, pem, args.threads, args.seconds, args.source)
        print(json.dumps(out.to_json()))
    else:
        latencies = probe(args.addr, args.server_crt, (args.cert, args.key), args.samples, args.pause)
        print(json.dumps({"latencies": latencies, "median_ms": median_ms(latencies)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
