"""``orch-agent``: start the host agent.

First start creates the data dir, the agent's key and certificate. The agent then serves the API on the
local unix socket ``<data-dir>/unix.socket`` (mode 0660, no certificate needed: the local admin path) and,
with ``--listen``, on HTTPS. The bound address is written to ``<data-dir>/listen.addr`` so that tools (and
tests using port 0) can find it. Beside the HTTPS port, the agent listens on its data port (``--data-listen``,
default the HTTPS port + 1 on the same address, or any free port when HTTPS was given port 0): the bulk
bytes of the migrations it sends go there (hostagent/datalink/).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

from hostagent.agent import Agent
from hostagent.api import build_app
from hostagent.datalink import ktls
from hostagent.enrolment import BACKOFF_BASE, BACKOFF_CAP
from hostagent.runtimes import RuntimeOptions, resume
from orchapi.errors import OrchError

log = logging.getLogger("orch-agent")

DEFAULT_DATA_DIR = Path("/var/lib/orch-agent")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` (port 8443)."""
    host, port = value, "8443"
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise argparse.ArgumentTypeError(f"invalid address {value!r}")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise argparse.ArgumentTypeError(f"invalid address {value!r}")
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port in {value!r}")
    return host or "::", int(port)


def positive_seconds(value: str) -> float:
    """A duration in seconds, > 0 and finite."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid duration {value!r}: seconds > 0 expected")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orch-agent", description="orch host agent")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("ORCH_AGENT_DIR", DEFAULT_DATA_DIR))
    )
    parser.add_argument("--listen", type=parse_listen, help="HTTPS address, e.g. [::]:8443 or 127.0.0.1:0")
    parser.add_argument(
        "--data-listen",
        default=os.environ.get("ORCH_AGENT_DATA_LISTEN", "auto"),
        help="data port for migrations this agent sends: HOST:PORT, 'auto' (the HTTPS port + 1, same "
        "address) or 'off' (bytes then travel over the HTTPS websocket)",
    )
    parser.add_argument(
        "--runtime",
        default=os.environ.get("ORCH_AGENT_RUNTIME", "native"),
        choices=("native", "lxd"),
        help="runtime driver: native (rootfs + runc) or lxd (a local LXD daemon); default native",
    )
    parser.add_argument(
        "--lxd-socket",
        default=os.environ.get("ORCH_AGENT_LXD_SOCKET"),
        help="LXD's unix socket (default: $LXD_DIR/unix.socket, /var/lib/lxd/unix.socket, the snap's)",
    )
    parser.add_argument(
        "--lxd-dir",
        type=Path,
        default=os.environ.get("ORCH_AGENT_LXD_DIR"),
        help="LXD's state dir, holding storage-pools/ (default: the socket's directory)",
    )
    parser.add_argument(
        "--lxd-pool",
        default=os.environ.get("ORCH_AGENT_LXD_POOL"),
        help="the LXD storage pool containers are received into (default: the default profile's root pool)",
    )
    parser.add_argument("--name", help="server name reported to clients (default: hostname)")
    parser.add_argument(
        "--enrol-backoff",
        type=positive_seconds,
        default=os.environ.get("ORCH_AGENT_ENROL_BACKOFF", str(BACKOFF_BASE)),
        metavar="SECONDS",
        help="how long an address waits after its first wrong trust password (doubling with each "
        f"further one, up to {BACKOFF_CAP:g} s); default {BACKOFF_BASE:g}",
    )
    parser.add_argument("--log-level", default=os.environ.get("ORCH_AGENT_LOG_LEVEL", "INFO"))
    return parser


def listen_socket(host: str, port: int, blocking: bool = False) -> socket.socket:
    """A listening socket; ``::`` is dual-stack (IPv4 clients too), as operators expect of ``[::]:8443``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(blocking)
    return sock


def data_address(value: str, listen: tuple[str, int]) -> tuple[str, int] | None:
    """Where the data port listens: ``off``, ``auto`` (beside ``listen``), or an address."""
    if value == "off":
        return None
    if value == "auto":
        host, port = listen
        return host, (port + 1 if 0 < port < 65535 else 0)
    return parse_listen(value)


#: how often expired suspended imports are removed (besides at start)
GC_INTERVAL = float(os.environ.get("ORCH_AGENT_GC_INTERVAL", "600"))


async def collect_suspended(agent: Agent) -> None:
    """Remove expired suspended imports every :data:`GC_INTERVAL` seconds (hostagent/runtimes/resume.py)."""
    while True:
        await asyncio.sleep(GC_INTERVAL)
        try:
            for name in await agent.blocking(resume.collect_expired, agent.runtime):
                log.info("removed the expired suspended import of %s", name)
        except Exception:  # noqa: BLE001 - logged; the next round tries again
            log.exception("could not remove expired suspended imports")


async def serve(agent: Agent, listen: tuple[str, int] | None, data_listen: str = "auto") -> None:
    """Run the listeners until SIGTERM or SIGINT."""
    runner = web.AppRunner(build_app(agent), handle_signals=False, access_log=None)
    await runner.setup()
    sock_path = agent.data_dir / "unix.socket"
    if sock_path.exists() or sock_path.is_symlink():
        sock_path.unlink()
    await web.UnixSite(runner, str(sock_path)).start()
    os.chmod(sock_path, 0o660)
    addr_file = agent.data_dir / "listen.addr"
    addr_file.unlink(missing_ok=True)
    if listen is not None:
        sock = listen_socket(*listen)
        await web.SockSite(runner, sock, ssl_context=agent.make_ssl_context()).start()
        host, port = sock.getsockname()[:2]  # the real port when 0 was asked for
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        addr_file.write_text(shown + "\n")
        agent.addresses = [shown]
        log.info("listening on https://%s (certificate fingerprint %s)", shown, agent.fingerprint)
        data = data_address(data_listen, listen)
        if data is not None:
            agent.start_datalink(listen_socket(*data, blocking=True))
            log.info("data port %s (kernel TLS: %s)", agent.datalink.port if agent.datalink else "-",
                     "yes" if ktls.available() else "no")  # fmt: skip
    log.info("local socket %s", sock_path)
    collecting = asyncio.ensure_future(collect_suspended(agent))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down (containers keep running)")
        collecting.cancel()
        agent.stop_datalink()
        await runner.cleanup()
        addr_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data_dir: Path = args.data_dir.absolute()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o711)  # unprivileged containers' mapped root must traverse it to their rootfs
        options = RuntimeOptions(args.lxd_socket, args.lxd_dir, args.lxd_pool)
        agent = Agent(
            data_dir, runtime=args.runtime, name=args.name, options=options, enrol_backoff=args.enrol_backoff
        )
        agent.runtime.recover()
        for name in resume.collect_expired(agent.runtime):
            log.info("removed the expired suspended import of %s", name)
        if args.data_listen not in ("auto", "off"):
            parse_listen(args.data_listen)  # a bad address is an error now, not at the first migration
        asyncio.run(serve(agent, args.listen, args.data_listen))
    except (OSError, ValueError, OrchError) as exc:
        print(f"orch-agent: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
