"""The deployment files against the code: Dockerfile, docker-compose.yml, deploy/orch-agent.service.

No Docker engine is needed: every command the files run is resolved to a real console script of this
project and its arguments are parsed by the real parser (argparse for ``orch-agent``, click for ``orch``),
build targets must exist in the Dockerfile, volumes, ports and dependencies must be consistent.
``docker compose config`` and ``systemd-analyze verify`` are run when installed.
"""

from __future__ import annotations

import asyncio
import configparser
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from hostagent.main import build_parser
from orchestrator.cli.main import cli
from orchestrator.clientconfig import DEFAULT_SOCKET

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
UNIT_FILE = REPO / "deploy" / "orch-agent.service"
DEPLOY_DOC = REPO / "deploy" / "DEPLOY.md"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]

AGENTS = ("agent1", "agent2")
SERVICES = {"redis", "worker", "flower", *AGENTS}
#: variables docker-compose.yml takes from the environment (or .env); each must be documented
COMPOSE_VARIABLES = {"FLOWER_BASIC_AUTH"}
#: Debian package of each tool the agent shells out to
TOOL_PACKAGES = {"runc": "runc", "rsync": "rsync", "tar": "tar", "btrfs": "btrfs-progs", "cp": "coreutils"}
#: in the slim base image already (Essential: yes in Debian)
BASE_PACKAGES = {"coreutils", "tar", "util-linux"}


# -- Dockerfile --------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]
    heredocs: dict[str, str]  # destination path -> content of `COPY <<EOF dest`

    def chain(self, name: str) -> list[Stage]:
        """``name`` and the stages it is built FROM, nearest first."""
        out = []
        while name in self.stages:
            out.append(self.stages[name])
            name = self.stages[name].base
        return out

    def instructions(self, name: str, keyword: str) -> list[str]:
        """Arguments of every ``keyword`` instruction in ``name``'s chain, base stages first."""
        return [arg for st in reversed(self.chain(name)) for kw, arg in st.instructions if kw == keyword]

    def last(self, name: str, keyword: str) -> str | None:
        found = self.instructions(name, keyword)
        return found[-1] if found else None

    def env(self, name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for arg in self.instructions(name, "ENV"):
            for token in shlex.split(arg):
                key, _, value = token.partition("=")
                env[key] = value
        return env


def parse_dockerfile(path: Path) -> Dockerfile:
    lines = path.read_text().splitlines()
    logical: list[str] = []
    heredocs: dict[str, str] = {}
    i, buf = 0, ""
    while i < len(lines):
        line = lines[i]
        i += 1
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instruction = buf + line
        buf = ""
        logical.append(instruction)
        heredoc = re.search(r"<<-?(['\"]?)(\w+)\1\s+(\S+)\s*$", instruction)
        if heredoc:
            end, dest = heredoc.group(2), heredoc.group(3)
            body = []
            while lines[i] != end:
                body.append(lines[i])
                i += 1
            i += 1
            heredocs[dest] = "\n".join(body) + "\n"
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction in logical:
        keyword, _, rest = instruction.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"unparsable FROM: {instruction}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda v: args[v.group(1) or v.group(2)], m.group(1))
            assert m.group(2), f"every stage needs a name: {instruction}"
            current = stages[m.group(2)] = Stage(m.group(2), base)
        elif keyword == "ARG" and current is None:
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            assert current is not None, f"{keyword} before the first FROM"
            current.instructions.append((keyword, rest))
    return Dockerfile(args, stages, heredocs)


def dockerfile_for(service: dict[str, Any]) -> tuple[Path, str]:
    build = service["build"]
    context = REPO / build.get("context", ".")
    return context / build.get("dockerfile", "Dockerfile"), build["target"]


# -- commands: each executable resolved to a real entry point, arguments parsed by the real parser ------


def parse_orch(argv: list[str]) -> click.Context:
    """The click context ``orch ARGV...`` would run with (subcommands resolved), without invoking it."""
    assert "orch" in SCRIPTS
    command: click.Command = cli
    name, args = "orch", list(argv)
    parent: click.Context | None = None
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        parent = click.Context(command, info_name=name, parent=parent)
        name, args = args[0], args[1:]
        sub = command.get_command(parent, name)
        assert sub is not None, f"`orch {shlex.join(argv)}`: no command {name!r}"
        command = sub
    try:
        return command.make_context(name, args, parent=parent)
    except click.ClickException as exc:
        pytest.fail(f"`orch {shlex.join(argv)}` is refused: {exc.format_message()}")


def parse_agent(argv: list[str]):  # type: ignore[no-untyped-def]
    assert "orch-agent" in SCRIPTS
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"orch-agent refuses {argv}")


