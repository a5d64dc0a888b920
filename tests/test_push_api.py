"""Push mode at the agents' API, real agents over real TLS: the target opens a sink whose one-time
secret only the source agent's certificate can redeem; the source dials it and sends; roles (header,
choice, verification) are the pull's."""

from __future__ import annotations

import os
from typing import Any

import pytest

from orchapi.errors import BadRequest, Forbidden
from tests.procs import AgentProcess
from tests.test_migration_api import (
    MiB,
    api,
    container_names,
    create,
    import_image,
    issue,
    leftovers,
    pull_image,
    rootfs,
    snapshot,
    wait,
    write,
)


@pytest.fixture
def pair(agents, busybox_image):  # type: ignore[no-untyped-def]
    """Dir agents a (with the busybox image and a stopped container c1 made from it) and b."""
    a, b = agents("a"), agents("b")
    fingerprint = import_image(a, busybox_image)
    create(a, "c1", fingerprint)
    return a, b, fingerprint


def certificate(agent: AgentProcess) -> str:
    return (agent.data_dir / "server.crt").read_text()


def open_sink(target: AgentProcess, pusher_pem: str, name: str, **over: Any) -> dict[str, Any]:
    source = {"type": "migration", "mode": "push", "certificate": pusher_pem, "base-image": "", **over}
    response = api(target).request("POST", "/1.0/containers", json={"name": name, "source": source})
    return api(target).get(response.json()["operation"])


def push(source: AgentProcess, target: AgentProcess, migration: dict, sink_op: dict, **over: Any) -> str:
    body = {
        "addresses": [target.url.removeprefix("https://")],
        "sink": sink_op["metadata"]["sink"],
        "secret": sink_op["metadata"]["secrets"]["fs"],
        **over,
    }
    response = api(source).request("POST", f"/1.0/migrations/{migration['id']}/push", json=body)
    return response.json()["operation"]


def test_push_copies_a_container_with_snapshots(pair):
    a, b, fingerprint = pair
    write(a, "c1", "root/one", b"1" * 1000)
    snapshot(a, "c1", "s1")
    write(a, "c1", "root/big", os.urandom(8 * MiB))
    migration = issue(a, b, "c1")
    pull_image(a, b, migration)
    sink = open_sink(b, certificate(a), "c1", **{"base-image": fingerprint})
    assert sink["metadata"]["mode"] == "push" and "fs" in sink["metadata"]["secrets"]
    pushing = push(a, b, migration, sink)
    received = wait(b, f"/1.0/operations/{sink['id']}")
    assert received["verified"] is True
    assert wait(a, pushing)["bytes_sent"] > 8 * MiB
    assert container_names(b) == ["c1"] and leftovers(b) == []
    assert (rootfs(b, "c1") / "root" / "big").read_bytes() == (rootfs(a, "c1") / "root" / "big").read_bytes()
    assert "secrets" not in api(b).get(f"/1.0/operations/{sink['id']}")["metadata"]  # spent


def test_a_sink_secret_only_opens_for_the_certificate_it_was_opened_for(pair, agents):
    a, b, _ = pair
    other = agents("other")
    migration = issue(a, b, "c1")
    open_sink(b, certificate(a), "c0")  # a's handshake with b succeeds from now on
    for_other = open_sink(b, certificate(other), "c1")  # but this sink is other's
    with pytest.raises(Forbidden, match="issued to another agent"):
        wait(a, push(a, b, migration, for_other))
    assert container_names(b) == []
    # the migration's token was spent by the push: it cannot be pulled nor pushed again
    with pytest.raises(Forbidden, match="used already"):
        push(a, b, migration, for_other)


def test_push_requests_are_checked(pair):
    a, b, _ = pair
    migration = issue(a, b, "c1")
    sink = open_sink(b, certificate(a), "c1")
    with pytest.raises(BadRequest, match="addresses"):
        push(a, b, migration, sink, addresses=["not an address"])
    with pytest.raises(BadRequest, match="pull mode"):
        open_sink(b, certificate(a), "c2", secrets={"fs": "x"})
    with pytest.raises(BadRequest, match="pull, push or relay"):
        open_sink(b, certificate(a), "c3", mode="sideways")
