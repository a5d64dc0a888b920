"""The LXD lab shared by the LXD test modules: two real LXD daemons (Debian's lxd 5.0), started once per
session when a test asks for them, and the helpers that look at them with the ``lxc`` CLI itself.

Each daemon has its own LXD_DIR, a preseed with ``networks: []``, a ``dir`` pool (the default profile's)
and a ``btrfs`` pool on a loop-mounted file, and an HTTPS port on 127.0.0.1 (see bench/lxd.py, shared
with the benchmark). The orch agents run ``--runtime lxd`` on their unix sockets.
"""

from __future__ import annotations

import json

from bench.lxd import LxdLab


def lxd_agent(make_agent, lab: LxdLab, remote: str, name: str, pool: str | None = None):  # type: ignore[no-untyped-def]
    args = ["--runtime", "lxd", "--lxd-socket", str(lab.daemons[remote].dir / "unix.socket")]
    if pool:
        args += ["--lxd-pool", pool]
    return make_agent(name, args=tuple(args))


def lxc_json(lab: LxdLab, *args: str) -> object:
    return json.loads(lab.lxc(*args, "--format", "json"))


def instance(lab: LxdLab, remote: str, name: str) -> dict:
    return json.loads(lab.lxc("query", f"{remote}:/1.0/instances/{name}?recursion=1"))


def snapshot_names(lab: LxdLab, remote: str, name: str) -> list[str]:
    snaps = json.loads(lab.lxc("query", f"{remote}:/1.0/instances/{name}/snapshots?recursion=1"))
    return [s["name"] for s in sorted(snaps, key=lambda s: s["created_at"])]


def in_container(lab: LxdLab, remote: str, name: str, script: str) -> str:
    return lab.lxc("exec", f"{remote}:{name}", "--", "sh", "-c", script)


def make_with_snapshots(lab: LxdLab, remote: str = "a", name: str = "c1") -> None:
    """A container with two snapshots, each holding different files, made with lxc itself."""
    lab.lxc("launch", f"{remote}:bb", f"{remote}:{name}", "-q")
    in_container(lab, remote, name, "echo one > /root/a")
    lab.lxc("snapshot", f"{remote}:{name}", "s1")
    in_container(lab, remote, name, "echo two > /root/b; rm /root/a")
    lab.lxc("snapshot", f"{remote}:{name}", "s2")
    in_container(lab, remote, name, "echo three > /root/c")
    lab.lxc("stop", f"{remote}:{name}")


def check_snapshot_content(lab: LxdLab, remote: str, name: str) -> None:
    """Restore each snapshot into a copy and look inside: the files each one had, and only those."""
    lab.lxc("copy", f"{remote}:{name}/s1", f"{remote}:{name}-s1")
    lab.lxc("start", f"{remote}:{name}-s1")
    assert in_container(lab, remote, f"{name}-s1", "cat /root/a; ls /root") == "one\na\n"
    lab.lxc("delete", "--force", f"{remote}:{name}-s1")


def last_job(orch) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(orch.run("jobs", "--format", "json").stdout)[0]
