"""Pure logic behind the LXD runtime: id-map translation, config translation, method choice, errors."""

from __future__ import annotations

import json

import pytest

from hostagent.lxd import idmap as lxd_idmap
from hostagent.lxd.client import classify
from hostagent.runtimes.config import import_config_native
from hostagent.runtimes.idmap import IdMap
from hostagent.transfer.registry import negotiate
from orchapi.errors import BadRequest, Conflict, InsufficientStorage, InternalError, NotFound
from orchestrator.evacuation.runner import evacuate_policy

LXD_DEFAULT = (
    '[{"Isuid":true,"Isgid":false,"Hostid":100000,"Nsid":0,"Maprange":10000001},'
    '{"Isuid":false,"Isgid":true,"Hostid":100000,"Nsid":0,"Maprange":10000001}]'
)


def test_lxd_idmap_round_trips_through_orchs_idmap():
    parsed = lxd_idmap.parse(LXD_DEFAULT, "c1")
    assert parsed == IdMap(100000, 10000001)
    assert json.loads(lxd_idmap.dump(parsed)) == json.loads(LXD_DEFAULT)
    assert lxd_idmap.parse("[]", "c1") is None and lxd_idmap.parse("", "c1") is None
    assert lxd_idmap.dump(None) == "[]"


def test_lxd_idmap_with_separate_gid_base():
    raw = json.dumps(
        [
            {"Isuid": True, "Isgid": False, "Hostid": 200000, "Nsid": 0, "Maprange": 65536},
            {"Isuid": False, "Isgid": True, "Hostid": 300000, "Nsid": 0, "Maprange": 65536},
        ]
    )
    parsed = lxd_idmap.parse(raw, "c1")
    assert parsed is not None and (parsed.host_base, parsed.gid_host_base, parsed.size) == (
        200000,
        300000,
        65536,
    )


@pytest.mark.parametrize(
    "raw",
    [
        # raw.idmap punches a host id into the container: two uid ranges
        '[{"Isuid":true,"Isgid":false,"Hostid":100000,"Nsid":0,"Maprange":1000},'
        '{"Isuid":true,"Isgid":false,"Hostid":1000,"Nsid":1000,"Maprange":1},'
        '{"Isuid":false,"Isgid":true,"Hostid":100000,"Nsid":0,"Maprange":65536}]',
        '[{"Isuid":true,"Isgid":true,"Hostid":100000,"Nsid":5,"Maprange":65536}]',
        "not json",
    ],
)
def test_lxd_idmaps_orch_cannot_carry_are_refused_with_the_way_out(raw):
    with pytest.raises(BadRequest) as exc:
        lxd_idmap.parse(raw, "c1")
    assert "c1" in str(exc.value)


def test_native_import_drops_lxd_bookkeeping_and_keeps_the_policy():
    config = {
        "image.os": "busybox",
        "volatile.uuid": "x",
        "user.owner": "alice",
        "user.orch.evacuate": "skip",
        "security.privileged": "true",
    }
    assert import_config_native(config) == {
        "user.owner": "alice",
        "evacuate": "skip",
        "security.privileged": "true",
    }
    assert import_config_native({"cluster.evacuate": "live-migrate"}) == {"evacuate": "migrate"}
    with pytest.raises(BadRequest) as exc:
        import_config_native({"limits.cpu": "2", "raw.lxc": "x", "user.a": "b"})
    assert "limits.cpu, raw.lxc" in str(exc.value)


def test_method_override_and_negotiation():
    lxd = ("btrfs", "rsync", "tar", "lxd-migration")
    assert negotiate(lxd, lxd) == "btrfs"
    assert negotiate(lxd, lxd, refresh=True) == "rsync"
    assert negotiate(lxd, lxd, wanted="lxd-migration") == "lxd-migration"
    assert negotiate(("lxd-migration",), lxd) == "lxd-migration"
    with pytest.raises(Conflict):
        negotiate(lxd, ("rsync", "tar"), wanted="lxd-migration")
    with pytest.raises(BadRequest):
        negotiate(lxd, lxd, refresh=True, wanted="btrfs")
    with pytest.raises(BadRequest):
        negotiate(lxd, lxd, wanted="scp")


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("Instance not found", NotFound),
        ('Failed creating instance record: Instance "c1" already exists', Conflict),
        ("The instance is already running", Conflict),
        ("Invalid config: Unknown configuration key: foo", BadRequest),
        ("write /x: no space left on device", InsufficientStorage),
        ("Failed to run: forkstart", InternalError),
    ],
)
def test_lxd_failure_messages_keep_their_meaning(message, cls):
    assert classify(message) is cls


def test_evacuate_policy_from_orch_or_lxd_keys():
    assert evacuate_policy({}) == "auto"
    assert evacuate_policy({"evacuate": "skip", "cluster.evacuate": "stop"}) == "skip"
    assert evacuate_policy({"user.orch.evacuate": "stop"}) == "stop"
    assert evacuate_policy({"cluster.evacuate": "live-migrate"}) == "migrate"


def test_lxd_migration_prefers_the_source_lxd_address_on_the_source_agents_host(tmp_path):
    from hostagent.transfer.lxd_migration import parse_offer
    from orchapi import certs

    certs.generate(tmp_path / "c.crt", tmp_path / "c.key", "lxd@test")
    pem = (tmp_path / "c.crt").read_text()
    offer = {
        "operation": "https://172.17.0.1:8443/1.0/operations/abc",
        "addresses": ["172.17.0.1:8443", "10.0.0.5:8443", "[fd42::1]:8443"],
        "secrets": {"control": "x", "fs": "y"},
        "certificate": pem,
    }
    assert parse_offer(offer, "10.0.0.5")["operation"] == "https://10.0.0.5:8443/1.0/operations/abc"
    assert parse_offer(offer, "fd42::1")["operation"] == "https://[fd42::1]:8443/1.0/operations/abc"
    assert parse_offer(offer, "192.168.1.1")["operation"] == offer["operation"]  # none matches: LXD's first
    with pytest.raises(BadRequest):
        parse_offer({**offer, "operation": "http://10.0.0.5:8443/1.0/operations/abc"})
    with pytest.raises(BadRequest):
        parse_offer({**offer, "certificate": "not a certificate"})