def celery_app(spec: str):  # type: ignore[no-untyped-def]
    """The Celery app ``--app module:attr`` names (ORCH_REDIS_URL is set: no embedded Redis starts)."""
    from celery import Celery

    module, _, attr = spec.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")
    assert isinstance(app, Celery)
    return app


def check_command(argv: list[str]) -> None:
    """``argv`` runs a console script this project installs, with arguments its parser accepts."""
    exe, args = argv[0], argv[1:]
    if exe == "orch-agent":
        parse_agent(args)
    elif exe == "orch":
        ctx = parse_orch(args)
        for name in ("celery_args", "flower_args"):  # pass-through args would swallow a misspelt flag
            assert not ctx.params.get(name), f"`{shlex.join(argv)}` passes {ctx.params[name]} through"
    elif exe == "celery":
        scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
        assert "celery" in scripts
        app_index = next(i for i, a in enumerate(args) if a in ("--app", "-A"))
        celery_app(args[app_index + 1])
        from celery.bin.celery import celery as celery_main

        sub = args[app_index + 2]
        assert sub in celery_main.commands, f"celery has no {sub!r} command"
        try:
            celery_main.commands[sub].make_context(sub, args[app_index + 3 :])
        except click.ClickException as exc:
            pytest.fail(f"`{shlex.join(argv)}` is refused: {exc.format_message()}")
    else:
        pytest.fail(f"{exe} is no entry point of this project: {argv}")


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a one-line ``CMD-SHELL`` healthcheck (split at ``&&``, ``||``, ``|``)."""
    commands = []
    for part in re.split(r"&&|\|\||\|", script):
        tokens = [t for t in shlex.split(part) if not re.match(r"^\d?>", t)]
        if tokens:
            commands.append(tokens)
    return commands


def own_commands(argv: list[str]) -> bool:
    return argv[0] in ("orch", "orch-agent", "celery")


# -- compose -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _no_embedded_redis():
    """The Celery app is configured at import from ORCH_REDIS_URL (it connects, and starts nothing, at
    import: test_stepping_units checks that), so an unreachable URL is fine. Modules first imported here
    (with that URL) are dropped afterwards, so a later in-process import gets a properly configured app."""
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORCH_REDIS_URL", "redis://127.0.0.1:1/0")
        yield
    for name in set(sys.modules) - before:
        if name.startswith(("orchestrator.celeryapp", "orchestrator.tasks", "orchestrator.workers")):
            del sys.modules[name]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # safe_load resolves anchors and << merges


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile(services: dict[str, dict[str, Any]]) -> Dockerfile:
    paths = {dockerfile_for(s)[0] for s in services.values() if "build" in s}
    assert len(paths) == 1, paths
    return parse_dockerfile(paths.pop())


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in strings(key) + strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def named_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume (bind mounts, ``./x`` or ``/x``, left out)."""
    mounts = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume":
                mounts[entry["target"]] = entry["source"]
            continue
        source, _, rest = entry.partition(":")
        if source.startswith((".", "/", "~", "$")):
            continue
        mounts[rest.split(":")[0]] = source
    return mounts


def agent_args(service: dict[str, Any]):  # type: ignore[no-untyped-def]
    command = service["command"]
    assert command[0] == "orch-agent"
    return parse_agent(command[1:])


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert SERVICES <= set(services), SERVICES - set(services)


