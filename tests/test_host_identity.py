"""A host is its agent's certificate, not a remote name; and the agent itself enforces its cordon.

One real agent ``ux-a`` is added three times (HTTPS ``ux-a`` and ``ux-a2``, unix socket ``admin-foo``),
beside a second agent ``ux-b``; real Redis, real workers, real TLS.
"""

from __future__ import annotations

import json

import pytest
import requests

from orchapi import certs
from orchapi.client import AgentClient
from orchapi.errors import Conflict
from tests.procs import AgentProcess, Orch

ALIASES = ["admin-foo", "ux-a", "ux-a2"]


def _hosts(o: Orch) -> list[dict]:
    return json.loads(o.run("hosts", "--format", "json").stdout)


def _row(o: Orch, name: str) -> dict:
    rows = [h for h in _hosts(o) if name in h["names"]]
    assert len(rows) == 1, rows
    return rows[0]


def _https(o: Orch, remote: str) -> requests.Session:
    """A trusted HTTPS session to ``remote``, as any client holding the certificate could open."""
    session = requests.Session()
    session.trust_env = False
    orch_dir = o.config_home / "orch"
    session.cert = (str(orch_dir / "client.crt"), str(orch_dir / "client.key"))
    session.verify = str(orch_dir / "servercerts" / f"{remote}.crt")
    return session


@pytest.fixture
def aliased(make_agent, orch_env, busybox_image):  # type: ignore[no-untyped-def]
    a, b = make_agent("ux-a"), make_agent("ux-b")
    o = orch_env
    o.add_remote("ux-a", a)
    o.add_remote("ux-a2", a)
    o.add_remote("ux-b", b)
    o.run("remote", "add", "admin-foo", f"unix://{a.socket}")
    o.run("image", "import", str(busybox_image), "ux-a:", "--alias", "bb")
    o.run("init", "ux-a:bb", "ux-a:c1")
    o.run("init", "ux-a:bb", "ux-a:c2")
    o.run("init", "ux-a:bb", "ux-b:x1")
    return a, b


def _fingerprint(agent: AgentProcess) -> str:
    return certs.fingerprint_pem((agent.data_dir / "server.crt").read_bytes())


def test_hosts_shows_one_row_per_agent_with_all_its_names(aliased, orch_env):
    a, b = aliased
    o = orch_env
    row = _row(o, "ux-a")
    assert row["names"] == ALIASES and row["remote"] == "admin-foo"
    assert row["fingerprint"] == _fingerprint(a)
    assert row["containers"] == 2  # counted once, not once per name
    assert _row(o, "ux-b")["names"] == ["ux-b"] and _row(o, "ux-b")["containers"] == 1
    table = o.run("hosts").stdout.splitlines()
    assert sum(1 for line in table if "ux-a" in line) == 1
    line = next(line for line in table if "ux-a" in line)
    assert "| admin-foo, ux-a, ux-a2 | ONLINE " in line and "| 2 (0 running) |" in line


def test_evacuate_never_plans_onto_the_source_under_another_name(aliased, orch_env):
    o = orch_env
    for source in ("ux-a:", "ux-a2:", "admin-foo:"):
        proc = o.run("evacuate", source, "--plan", "--format", "json")
        plan = json.loads(proc.stdout)
        assert {p["container"] for p in plan} == {"c1", "c2"}
        assert {p["target"] for p in plan} == {"ux-b"}, (source, plan)
    err = o.fails("evacuate", "ux-a:", "--plan", "--to", "ux-a2:")
    assert "ux-a2" in err and "ux-a " in err and "same agent" in err
    err = o.fails("evacuate", "ux-a2:", "--to", "ux-b:,admin-foo:", "--yes")
    assert "admin-foo" in err and "ux-a2" in err and "same agent" in err
    # nothing was cordoned by the refused evacuation
    assert _row(o, "ux-a")["status"] == "online"
    # a target with two names is one target: its capacity is not counted twice
    proc = o.run("evacuate", "ux-b:", "--plan", "--format", "json")
    assert {p["target"] for p in json.loads(proc.stdout)} == {"ux-a"}
    assert "Not a target: ux-a2: the same host as ux-a" in proc.stderr


