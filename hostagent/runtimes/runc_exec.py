"""``exec`` with its output collected (the API's exec without websockets): runc with pipes, a timeout
that kills the command's tree, and runc's own failures told apart from the command's.

The streaming exec (websockets, terminals) is hostagent/execsession/runc.py.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

from hostagent.runtimes.base import ExecResult
from hostagent.runtimes.runc import Runc, descendants, error_from_runc
from orchapi.errors import BadRequest, InternalError

#: what :func:`collect` returns as exit code when it killed a command for running too long
#: (the same as coreutils ``timeout``)
EXEC_TIMEOUT_CODE = 124
#: exit codes for "command not found" and "found but not executable", as a shell reports them
EXEC_NOT_FOUND_CODE = 127
EXEC_NOT_EXECUTABLE_CODE = 126


def collect(
    runc: Runc,
    cid: str,
    args: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
    grace: float = 1.0,
) -> ExecResult:
    """Run ``args`` in the container and collect its output.

    On ``timeout`` the command and its descendants are killed and the result has return code
    :data:`EXEC_TIMEOUT_CODE` (124) with the output so far; no exception, so callers can show it.
    A command that is not found returns :data:`EXEC_NOT_FOUND_CODE` (127), one that cannot be
    executed :data:`EXEC_NOT_EXECUTABLE_CODE` (126), with runc's reason on stderr; a missing ``cwd``
    raises :class:`BadRequest`.

    Like ``docker exec``, the call returns when the command's output pipes close: runc copies output
    until then, so a background job that keeps stdout open (``sh -c 'sleep 60 &'``) holds the call
    until it exits or ``timeout`` kills the command tree (and, ``grace`` seconds later, runc itself).
    """
    if not args:
        raise InternalError("exec needs a command")
    base = runc.run_dir / f"exec-{secrets.token_hex(8)}"
    pid_file, log_file = f"{base}.pid", f"{base}.log"  # runc writes the pid file itself
    os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    argv = [runc.binary, "--root", str(runc.root), "--log", log_file, "--log-format", "json", "exec"]
    argv += ["--pid-file", pid_file]
    if cwd:
        argv += ["--cwd", cwd]
    for key, value in (env or {}).items():
        argv += ["--env", f"{key}={value}"]
    # flags end at the first positional argument (runc sets SkipArgReorder), so the command's own
    # options are never taken for runc's; a "--" here would be run as the command
    argv += [cid, *args]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err, timed_out = _communicate(proc, stdin, timeout, grace, pid_file)
        runc_error = log_error(Path(log_file)) if proc.returncode == 255 else None
    finally:
        for path in (pid_file, log_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    if timed_out:
        return ExecResult(EXEC_TIMEOUT_CODE, out, err)
    if runc_error is not None:
        # runc prints its own failure as the last stderr line; it is not the command's output
        err = err[: err.rfind(b"exec failed:")] if b"exec failed:" in err else err
        lower = runc_error.lower()
        if "chdir to cwd" in lower:
            raise BadRequest(f"exec in {cid}: working directory {cwd} does not exist in the container")
        if "executable file not found" in lower or (" exec: " in lower and "no such file" in lower):
            return ExecResult(EXEC_NOT_FOUND_CODE, out, err + f"{runc_error}\n".encode())
        if " exec: " in lower and "permission denied" in lower:
            return ExecResult(EXEC_NOT_EXECUTABLE_CODE, out, err + f"{runc_error}\n".encode())
        raise error_from_runc(f"exec in {cid}", runc_error)
    return ExecResult(proc.returncode, out, err)


def _communicate(
    proc: subprocess.Popen[bytes], stdin: bytes | None, timeout: float | None, grace: float, pid_file: str
) -> tuple[bytes, bytes, bool]:
    """Feed stdin and gather output; returns (stdout, stderr, timed_out)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    exited_at: float | None = None
    first = True
    while True:
        try:
            out, err = proc.communicate(stdin if first else None, timeout=0.1)
            return out or b"", err or b"", False
        except subprocess.TimeoutExpired as exc:
            first = False
            partial = (exc.stdout or b"", exc.stderr or b"")
        now = time.monotonic()
        if proc.poll() is not None:
            # runc is gone but something still holds the pipes open (not expected: runc owns them)
            exited_at = exited_at or now
            if now - exited_at >= grace:
                _close_pipes(proc)
                return partial[0], partial[1], False
        elif deadline is not None and now >= deadline:
            _kill_exec(proc, pid_file)
            try:
                out, err = proc.communicate(timeout=grace)
                partial = (out or b"", err or b"")
            except subprocess.TimeoutExpired as exc2:
                partial = (exc2.stdout or partial[0], exc2.stderr or partial[1])
                _close_pipes(proc)
            return partial[0], partial[1], True


def _kill_exec(proc: subprocess.Popen[bytes], pid_file: str) -> None:
    """Kill an exec'd command (and what it started) by host pid, then runc itself."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid:
        for p in descendants(pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass
    proc.wait()


def log_error(path: Path) -> str | None:
    """The last error runc wrote to its JSON log file, if any."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    errors = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            errors.append(" ".join(str(entry.get("msg", "")).split()))
    return errors[-1] if errors else None