def test_images_and_build_targets(services: dict[str, dict[str, Any]], dockerfile: Dockerfile) -> None:
    assert services["redis"]["image"].split(":")[0] == "redis"
    assert services["redis"]["image"].split(":")[1].startswith("7")
    want = {"worker": "orch", "flower": "orch", "agent1": "agent", "agent2": "agent"}
    for name, target in want.items():
        path, got = dockerfile_for(services[name])
        assert path.is_file(), path
        assert got == target, f"{name} builds {got}"
        assert got in dockerfile.stages, f"{name}: no stage {got} in {path}"


def test_dockerfile_stages(dockerfile: Dockerfile) -> None:
    assert dockerfile.args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    names = list(dockerfile.stages)
    for i, stage in enumerate(dockerfile.stages.values()):
        # a base is an earlier stage or the Python image
        assert stage.base in names[:i] or stage.base == "python:3.11-slim-bookworm", stage
        for _, arg in stage.instructions:
            for ref in re.findall(r"from=([\w.-]+)", arg):
                assert ref in names[:i], f"stage {stage.name} uses {ref}, not an earlier stage"


def test_images_install_this_project(dockerfile: Dockerfile) -> None:
    """The package dirs pyproject includes (and its readme) reach the build; both targets install it."""
    copied = " ".join(dockerfile.instructions("wheels", "COPY"))
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.name for p in REPO.iterdir() if (p / "__init__.py").exists()]
    wanted = [p for p in packages if any(re.fullmatch(pat.replace("*", ".*"), p) for pat in include)]
    assert wanted, include
    for needed in ["pyproject.toml", PYPROJECT["project"]["readme"], *wanted]:
        assert re.search(rf"(^|\s){re.escape(needed)}/?(\s|$)", copied), f"{needed} is not copied"
    assert any(re.search(r"pip wheel .* \.(\s|$)", run) for run in dockerfile.instructions("wheels", "RUN"))
    for target in ("agent", "orch"):
        runs = dockerfile.instructions(target, "RUN")
        assert any(re.search(rf"pip install .*\s{PYPROJECT['project']['name']}(\s|$)", r) for r in runs)


def test_agent_image_has_the_tools_the_agent_runs(dockerfile: Dockerfile) -> None:
    from hostagent.transfer.registry import TOOLS

    installed = set(BASE_PACKAGES)
    for run in dockerfile.instructions("agent", "RUN"):
        if "apt-get install" in run:
            installed |= set(run.split("apt-get install", 1)[1].split("&&")[0].split())
    tools = {"runc", "cp", *TOOLS.values()}  # runc runs containers, cp -a clones rootfs trees
    for tool in tools:
        assert tool in TOOL_PACKAGES, f"which Debian package has {tool}? (add it to TOOL_PACKAGES)"
        assert TOOL_PACKAGES[tool] in installed, f"the agent image lacks {tool} ({TOOL_PACKAGES[tool]})"
    assert "busybox-static" in installed  # build-busybox-image's test image
    assert "tini" in installed  # PID 1: reaps the containers' orphaned inits


def test_users(dockerfile: Dockerfile) -> None:
    assert dockerfile.last("agent", "USER") in (None, "root", "0"), "the agent must run as root"
    user = dockerfile.last("orch", "USER")
    assert user not in (None, "root", "0"), "the orch image should not run as root"
    assert any(re.search(rf"useradd .*\s{user}(\s|$)", r) for r in dockerfile.instructions("orch", "RUN"))


def test_default_commands(dockerfile: Dockerfile) -> None:
    for target in ("agent", "orch"):
        entrypoint = json.loads(dockerfile.last(target, "ENTRYPOINT") or "[]")
        cmd = json.loads(dockerfile.last(target, "CMD"))
        assert entrypoint[:2] == ["tini", "--"], entrypoint
        check_command(cmd)
    assert listens_on_ipv4(parse_agent(json.loads(dockerfile.last("agent", "CMD"))[1:]).listen)
    assert json.loads(dockerfile.last("orch", "CMD"))[:2] == ["orch", "worker"]


