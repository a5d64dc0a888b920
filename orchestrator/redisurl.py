"""``ORCH_REDIS_URL``: one Redis server, or a Redis Sentinel group for high availability.

- ``redis://[:password@]host:port/db``, ``rediss://…`` (TLS), ``redis+socket:///path/to/redis.sock``;
- ``sentinel://[:password@]host1:port1,host2:port2,host3:port3/db?master=NAME``: the sentinels
  watching the primary called NAME (default ``orch``). ``;``-separated ``sentinel://`` URLs (kombu's
  form) are accepted too. The password is the primary's; the sentinels are asked without one.

Everything that talks to Redis takes its address from here: the Celery broker and result backend
(kombu's and Celery's own Sentinel support), orch's job store and locks (redis-py's
:class:`redis.sentinel.Sentinel`), so after a failover they all find the new primary.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from orchapi.errors import BadRequest

DEFAULT_MASTER = "orch"


@dataclass(frozen=True)
class SentinelAddress:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None

    def celery_url(self) -> str:
        """The broker and result-backend URL in kombu's form (one ``sentinel://`` per sentinel)."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.sentinels)

    def transport_options(self) -> dict[str, object]:
        return {"master_name": self.master}


def parse_sentinel(url: str) -> SentinelAddress:
    """The sentinels, primary name, db and password of a ``sentinel://`` URL."""
    parts = [part for part in url.split(";") if part]
    hosts: list[tuple[str, int]] = []
    master, db, password = DEFAULT_MASTER, 0, None
    for part in parts:
        split = urlsplit(part)
        if split.scheme != "sentinel":
            raise BadRequest(
                f"not a sentinel URL: {part}", "use sentinel://host:port,host:port/0?master=NAME"
            )
        netloc = split.netloc
        if "@" in netloc:
            credentials, netloc = netloc.rsplit("@", 1)
            password = unquote(credentials.split(":", 1)[-1]) or password
        for address in filter(None, netloc.split(",")):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise BadRequest(f"sentinel address {address!r} needs host:port", "e.g. 10.0.0.1:26379")
            hosts.append((host.strip("[]"), int(port)))
        if split.path.strip("/"):
            if not split.path.strip("/").isdigit():
                raise BadRequest(f"the database in {part} must be a number")
            db = int(split.path.strip("/"))
        query = parse_qs(split.query)
        master = (query.get("master") or query.get("master_name") or [master])[0]
    if not hosts:
        raise BadRequest(f"no sentinel in {url}", "use sentinel://host:port,host:port/0?master=NAME")
    return SentinelAddress(tuple(hosts), master, db, password)


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")
