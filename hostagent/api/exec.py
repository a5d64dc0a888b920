"""``/1.0/containers/<name>/exec``: run a command, streamed (LXD's exec) or collected.

With ``wait-for-websocket: true`` the command's streams (or terminal, ``interactive``) travel over
websockets as they happen (hostagent/execsession/, protocol in orchapi/execapi.py). Without it the
output is collected and returned base64-encoded in the finished operation's metadata, so binary output
survives JSON; ``return`` is the command's exit status either way.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from aiohttp import web

from hostagent.api.containers import container_name, resources
from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import async_op, json_body
from hostagent.execsession.base import ExecProcess, ExecSpec
from hostagent.execsession.session import ExecSession
from hostagent.jsoninput import has_bad_chars
from hostagent.operations import Operation
from hostagent.runtimes.base import RUNNING
from orchapi.errors import BadRequest, Conflict, NotFound
from orchapi.execapi import terminal_size

routes = web.RouteTableDef()


#: the kernel's limit on one argv or environment string (MAX_ARG_STRLEN, 32 pages, with its NUL): a
#: longer one makes execve fail with E2BIG inside runc, which is the caller's doing, so a 400 here
MAX_ARG_BYTES = 32 * 4096 - 1


def _text(value: str, what: str) -> str:
    """``value`` if it can be an argv/environment/path string: no NUL (C strings end there; Python
    refuses to pass one to execve), no lone surrogate (not encodable), within the kernel's length."""
    if has_bad_chars(value):
        raise BadRequest(f"{what} must not contain NUL characters or unpaired surrogates")
    if len(value.encode()) > MAX_ARG_BYTES:
        raise BadRequest(f"{what} is longer than the kernel allows ({MAX_ARG_BYTES} bytes)")
    return value


def _parse(body: dict[str, Any]) -> tuple[list[str], dict[str, str], str, bytes | None, float | None]:
    """The exec request's fields, each checked so that runc, execve and chdir can take them."""
    command = body.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise BadRequest("command must be a non-empty list of strings")
    for arg in command:
        _text(arg, "command arguments")
    env = body.get("environment") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise BadRequest("environment must map strings to strings")
    if any("=" in k or not k for k in env):
        raise BadRequest("environment variable names must be non-empty and contain no '='")
    for key, value in env.items():
        _text(f"{key}={value}", f"environment variable {key[:64]!r}")
    cwd = body.get("cwd") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise BadRequest("cwd must be an absolute path inside the container")
    _text(cwd, "cwd")
    stdin = None
    if body.get("stdin") is not None:
        if not isinstance(body["stdin"], str):
            raise BadRequest("stdin must be base64")
        try:
            stdin = base64.b64decode(body["stdin"], validate=True)
        except ValueError:  # binascii.Error, or a non-ASCII string
            raise BadRequest("stdin must be base64") from None
    timeout = body.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise BadRequest("timeout must be a positive number of seconds")
    return command, env, cwd, stdin, timeout


#: the largest uid/gid an exec may ask for (ids are 32-bit; (uid_t)-1 means "unchanged" to the kernel)
MAX_ID = 2**32 - 2


def _id(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise BadRequest(f"{key} must be a number between 0 and {MAX_ID}")
    return value


def _spec(body: dict[str, Any], command: list[str], env: dict[str, str], cwd: str) -> ExecSpec:
    interactive = body.get("interactive", False)
    if not isinstance(interactive, bool):
        raise BadRequest("interactive must be true or false")
    width, height = terminal_size(body.get("width", 0), body.get("height", 0))
    return ExecSpec(command, env, cwd, _id(body, "user"), _id(body, "group"), interactive, width, height)


@routes.post("/1.0/containers/{name}/exec")
async def exec_command(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    body = await json_body(request)
    command, env, cwd, stdin, timeout = _parse(body)
    websockets = body.get("wait-for-websocket", False)
    if not isinstance(websockets, bool):
        raise BadRequest("wait-for-websocket must be true or false")
    if (await agent.blocking(agent.runtime.get, name)).status != RUNNING:
        raise Conflict(f"container {name} is not running", f"start it first: orch start {name}")
    if websockets:
        return await _streamed(request, name, _spec(body, command, env, cwd))
    if body.get("interactive"):
        raise BadRequest("an interactive exec needs wait-for-websocket: true")

    async def work(op: Operation) -> dict[str, Any]:
        result = await agent.blocking(agent.runtime.exec, name, command, env, cwd, stdin, timeout)
        return {
            "return": result.returncode,
            "stdout": base64.b64encode(result.stdout).decode(),
            "stderr": base64.b64encode(result.stderr).decode(),
        }

    return async_op(agent.operations.start(f"Executing command in {name}", work, resources(name)))


async def _streamed(request: web.Request, name: str, spec: ExecSpec) -> web.Response:
    """The LXD-style exec: an operation whose websockets carry the streams."""
    agent = request.app[AGENT_KEY]
    process = await agent.blocking(agent.runtime.exec_process, name, spec)  # it asks runc: a thread
    return start_session(agent, name, process, spec.interactive, f"Executing command in {name}")


def start_session(
    agent: Any, name: str, process: ExecProcess, interactive: bool, description: str
) -> web.Response:
    """An operation relaying ``process`` over websockets (exec, console); answers with its secrets."""
    session = ExecSession(process, interactive)

    async def work(op: Operation) -> dict[str, Any]:
        try:
            return await session.run()
        finally:
            agent.exec_sessions.pop(op.id, None)

    op = agent.operations.start(description, work, resources(name))
    agent.exec_sessions[op.id] = session
    op.metadata["fds"] = session.take_secrets()
    response = async_op(op)
    op.metadata.pop("fds")  # only the caller that created the operation learns the secrets
    return response


@routes.get("/1.0/operations/{id}/websocket")
async def exec_websocket(request: web.Request) -> web.StreamResponse:
    """One stream of an exec, opened with the secret the exec's creation returned."""
    agent = request.app[AGENT_KEY]
    session = agent.exec_sessions.get(request.match_info["id"])
    if session is None:
        raise NotFound(f"operation {request.match_info['id']} has no websockets waiting")
    ws = web.WebSocketResponse(max_msg_size=1 << 20, compress=False, heartbeat=30)
    if not ws.can_prepare(request).ok:  # before the secret is spent: a plain GET must not burn it
        raise BadRequest("expected a websocket upgrade")
    fd = session.redeem(request.query.get("secret", ""))
    await ws.prepare(request)
    await session.attach(fd, ws)
    return ws