def test_cordon_through_one_name_holds_for_every_name_and_at_the_agent(aliased, orch_env, start_worker):
    a, b = aliased
    o = orch_env
    start_worker("w1")
    o.run("cordon", "ux-a2:")
    assert _row(o, "ux-a")["status"] == "cordoned"
    assert "CORDONED" in next(line for line in o.run("hosts").stdout.splitlines() if "ux-a" in line)
    # the orchestrator refuses a copy through the other names
    for name in ("ux-a:", "admin-foo:"):
        assert "is cordoned" in o.fails("copy", "ux-b:x1", name)
    # the agent refuses a launch through any name (the CLI checks nothing itself)
    for name in ALIASES:
        err = o.fails("launch", "ux-a:bb", f"{name}:new")
        assert err == (
            "Error: this host is cordoned: it accepts no new containers (orch uncordon ux-a: to allow them)"
        )
    # a direct API call, bypassing the CLI, is refused by the agent: image source and migration alike
    session = _https(o, "ux-a")
    for source in (
        {"type": "image", "alias": "bb"},
        {"type": "migration", "mode": "pull", "operation": "https://127.0.0.1:1/1.0/migrations/x"},
    ):
        resp = session.post(f"{a.url}/1.0/containers", json={"name": "direct", "source": source}, timeout=10)
        assert resp.status_code == 409, resp.text
        body = resp.json()
        assert body["type"] == "error" and body["error_code"] == 409
        assert "this host is cordoned" in body["error"] and "orch uncordon" in body["error"]
    with pytest.raises(Conflict, match="this host is cordoned"):
        AgentClient(f"unix://{a.socket}").call(
            "POST", "/1.0/containers", json={"name": "direct", "source": {"type": "image", "alias": "bb"}}
        )
    names = {c["name"] for c in json.loads(o.run("list", "ux-a:", "--format", "json").stdout)}
    assert names == {"c1", "c2"}
    # renames within the host stay allowed
    o.run("move", "ux-a:c2", "ux-a:c2r")
    # uncordon through a third name: everything is allowed again, from every name
    o.run("uncordon", "admin-foo:")
    assert _row(o, "ux-a2")["status"] == "online"
    o.run("launch", "ux-a:bb", "ux-a2:new")
    o.run("copy", "ux-b:x1", "ux-a2:")
    names = {c["name"] for c in json.loads(o.run("list", "ux-a:", "--format", "json").stdout)}
    assert names == {"c1", "c2r", "new", "x1"}


def test_the_agent_alone_refuses_a_real_migration_until_restoring(aliased, orch_env, start_worker):
    """The agent's own state holds even when the orchestrator knows nothing (Redis says online)."""
    a, b = aliased
    o = orch_env
    start_worker("w1")
    o.run("config", "set", "admin-foo:", "orch.status", "evacuated")
    assert _row(o, "ux-a2")["status"] == "evacuated"  # `orch hosts` shows what the agent enforces
    err = o.fails("copy", "ux-b:x1", "ux-a2:")
    assert "evacuated" in err and "orch uncordon ux-a2:" in err
    # a migration with real secrets, sent straight to the agent, is refused before it uses them
    source = _https(o, "ux-b")
    target = _https(o, "ux-a")
    target_cert = target.get(f"{a.url}/1.0", timeout=10).json()["metadata"]["environment"]["certificate"]
    migration = source.post(
        f"{b.url}/1.0/containers/x1/migration", json={"target_certificate": target_cert}, timeout=10
    ).json()["metadata"]
    body = {
        "name": "x1",
        "source": {
            "type": "migration",
            "mode": "pull",
            "operation": f"{b.url}/1.0/migrations/{migration['id']}",
            "secrets": {"fs": migration["secrets"]["fs"]},
            "certificate": migration["certificate"],
            "base-image": migration.get("base_image", ""),
        },
    }
    resp = target.post(f"{a.url}/1.0/containers", json=body, timeout=10)
    assert resp.status_code == 409
    assert "this host is evacuated" in resp.json()["error"]
    assert "orch uncordon ux-a:" in resp.json()["error"] and "orch restore ux-a:" in resp.json()["error"]
    # while restoring, the agent accepts it (with the very same, still unused secret)
    o.run("config", "set", "admin-foo:", "orch.status", "restoring")
    resp = target.post(f"{a.url}/1.0/containers", json=body, timeout=10)
    assert resp.status_code == 202, resp.text
    op = resp.json()["operation"]
    done = target.get(f"{a.url}{op}/wait", params={"timeout": 60}, timeout=90).json()["metadata"]
    assert done["status"] == "Success", done
    assert "x1" in {c["name"] for c in json.loads(o.run("list", "ux-a:", "--format", "json").stdout)}
    # an unknown state is still refused (400, not stored)
    resp = target.patch(f"{a.url}/1.0", json={"config": {"orch.status": "sleeping"}}, timeout=10)
    assert resp.status_code == 400


