"""The typed migration messages (hostagent/migration/messages.py): the wire format is the protocol's, byte
for byte, and a peer's malformed message is refused as its fault (4xx/502), never an internal error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hostagent.migration.messages import Accept, DeclaredVolume, Header, VolumeEnd
from hostagent.migration.protocol import PROTOCOL_VERSION, ProtocolError
from orchapi.errors import BadRequest
from tests.hostile_peer import header as peer_header

FP = "ab" * 32


def a_header() -> Header:
    return Header(
        container={
            "created_at": "2026-01-01T00:00:00Z",
            "base_image": FP,
            "architecture": "x86_64",
            "config": {"user.a": "b"},
            "init": "/sbin/init",
        },
        snapshots=[{"name": "s0", "created_at": "2026-01-01T00:00:01Z"}],
        volumes=[DeclaredVolume("s0", 10, 2), DeclaredVolume(None, 20, 3)],
        methods=["btrfs", "rsync", "tar"],
        base_image=FP,
        idmap={"host_base": 100000, "size": 65536, "gid_base": 100000},
        size=30,
        features=frozenset({"xattrs", "acls"}),
        layout="rootfs",
        instance=None,
        methods_reason="",
        link_port=8444,
        name="c1",
        storage="btrfs",
    )


def test_the_header_is_what_the_source_always_sent():
    # the source's ch.send("header", ...) before messages.py existed, keyword for keyword
    before = {
        "type": "header",
        "protocol": PROTOCOL_VERSION,
        "container": {
            "name": "c1",
            "created_at": "2026-01-01T00:00:00Z",
            "base_image": FP,
            "architecture": "x86_64",
            "config": {"user.a": "b"},
            "init": "/sbin/init",
        },
        "snapshots": [{"name": "s0", "created_at": "2026-01-01T00:00:01Z"}],
        "volumes": [
            {"snapshot": "s0", "size": 10, "entries": 2},
            {"snapshot": None, "size": 20, "entries": 3},
        ],
        "methods": ["btrfs", "rsync", "tar"],
        "methods_reason": "",
        "storage": "btrfs",
        "base_image": FP,
        "idmap": {"host_base": 100000, "size": 65536, "gid_base": 100000},
        "layout": "rootfs",
        "instance": None,
        "size": 30,
        "features": ["acls", "xattrs"],
        "link": {"port": 8444},
    }
    assert json.dumps(a_header().to_message()) == json.dumps(before)
    no_link = a_header()
    no_link.link_port = None
    assert no_link.to_message()["link"] is None


def test_the_header_reads_back_as_it_was_written():
    sent = a_header()
    assert Header.from_message(sent.to_message()) == sent
    # a hostile peer's plausible header parses; the container record keeps the target's shape
    got = Header.from_message(peer_header([{"snapshot": None, "size": 5, "entries": 1}]))
    assert set(got.container) == {"created_at", "architecture", "init", "base_image", "config"}
    assert got.volumes == [(None, 5, 1)] and got.size == 5 and got.link_port is None


@pytest.mark.parametrize(
    "over",
    [
        {"protocol": PROTOCOL_VERSION - 1},
        {"container": []},
        {"base_image": "not-a-fingerprint"},
        {"volumes": [{"snapshot": None, "size": -1, "entries": 1}]},
        {"volumes": [{"snapshot": "ghost", "size": 1, "entries": 1}]},
        {"methods": "rsync"},
        {"idmap": [1, 2]},
        {"idmap": {"host_base": -5, "size": 10}},
        {"features": 5},
        {"layout": 3},
        {"instance": "lxd"},
        {"link": {"port": 0}},
        {"snapshots": [{"name": "../x", "created_at": "t"}]},
    ],
)
def test_a_malformed_header_is_the_peers_fault(over: dict[str, Any]):
    msg = {**peer_header([{"snapshot": None, "size": 5, "entries": 1}]), **over}
    with pytest.raises(BadRequest):
        Header.from_message(msg)


def test_accept_and_volume_end_on_the_wire():
    lxd = Accept("lxd-migration")
    assert json.dumps(lxd.to_message()) == json.dumps(
        {"type": "accept", "method": "lxd-migration", "skip": [], "features": []}
    )
    streaming = Accept("rsync", ["s0"], frozenset({"xattrs", "acls"}), devices=False, link=True)
    assert json.dumps(streaming.to_message()) == json.dumps(
        {
            "type": "accept",
            "method": "rsync",
            "skip": ["s0"],
            "features": ["acls", "xattrs"],
            "devices": False,
            "link": True,
        }
    )
    assert Accept.from_message(streaming.to_message()) == streaming
    assert Accept.from_message(lxd.to_message()) == Accept("lxd-migration", devices=False, link=False)
    end = VolumeEnd(2, "0" * 64, 7)
    assert json.dumps(end.to_message()) == json.dumps(
        {"type": "volume-end", "index": 2, "digest": "0" * 64, "count": 7}
    )
    assert VolumeEnd.from_message(end.to_message(), 2) == end


def test_malformed_accept_and_volume_end_are_the_peers_fault():
    with pytest.raises(BadRequest):
        Accept.from_message({"type": "accept"})
    for skip in ("s0", [{"a": 1}], [1]):
        with pytest.raises(ProtocolError, match="skips unknown snapshots"):
            Accept.from_message({"type": "accept", "method": "rsync", "skip": skip})
    with pytest.raises(BadRequest):
        Accept.from_message({"type": "accept", "method": "rsync", "features": {"x": 1}})
    with pytest.raises(ProtocolError, match="another volume"):
        VolumeEnd.from_message({"type": "volume-end", "index": 1, "digest": "0", "count": 0}, 0)
    with pytest.raises(BadRequest):
        VolumeEnd.from_message({"type": "volume-end", "index": 0, "digest": 5, "count": 0}, 0)
    with pytest.raises(BadRequest):
        VolumeEnd.from_message({"type": "volume-end", "index": 0, "digest": "0", "count": True}, 0)