def test_agent_entrypoint_script(dockerfile: Dockerfile) -> None:
    entrypoint = json.loads(dockerfile.last("agent", "ENTRYPOINT"))
    script = dockerfile.heredocs[f"/usr/local/bin/{entrypoint[2]}"]
    assert script.startswith("#!/bin/sh\n")
    assert script.rstrip().endswith('exec "$@"')
    # it moves processes between cgroups only in a private cgroup namespace (never the host's)
    assert '"$(cat /proc/self/cgroup)" = "0::/"' in script
    sh = shutil.which("sh")
    assert sh
    checked = subprocess.run([sh, "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


def test_commands_are_real_entry_points(services: dict[str, dict[str, Any]]) -> None:
    for name in SERVICES - {"redis"}:
        check_command(services[name]["command"])
    worker = parse_orch(services["worker"]["command"][1:])
    assert worker.command.name == "worker"
    assert worker.params["concurrency"] == 8
    flower = parse_orch(services["flower"]["command"][1:])
    assert flower.command.name == "flower"
    assert flower.params["address"] == "0.0.0.0"  # reachable through the published port


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in SERVICES:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        if test[0] == "CMD-SHELL":
            assert len(test) == 2, f"{name}: CMD-SHELL takes one string"
            commands = shell_commands(test[1].replace("$$", "$"))
        else:
            commands = [test[1:]]
        for argv in commands:
            if own_commands(argv):
                check_command(argv)
    for name in AGENTS:
        data_dir = agent_args(services[name]).data_dir
        assert str(data_dir / "listen.addr") in services[name]["healthcheck"]["test"][1]


def test_worker_healthcheck_pings_the_worker_by_its_real_name(services: dict[str, dict[str, Any]]) -> None:
    from orchestrator.workers.main import celery_argv  # what `orch worker` runs `celery worker` with

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("socket.gethostname", lambda: "HOST")
        ctx = parse_orch(services["worker"]["command"][1:])
        argv = celery_argv(ctx.params["concurrency"], ctx.params["loglevel"], ctx.params["name"], [])
    node = argv[argv.index("--hostname") + 1].replace("HOST", "$HOSTNAME")
    (ping,) = shell_commands(services["worker"]["healthcheck"]["test"][1].replace("$$", "$"))
    assert ping[ping.index("--destination") + 1] == node


def test_agents(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    seen_volumes = set()
    for name in AGENTS:
        service = services[name]
        assert service.get("privileged") is True, f"{name} must be privileged (runc, user namespaces)"
        args = agent_args(service)
        assert args.name == name
        mounts = named_volume_mounts(service)
        volume = mounts.get(str(args.data_dir))
        assert volume, f"{name}: no named volume at its --data-dir {args.data_dir}"
        assert volume in declared
        assert volume not in seen_volumes, f"{name} shares {volume} with another agent"
        seen_volumes.add(volume)
        # `docker compose exec agentN orch ... local:` reaches this agent through orch's default socket
        socket_path = environment(service).get("ORCH_AGENT_SOCKET", DEFAULT_SOCKET)
        assert socket_path == str(args.data_dir / "unix.socket")
        # the published port leads to the listener
        container_ports = {int(p.split(":")[-1].split("/")[0]) for p in service["ports"]}
        assert args.listen[1] in container_ports


def test_agent_data_dir_matches_the_image(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    env = dockerfile.env("agent")
    volumes = " ".join(dockerfile.instructions("agent", "VOLUME"))
    for name in AGENTS:
        data_dir = str(agent_args(services[name]).data_dir)
        assert env["ORCH_AGENT_DIR"] == data_dir
        assert data_dir in volumes  # never on the image's overlayfs, even with plain `docker run`
        assert env.get("ORCH_AGENT_SOCKET", DEFAULT_SOCKET) == data_dir + "/unix.socket"


async def _accepts_ipv4(host: str) -> bool:
    server = await asyncio.start_server(lambda r, w: w.close(), host, 0, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    except OSError:
        return False
    finally:
        server.close()
        await server.wait_closed()


def listens_on_ipv4(listen: tuple[str, int]) -> bool:
    """Whether the agent's listener (asyncio, as aiohttp's TCPSite binds it) accepts IPv4 clients."""
    return asyncio.run(_accepts_ipv4(listen[0]))


def test_agents_reachable_over_ipv4(services: dict[str, dict[str, Any]]) -> None:
    """Compose networks are IPv4 unless enable_ipv6: a listener on "::" (IPv6-only) can't be reached."""
    for name in AGENTS:
        assert listens_on_ipv4(agent_args(services[name]).listen), f"{name} doesn't accept IPv4 clients"


def test_volumes_declared_and_used(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {v for s in services.values() for v in named_volume_mounts(s).values()}
    assert used <= declared, used - declared
    assert declared <= used, f"declared but unused: {declared - used}"
    assert named_volume_mounts(services["redis"]).get("/data") in declared


def test_depends_on(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec.get("condition", "service_started")
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} to be healthy: it has no check"
                )
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_and_flower_share_redis(services: dict[str, dict[str, Any]]) -> None:
    urls = {name: environment(services[name]).get("ORCH_REDIS_URL") for name in ("worker", "flower")}
    assert urls["worker"] and urls["worker"] == urls["flower"], urls
    url = urlsplit(urls["worker"])
    assert url.scheme == "redis"
    assert url.hostname in services and services[url.hostname]["image"].startswith("redis:")
    redis_cmd = services[url.hostname].get("command", [])
    port = int(redis_cmd[redis_cmd.index("--port") + 1]) if "--port" in redis_cmd else 6379
    assert (url.port or 6379) == port
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"


def test_worker_client_config_volume(services: dict[str, dict[str, Any]], dockerfile: Dockerfile) -> None:
    """The remotes and client certificate live in $XDG_CONFIG_HOME/orch: a volume, shared by replicas."""
    xdg = dockerfile.env("orch")["XDG_CONFIG_HOME"]
    assert xdg in named_volume_mounts(services["worker"])
    assert "XDG_CONFIG_HOME" not in environment(services["worker"]) or (
        environment(services["worker"])["XDG_CONFIG_HOME"] == xdg
    )
    # the directory exists in the image (owned by its user), so a fresh volume is created writable
    assert any(xdg in run for run in dockerfile.instructions("orch", "RUN"))
    replicas = services["worker"]["deploy"]["replicas"]
    assert isinstance(replicas, int) and replicas >= 1


def test_flower_basic_auth(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["flower"])
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", env["FLOWER_BASIC_AUTH"]), "must be required"
    assert env.get("FLOWER_UNAUTHENTICATED_API", "false").lower() in ("false", "0", "no")
    flower = parse_orch(services["flower"]["command"][1:])
    published = [p for p in services["flower"]["ports"] if p.split(":")[-1] == str(flower.params["port"])]
    assert published, "Flower's port is not published"


def test_interpolated_variables_are_documented(compose: dict[str, Any]) -> None:
    found = set()
    for value in strings(compose):
        for m in re.finditer(r"\$(\$|\{(\w+)[^}]*\}|(\w+))", value):
            if m.group(1) != "$":
                found.add(m.group(2) or m.group(3))
    assert found == COMPOSE_VARIABLES, f"compose would interpolate {found}; write $$ for a literal $"
    doc = DEPLOY_DOC.read_text()
    for var in found:
        assert var in doc


PORT = re.compile(r"(?:(?P<ip>[\d.]+|\[[0-9a-f:]+\]):)?(?P<host>\d+):(?P<container>\d+)(?:/(?:tcp|udp))?")


def test_ports(services: dict[str, dict[str, Any]]) -> None:
    host_ports = []
    for name, service in services.items():
        for entry in service.get("ports", []):
            # unquoted, YAML 1.1 reads 55:55 as a base-60 integer
            assert isinstance(entry, str), f"{name}: quote the port mapping {entry!r}"
            m = PORT.fullmatch(entry)
            assert m, f"{name}: bad port mapping {entry!r}"
            for part in ("host", "container"):
                assert 1 <= int(m.group(part)) <= 65535
            host_ports.append((m.group("ip"), int(m.group("host"))))
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {host_ports}"
    assert "ports" not in services["redis"], "Redis has no password: keep it unpublished"


def test_docs_commands_parse() -> None:
    """Every `orch ...` command line in DEPLOY.md is one the CLI accepts."""
    blocks = re.findall(r"```sh\n(.*?)```", DEPLOY_DOC.read_text(), re.DOTALL)
    checked = 0
    for line in "\n".join(blocks).splitlines():
        line = line.split(" #")[0].strip()
        m = re.search(r"(?:^|docker compose (?:run --rm \w+|exec \w+) )(orch(?:-agent)? .*)", line)
        if m and not line.startswith("alias "):
            check_command(shlex.split(m.group(1)))
            checked += 1
    assert checked >= 8


# -- docker compose config ------------------------------------------------------------------------------


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not docker_compose_available(), reason="the docker compose plugin is not installed")
def test_docker_compose_config() -> None:
    base = ["docker", "compose", "--project-directory", str(REPO), "-f", str(COMPOSE_FILE)]
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    ok = subprocess.run([*base, "config", "-q"], env={**env, "FLOWER_BASIC_AUTH": "u:p"}, capture_output=True)
    assert ok.returncode == 0, ok.stderr.decode()
    missing = subprocess.run([*base, "--env-file", os.devnull, "config", "-q"], env=env, capture_output=True)
    assert missing.returncode != 0, "compose must refuse to start Flower without FLOWER_BASIC_AUTH"


# -- systemd unit -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT_FILE.read_text())
    return parser


def test_unit_exec_start(unit: configparser.ConfigParser) -> None:
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0] == "/usr/local/bin/orch-agent"  # where pip installs console scripts (or a symlink)
    assert Path(argv[0]).name in SCRIPTS
    args = parse_agent(argv[1:])
    assert args.listen is not None and args.listen[1] == 8443
    assert listens_on_ipv4(args.listen)
    assert str(args.data_dir) == "/var/lib/" + unit["Service"]["StateDirectory"]
    assert str(args.data_dir / "unix.socket") == DEFAULT_SOCKET  # `orch ... local:` on the host


def test_unit_keeps_containers_and_restarts(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["KillMode"] == "process"
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= 65536
    assert "network-online.target" in unit["Unit"]["After"].split()
    assert "network-online.target" in unit["Unit"]["Wants"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_has_no_hardening_that_breaks_runc(unit: configparser.ConfigParser) -> None:
    """Each of these is inherited by the containers or keeps runc from working (see the unit's comments)."""
    breaking = [
        "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectControlGroups",
        "ProtectKernelTunables", "ProtectKernelLogs", "NoNewPrivileges", "RestrictNamespaces",
        "RestrictSUIDSGID", "SystemCallFilter", "MemoryDenyWriteExecute", "CapabilityBoundingSet",
        "ReadOnlyPaths", "ReadWritePaths", "DynamicUser", "User",
    ]  # fmt: skip
    set_keys = set(unit["Service"])
    assert not set_keys & set(breaking), set_keys & set(breaking)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path: Path) -> None:
    """systemd itself finds no unknown key or bad value (the binary pointed at this venv's orch-agent)."""
    agent = Path(sys.executable).parent / "orch-agent"
    assert agent.exists()
    unit_copy = tmp_path / "orch-agent.service"
    unit_copy.write_text(UNIT_FILE.read_text().replace("/usr/local/bin/orch-agent", str(agent)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit_copy)], capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert str(unit_copy) not in output, output  # warnings name the file and line
