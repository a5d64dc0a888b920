"""Pure logic of what a migration target accepts: the elevated-request rules and the btrfs stream guard.

The end-to-end attacks are in tests/test_hostile_source.py; these pin the rules down case by case.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from hostagent.migration import policy
from hostagent.transfer.btrfs_stream import MAGIC, SendStreamGuard
from orchapi.errors import BadRequest, Forbidden

UNPRIV = {"host_base": 100000, "size": 65536, "gid_base": 100000}
NONE = policy.Grants(False)


@pytest.mark.parametrize(
    ("config", "elevated"),
    [
        ({"security.privileged": "true"}, True),
        ({"security.privileged": "false"}, False),
        ({"security.nesting": "1"}, True),
        ({"raw.apparmor": "x"}, True),
        ({"security.idmap.isolated": "true"}, True),
        ({"linux.kernel_modules": "ip_tables"}, True),
        ({"linux.kernel_modules": ""}, False),
        ({"security.syscalls.intercept.mknod": "true"}, True),
        ({"security.syscalls.deny_default": "false"}, True),
        ({"nvidia.runtime": "true"}, True),
        ({"limits.memory": "1GB", "user.x": "y", "boot.autostart": "true", "evacuate": "skip"}, False),
    ],
)
def test_elevated_config(config, elevated):
    assert bool(policy.elevated_config(config)) is elevated


@pytest.mark.parametrize(
    ("devices", "elevated"),
    [
        ({"root": {"type": "disk", "path": "/", "pool": "default"}}, False),
        ({"eth0": {"type": "nic", "nictype": "bridged", "parent": "br0"}}, False),
        ({"eth0": {"type": "nic", "network": "lxdbr0"}}, False),
        ({"eth0": {"type": "nic", "nictype": "physical", "parent": "eth1"}}, True),
        ({"x": {"type": "none"}}, False),
        ({"d": {"type": "disk", "source": "/srv", "path": "/srv"}}, True),
        ({"r": {"type": "disk", "path": "/", "source": "/"}}, True),
        ({"u": {"type": "unix-block", "path": "/dev/sda"}}, True),
        ({"g": {"type": "gpu"}}, True),
        ({"p": {"type": "proxy", "listen": "tcp:0.0.0.0:80"}}, True),
        ({"bad": "not a mapping"}, True),
        ("not a mapping", True),
    ],
)
def test_elevated_devices(devices, elevated):
    assert bool(policy.elevated_devices(devices)) is elevated


def test_a_request_is_refused_naming_every_item_unless_granted():
    config = {"security.privileged": "true", "raw.lxc": "x"}
    instance = {"devices": {"m": {"type": "unix-char", "path": "/dev/mem"}}}
    with pytest.raises(Forbidden) as caught:
        policy.check_request(config, instance, None, NONE)
    text = str(caught.value)
    for item in ("security.privileged=true", "raw.lxc=x", "device m (unix-char)", "--allow-privileged"):
        assert item in text
    assert policy.check_request(config, instance, None, policy.Grants(True, "the job")) is True
    assert policy.check_request({}, None, UNPRIV, NONE) is False
    assert policy.check_request({}, None, None, NONE) is False  # raw ids of a never-started LXD container


def test_grants_come_from_the_job_or_the_host():
    assert policy.Grants.for_job(True, {}).elevated
    assert policy.Grants.for_job(False, {policy.ALLOW_KEY: "true"}).elevated
    assert not policy.Grants.for_job(False, {policy.ALLOW_KEY: "false"}).elevated
    assert not policy.Grants.for_job(False, {}).elevated


@pytest.mark.parametrize(
    ("idmap", "config", "match"),
    [
        ({"host_base": 0, "size": 65536}, {}, "host's own ids"),
        ({"host_base": 100000, "size": 65536, "gid_base": 5}, {}, "host's own ids"),
        (UNPRIV, {"security.privileged": "true"}, "an id map for a privileged container"),
    ],
)
def test_id_maps_that_make_files_the_hosts_are_refused(idmap, config, match):
    with pytest.raises(BadRequest, match=match):
        policy.check_request(config, None, idmap, policy.Grants(True))


def test_volume_rules():
    rules = policy.VolumeRules(policy.volume_idmap(UNPRIV, False), 10 * 4096, 10)
    assert rules.allowance == 10 * 4096 + 10 * policy.ENTRY_MARGIN + policy.VOLUME_MARGIN
    assert rules.cap_rootid == 100000 and rules.uid_range() == range(100000, 165536)
    raw = policy.VolumeRules(policy.volume_idmap(None, False), 0, 0)
    assert raw.cap_rootid == 0 and raw.uid_range() == range(0, 65536) and not raw.privileged
    assert policy.VolumeRules(policy.volume_idmap(None, True), 0, 0).privileged


# ------------------------------------------------------------------------------- btrfs guard


class Collect:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    async def write(self, data: bytes) -> None:
        self.data += data

    async def close(self) -> None:
        self.closed = True


def command(cmd: int, *attrs: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in attrs)
    return struct.pack("<IHI", len(body), cmd, 0) + body


STREAM_HEADER = MAGIC + struct.pack("<I", 1)
SUBVOL = command(1, (15, b"rootfs"), (1, bytes(16)), (2, bytes(8)))
END = command(21)


def feed(guard: SendStreamGuard, data: bytes, chunk: int = 7) -> None:
    async def go() -> None:
        for i in range(0, len(data), chunk):
            await guard.write(data[i : i + chunk])

    asyncio.run(go())


def unprivileged_guard(sink: Collect) -> SendStreamGuard:
    return SendStreamGuard(sink, "rootfs", range(100000, 165536), range(100000, 165536), 100000)


def test_the_guard_forwards_whole_inspected_commands_only():
    sink = Collect()
    guard = unprivileged_guard(sink)
    chown = command(19, (15, b"f"), (6, struct.pack("<Q", 100000)), (7, struct.pack("<Q", 100000)))
    write = command(15, (15, b"f"), (18, struct.pack("<Q", 0)), (19, b"x" * 1000))
    stream = STREAM_HEADER + SUBVOL + write + chown + END
    feed(guard, stream[:-3])
    assert sink.data == STREAM_HEADER + SUBVOL + write + chown  # END not whole yet: held back
    feed(guard, stream[-3:])
    assert sink.data == stream
    guard.finish()


MKNOD = command(5, (15, b"dev"), (5, struct.pack("<Q", 0o20666)), (8, struct.pack("<Q", 0x101)))
ROOT_CHOWN = command(19, (15, b"f"), (6, struct.pack("<Q", 0)), (7, struct.pack("<Q", 0)))
HOST_CAP = command(13, (15, b"f"), (13, b"security.capability"), (14, b"\x01\x00\x00\x02" + bytes(16)))


@pytest.mark.parametrize(
    ("commands", "match"),
    [
        ([SUBVOL, MKNOD], "device node"),
        ([SUBVOL, ROOT_CHOWN], "owned by 0:0, outside"),
        ([SUBVOL, HOST_CAP], r"host-level \(v2\)"),
        ([command(3, (15, b"f"))], "first command does not create the subvolume"),
        ([SUBVOL, SUBVOL], "more than one subvolume"),
        ([command(1, (15, b"other"))], "not named 'rootfs'"),
        ([SUBVOL, END, SUBVOL], "after its END"),
        ([SUBVOL, command(99)], "unknown command"),
        ([SUBVOL, struct.pack("<IHI", 1 << 24, 15, 0)], "larger than any"),
    ],
)
def test_the_guard_refuses(commands, match):
    sink = Collect()
    with pytest.raises(BadRequest, match=match):
        feed(unprivileged_guard(sink), STREAM_HEADER + b"".join(commands), chunk=4096)
    for refused in (MKNOD, ROOT_CHOWN, HOST_CAP):  # never forwarded to btrfs receive
        assert refused not in sink.data


def test_the_guard_refuses_other_stream_versions_and_lets_privileged_streams_be():
    with pytest.raises(BadRequest, match="version 2"):
        feed(SendStreamGuard(Collect(), "rootfs"), MAGIC + struct.pack("<I", 2))
    with pytest.raises(BadRequest, match="header"):
        feed(SendStreamGuard(Collect(), "rootfs"), b"not a btrfs stream at all")
    sink = Collect()
    feed(SendStreamGuard(sink, "rootfs"), STREAM_HEADER + SUBVOL + MKNOD + END)
    assert sink.data.endswith(END)
    truncated = SendStreamGuard(Collect(), "rootfs")
    feed(truncated, STREAM_HEADER + SUBVOL)
    with pytest.raises(BadRequest, match="without END"):
        truncated.finish()
