"""``/1.0/containers/<name>/exec``: run a command non-interactively and return its output.

The output is returned base64-encoded in the finished operation's metadata, so binary output survives
JSON; ``return`` is the command's exit status.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from aiohttp import web

from hostagent.api.containers import container_name, resources
from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import async_op, json_body
from hostagent.jsoninput import has_bad_chars
from hostagent.operations import Operation
from hostagent.runtimes.base import RUNNING
from orchapi.errors import BadRequest, Conflict

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


@routes.post("/1.0/containers/{name}/exec")
async def exec_command(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    command, env, cwd, stdin, timeout = _parse(await json_body(request))
    if (await agent.blocking(agent.runtime.get, name)).status != RUNNING:
        raise Conflict(f"container {name} is not running", f"start it first: orch start {name}")

    async def work(op: Operation) -> dict[str, Any]:
        result = await agent.blocking(agent.runtime.exec, name, command, env, cwd, stdin, timeout)
        return {
            "return": result.returncode,
            "stdout": base64.b64encode(result.stdout).decode(),
            "stderr": base64.b64encode(result.stderr).decode(),
        }

    return async_op(agent.operations.start(f"Executing command in {name}", work, resources(name)))
