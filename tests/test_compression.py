"""Compression of the migration streams with real agents, a real worker and every method: a compressible
64 MiB file travels as far fewer wire bytes, verified; ``auto`` compresses under a bandwidth limit only;
an agent without zstd gets the transfer uncompressed. Wire bytes are the agents' own count of what came
over the websocket or data link; the test also checks the copy's content itself."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from hostagent.migration.messages import Accept
from hostagent.migration.protocol import ProtocolError
from hostagent.transfer import compression
from orchapi.errors import BadRequest
from tests.test_bwlimit import cluster

MIB = 1024 * 1024


def _compressible(agent, name: str, mib: int) -> str:  # type: ignore[no-untyped-def]
    """A file of ``mib`` MiB of text-like data (about a quarter of it after zstd -3); its SHA-256."""
    blob = agent.data_dir / "containers" / name / "rootfs" / "root" / "log"
    words = [os.urandom(3).hex().encode() for _ in range(4096)]
    line = b" ".join(words[i % 4096] for i in range(0, 40))
    with blob.open("wb") as fh:
        for i in range(mib * MIB // 4096):
            fh.write((b"%08d " % i + line * 100)[:4095] + b"\n")
    owner = blob.parent.stat()
    os.chown(blob, owner.st_uid, owner.st_gid)
    return hashlib.sha256(blob.read_bytes()).hexdigest()


def _job(orch_env) -> dict:  # type: ignore[no-untyped-def]
    job_id = json.loads(orch_env.run("jobs", "--format", "json").stdout)[0]["id"]
    return json.loads(orch_env.run("jobs", "show", job_id, "--format", "json").stdout)


def _copied(bar, name: str) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(
        (bar.data_dir / "containers" / name / "rootfs" / "root" / "log").read_bytes()
    ).hexdigest()


@pytest.mark.parametrize(
    ("method", "fs", "env"),
    [
        ("rsync", "dir", None),
        ("tar", "dir", None),  # over the data link
        ("tar", "dir", {"ORCH_AGENT_DATA_LINK": "off"}),  # over the websocket
        ("btrfs", "btrfs", None),
        ("btrfs", "btrfs", {"ORCH_AGENT_DATA_LINK": "off"}),
    ],
    ids=["rsync", "tar-link", "tar-ws", "btrfs-link", "btrfs-ws"],
)
def test_zstd_makes_the_wire_bytes_a_fraction_of_the_payload(agents, orch_env, busybox_image, tmpdir755,
                                                            start_worker, method, fs, env):  # fmt: skip
    foo, bar = cluster(agents, orch_env, busybox_image, tmpdir755, fs, env)
    start_worker("w1")
    orch_env.run("init", "foo:bb", "foo:c1")
    digest = _compressible(foo, "c1", 64)
    orch_env.run("copy", "foo:c1", "bar:c1", "--method", method, "--compress", "zstd")
    job = _job(orch_env)
    assert job["status"] == "succeeded" and job["method"] == method and job["compression"] == "zstd"
    print(method, env, {k: job[k] for k in ("wire_bytes", "payload_bytes", "throttled_seconds")})
    assert job["wire_bytes"] < 32 * MIB, job
    if method != "rsync":  # rsync decompresses inside itself: no payload count
        assert job["payload_bytes"] > 64 * MIB > 2 * job["wire_bytes"], job
    assert _copied(bar, "c1") == digest
    shown = orch_env.run("jobs", "show", job["id"]).stdout
    assert "Compression: zstd" in shown and "Wire bytes: " in shown


def test_auto_compresses_only_under_a_bandwidth_limit(
    agents, orch_env, busybox_image, tmpdir755, start_worker
):
    foo, bar = cluster(agents, orch_env, busybox_image, tmpdir755)
    start_worker("w1")
    orch_env.run("init", "foo:bb", "foo:c1")
    digest = _compressible(foo, "c1", 8)
    orch_env.run("copy", "foo:c1", "bar:c1", "--method", "tar")
    plain = _job(orch_env)
    assert plain["compression"] == "none" and plain["wire_bytes"] > 8 * MIB
    orch_env.run("copy", "foo:c1", "bar:c2", "--method", "tar", "--bwlimit", "64MiB")
    limited = _job(orch_env)
    assert limited["compression"] == "zstd" and limited["wire_bytes"] < 4 * MIB
    assert _copied(bar, "c2") == digest
    orch_env.run("copy", "foo:c1", "bar:c3", "--method", "tar", "--bwlimit", "64MiB", "--compress", "none")
    assert _job(orch_env)["compression"] == "none"


def _path_without_zstd(tmp: Path) -> str:
    """A PATH with every command of this host but zstd's (symlinks)."""
    bin_dir = tmp / "no-zstd-bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(directory):
            continue
        for entry in os.listdir(directory):
            if "zstd" in entry or (bin_dir / entry).exists():
                continue
            (bin_dir / entry).symlink_to(os.path.join(directory, entry))
    return str(bin_dir)


@pytest.mark.parametrize("method", ["tar", "rsync"])
def test_an_agent_without_zstd_gets_the_transfer_uncompressed(agents, orch_env, busybox_image, tmpdir755,
                                                             start_worker, method):  # fmt: skip
    no_zstd = {"PATH": _path_without_zstd(tmpdir755)}
    foo, bar = cluster(agents, orch_env, busybox_image, tmpdir755, bar_env=no_zstd)
    start_worker("w1")
    orch_env.run("init", "foo:bb", "foo:c1")
    digest = _compressible(foo, "c1", 8)
    orch_env.run("copy", "foo:c1", "bar:c1", "--method", method, "--compress", "zstd")
    job = _job(orch_env)
    assert job["status"] == "succeeded" and job["compression"] == "none"
    assert _copied(bar, "c1") == digest


def test_compression_is_chosen_from_the_wish_the_features_and_the_limit():
    both = frozenset({"zstd", "xattrs"})
    assert compression.choose("auto", both, limited=False) == ""
    assert compression.choose("auto", both, limited=True) == "zstd"
    assert compression.choose("zstd", both, limited=False) == "zstd"
    assert compression.choose("zstd", frozenset({"xattrs"}), limited=True) == ""
    assert compression.choose("none", both, limited=True) == ""
    assert compression.check_wish(None) == "auto"
    with pytest.raises(BadRequest, match="unknown compression"):
        compression.check_wish("gzip")
    accepted = Accept.from_message(Accept("tar", compression="zstd").to_message())
    assert accepted.compression == "zstd"
    assert Accept.from_message(Accept("tar").to_message()).compression == ""
    with pytest.raises(ProtocolError, match="unknown compression"):
        Accept.from_message({"type": "accept", "method": "tar", "compression": "lz4"})