def test_records_keyed_by_remote_name_are_adopted(aliased, orch_env, redis_server):
    """A cordon and the origins recorded by an older orch (keyed by remote name) survive the upgrade."""
    import redis

    a, _ = aliased
    o = orch_env
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    r.hset("orch:host:ux-a2", mapping={"status": "evacuated", "since": "2024-01-01T00:00:00Z"})
    r.hset("orch:origin:ux-a", "c9", json.dumps({"target": "ux-b", "was_running": False, "job": "j"}))
    assert _row(o, "ux-a")["status"] == "evacuated"
    fp = _fingerprint(a)
    assert not r.exists("orch:host:ux-a2") and not r.exists("orch:origin:ux-a")
    assert r.hget(f"orch:host:fp:{fp}", "status") == "evacuated"
    assert json.loads(r.hget(f"orch:origin:fp:{fp}", "c9"))["target"] == "ux-b"


def test_identity_of_an_https_remote_needs_no_network(aliased, orch_env):
    from orchestrator.clientconfig import ClientConfig
    from orchestrator.hostid import group, host_of, identify

    a, b = aliased
    config = ClientConfig(orch_env.config_home / "orch")
    assert host_of(config, "ux-a2").names == tuple(ALIASES)
    a.stop()
    assert identify(config, "ux-a") == identify(config, "ux-a2") == _fingerprint(a)
    assert identify(config, "ux-b") == _fingerprint(b)
    # with the agent down its unix name can't be identified, and `orch hosts` shows it on its own row
    rows = {tuple(h["names"]): h for h in _hosts(orch_env)}
    assert rows[("ux-a", "ux-a2")]["status"] == "offline" and rows[("admin-foo",)]["status"] == "offline"
    hosts = group({"x": "1" * 64, "y": "2" * 64, "z": "1" * 64})
    assert [h.names for h in hosts] == [("x", "z"), ("y",)]


def test_a_container_is_never_copied_onto_itself_under_another_name(aliased, orch_env, start_worker):
    """ux-a:c1 and ux-a2:c1 are one container: a refresh would overwrite it with itself, a move delete it."""
    a, _ = aliased
    o = orch_env
    start_worker("w1")
    marker = a.data_dir / "containers" / "c1" / "rootfs" / "root" / "marker"
    marker.write_text("still here")
    for args in (("copy", "ux-a:c1", "ux-a2:c1", "--refresh"), ("move", "ux-a:c1", "admin-foo:c1")):
        err = o.fails(*args)
        assert "same" in err, err
    assert marker.read_text() == "still here"
    assert "c1" in {c["name"] for c in json.loads(o.run("list", "ux-a2:", "--format", "json").stdout)}


def test_two_names_of_one_host_share_its_container_locks_and_a_move_between_them_renames(
    aliased, orch_env, start_worker
):
    a, _ = aliased
    o = orch_env
    big = a.data_dir / "containers" / "c1" / "rootfs" / "root" / "big"
    big.write_bytes(b"\0" * (64 << 20))
    first = o.run("copy", "ux-a:c1", "ux-b:", "--no-wait").stdout.strip()
    err = o.fails("copy", "ux-a2:c1", "ux-b:other")  # the same container, through its other name
    assert "is busy" in err and first in err and "ux-a2:c1" in err
    start_worker("w1")
    o.run("jobs", "show", first)  # (the first job runs on)
    o.run("move", "ux-a2:c2", "admin-foo:c3")
    record = json.loads(o.run("jobs", "--format", "json").stdout)[0]
    assert record["kind"] == "rename" and record["bytes_done"] == 0
    names = {c["name"] for c in json.loads(o.run("list", "ux-a:", "--format", "json").stdout)}
    assert "c3" in names and "c2" not in names
