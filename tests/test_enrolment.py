"""Guessing the trust password: refused early, one attempt per client, a global cap, scrypt on its own.

Real agents over real TLS; the guessers (tests/enrolment_load.py) each own one anonymous TLS connection.
The many-addresses test runs an agent and its guessers inside a network namespace it creates, where each
guesser has an IPv6 /64 of its own. Unit tests cover the pure logic (client keys, the bounded table, the
back-off and the global limits with a fake clock); the addresses there are strings, never used on a network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from hostagent.enrolment import EnrolmentGuard, KeyTable, Refused, client_key
from orchapi import certs
from orchapi.client import AgentClient
from tests import enrolment_load as load
from tests.conftest import PASSWORD, REPO
from tests.procs import ORCH_AGENT

# -- unit: client keys, the table, the policy ------------------------------------------------------


def test_client_key_aggregates_ipv6_to_its_64_and_unmaps_ipv4():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == client_key("fe80::2") == "fe80::/64"
    assert client_key("::1") == "::/64"
    assert client_key(None) == client_key("") == "unknown"
    assert client_key("not an address") == "not an address"


def test_key_table_never_grows_past_its_bound():
    table = KeyTable(max_keys=4096, forget_after=900.0)
    from hostagent.enrolment import KeyState

    largest = 0
    for i in range(100_000):
        table.touch(f"k{i}", KeyState(failures=1), now=float(i) / 1000)
        largest = max(largest, len(table))
    assert largest == 4096 and len(table) == 4096
    assert table.get("k99999", 100.0) is not None and table.get("k0", 100.0) is None  # LRU went first


def test_guard_table_is_bounded_and_keeps_attempts_in_flight():
    clock = [0.0]
    guard = EnrolmentGuard(max_keys=100, rate=1e9, burst=1e9, max_in_flight=10, clock=lambda: clock[0])
    guard.begin("victim")  # in flight while 100k other keys come and go
    for i in range(100_000):
        guard.begin(f"2001:db8:{i // 65536:x}:{i % 65536:x}::/64")
        guard.end(f"2001:db8:{i // 65536:x}:{i % 65536:x}::/64", False)
        assert len(guard.table) <= 100
    with pytest.raises(Refused, match="already in progress"):
        guard.begin("victim")
    guard.end("victim", False)
    assert guard.in_flight == 0
    with pytest.raises(Refused, match="too many wrong trust passwords"):
        guard.begin("victim")


def test_idle_keys_are_forgotten():
    clock = [0.0]
    guard = EnrolmentGuard(forget_after=900.0, clock=lambda: clock[0])
    for _ in range(5):
        guard.begin("a")
        guard.end("a", False)
        clock[0] += guard.cap + 1
    assert guard.table.get("a", clock[0]).failures == 5
    clock[0] += 901
    assert guard.table.get("a", clock[0]) is None
    guard.begin("a")  # a fresh start: one failure counted, the shortest back-off
    guard.end("a", False)
    assert guard.table.get("a", clock[0]).failures == 1


def test_failure_counted_at_start_backoff_doubles_and_success_resets():
    clock = [0.0]
    guard = EnrolmentGuard(base=0.5, cap=30.0, rate=1e9, burst=1e9, clock=lambda: clock[0])
    guard.begin("a")
    assert guard.table.get("a", 0.0).failures == 1  # counted before any answer
    with pytest.raises(Refused, match="already in progress") as refused:
        guard.precheck("a")
    assert refused.value.status == 429 and refused.value.retry_after == 1
    guard.end("a", False)
    waits = []
    for _ in range(8):
        with pytest.raises(Refused) as refused:
            guard.begin("a")
        not_before = guard.table.get("a", clock[0]).not_before
        waits.append(not_before - clock[0])
        assert f"retry in {refused.value.retry_after} s" in str(refused.value)
        clock[0] = not_before
        guard.begin("a")
        guard.end("a", False)
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30]
    clock[0] += 30
    guard.begin("a")
    guard.end("a", True)  # the right password: the key is forgotten, no back-off
    assert guard.table.get("a", clock[0]) is None
    guard.begin("a")
    guard.end("a", False)


def test_global_cap_and_rate_hold_across_many_keys():
    clock = [0.0]
    guard = EnrolmentGuard(max_in_flight=2, rate=3.0, burst=3.0, clock=lambda: clock[0])
    guard.begin("a")
    guard.begin("b")
    with pytest.raises(Refused, match="busy"):
        guard.begin("c")  # two in flight already
    guard.end("a", False)
    guard.end("b", False)
    admitted = 0
    for step in range(1000):  # 10 simulated seconds, a new key every 10 ms
        clock[0] = step / 100
        try:
            guard.begin(f"key{step}")
        except Refused as exc:
            assert "busy" in str(exc)
            continue
        admitted += 1
        guard.end(f"key{step}", False)
    assert admitted <= 3 * 10 + 3 and admitted >= 3 * 10 - 3


# -- real agents over TLS from 127.0.0.1 ---------------------------------------------------------------


def _server_crt(agent) -> Path:
    return agent.data_dir / "server.crt"


def _trusted_client(agent, tmp: Path, name: str = "probe") -> tuple[Path, Path]:
    """A client certificate the local admin (unix socket) trusts."""
    crt, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    certs.generate(crt, key, name)
    admin = AgentClient(f"unix://{agent.socket}")
    admin.call("POST", "/1.0/certificates", json={"certificate": crt.read_text(), "name": name})
    return crt, key


def _post(agent, body) -> load.Answer:
    conn = load.connect(agent.addr, load.context(_server_crt(agent)))
    try:
        return load.send(conn, "POST", "/1.0/certificates", body)
    finally:
        conn.close()


def test_48_parallel_guesses_one_checked_rest_refused_at_once(make_agent):
    foo = make_agent("foo")
    pem = _server_crt(foo).read_text()
    ctx = load.context(_server_crt(foo))
    conns = [load.connect(foo.addr, ctx) for _ in range(48)]  # 48 anonymous TLS connections, handshakes done
    barrier = threading.Barrier(48)
    answers: list[load.Answer] = []
    lock = threading.Lock()

    def guess(conn) -> None:
        barrier.wait()
        answer = load.send(conn, "POST", "/1.0/certificates", load.guess(pem))
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=guess, args=(c,)) for c in conns]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    for conn in conns:
        conn.close()
    assert len(answers) == 48
    checked = [a for a in answers if a.checked]
    refused = [a for a in answers if a.status == 429]
    assert 1 <= len(checked) <= 2, [(a.status, a.body) for a in answers]
    assert len(checked) + len(refused) == 48
    for answer in refused:
        assert answer.body["type"] == "error" and answer.body["error_code"] == 429
        assert "retry in" in answer.body["error"] and int(answer.retry_after) >= 1
    assert elapsed < 3.0, elapsed
    print(f"\n48 parallel guesses: {len(checked)} checked, {len(refused)} refused (429) in {elapsed:.2f} s")


def test_trusted_latency_stays_low_while_32_anonymous_clients_guess(make_agent, tmpdir755):
    foo = make_agent("foo")
    client = _trusted_client(foo, tmpdir755)
    baseline = load.probe(foo.addr, _server_crt(foo), client, samples=40, pause=0.02)
    hammer = subprocess.Popen(
        [sys.executable, "-m", "tests.enrolment_load", "hammer", "--addr", foo.addr,
         "--server-crt", str(_server_crt(foo)), "--pem", str(_server_crt(foo)), "--threads", "32",
         "--seconds", "6"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2.0)  # the guessers are connected and guessing
        loaded = load.probe(foo.addr, _server_crt(foo), client, samples=40, pause=0.02)
        out, _ = hammer.communicate(timeout=60)
    finally:
        if hammer.poll() is None:
            hammer.kill()
            hammer.wait()
    result = json.loads(out)
    print(
        f"\ntrusted GET /1.0/containers median: {load.median_ms(baseline)} ms idle, "
        f"{load.median_ms(loaded)} ms under 32 guessers; guessers: {result}"
    )
    assert sum(result["statuses"].values()) > 200, result  # it really was a load
    assert result["checked"] <= 8, result  # one key: its back-off allows a handful of checks in 6 s
    assert statistics.median(loaded) < 0.2, (load.median_ms(baseline), load.median_ms(loaded))


def test_right_password_enrols_after_the_backoff_and_success_resets(make_agent, tmpdir755):
    foo = make_agent("foo")
    crt, key = tmpdir755 / "new.crt", tmpdir755 / "new.key"
    certs.generate(crt, key, "newcomer")
    pem = crt.read_text()
    assert _post(foo, load.guess(pem)).checked
    early = _post(foo, load.guess(pem, PASSWORD))  # even the right password waits for the back-off
    assert early.status == 429 and early.retry_after == "1", early
    assert "too many wrong trust passwords" in early.body["error"]
    time.sleep(int(early.retry_after))
    right = _post(foo, load.guess(pem, PASSWORD))
    assert right.status == 201 and right.body["metadata"]["fingerprint"] == certs.fingerprint_pem(pem)
    # the success forgot the key: the next attempt is checked at once, not refused
    assert _post(foo, load.guess(_server_crt(foo).read_text())).checked


def test_cli_shows_the_refusal_as_one_line(make_agent, orch):
    # a back-off longer than the CLI's own start-up on a loaded machine (the default 0.5 s is not)
    foo = make_agent("foo", args=("--enrol-backoff", "4"))
    first = orch.fails("remote", "add", "foo", foo.addr, "--accept-certificate", "--password", "nope")
    assert "wrong trust password" in first
    again = orch.fails("remote", "add", "foo", foo.addr, "--accept-certificate", "--password", PASSWORD)
    wait = re.search(r"too many wrong trust passwords from this address; retry in (\d+) ?s", again)
    assert wait and 1 <= int(wait.group(1)) <= 4, again
    time.sleep(int(wait.group(1)))
    orch.add_remote("foo", foo)
    assert "Auth: trusted" in orch.run("info", "foo:").stdout


def test_refusals_that_cost_no_scrypt_are_not_counted(make_agent):
    foo = make_agent("foo", password=None)
    pem = _server_crt(foo).read_text()
    for _ in range(3):  # no password set: refused without scrypt, and not counted against the client
        answer = _post(foo, load.guess(pem))
        assert answer.status == 403 and "no trust password set" in answer.body["error"], answer
    for _ in range(3):  # garbage: a clear 400, not counted either
        answer = _post(foo, {"certificate": "garbage", "password": "x"})
        assert answer.status == 400 and answer.body["type"] == "error", answer
    AgentClient(f"unix://{foo.socket}").call("PATCH", "/1.0", json={"config": {"core.trust_password": "pw"}})
    assert _post(foo, load.guess(pem)).checked  # none of the above counted: this guess is checked at once


# -- many addresses: an agent and its guessers in a network namespace ---------------------------------


@pytest.fixture
def netns():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nsenter"):
        pytest.skip("needs root, ip and nsenter")
    name = f"orch-enrol-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for i in range(33):  # fd00:0:0:0::/64 for the agent and the probe, one /64 per guesser
            subprocess.run(["ip", "-n", name, "addr", "add", f"fd00:0:0:{i:x}::1/64", "dev", "lo", "nodad"],
                           check=True)  # fmt: skip
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_many_addresses_together_are_held_to_the_global_rate(netns, tmpdir755):
    in_ns = ["nsenter", f"--net=/run/netns/{netns}"]
    data_dir = tmpdir755 / "agent"
    data_dir.mkdir()
    log = open(tmpdir755 / "agent.log", "wb")
    agent = subprocess.Popen(
        [*in_ns, ORCH_AGENT, "--data-dir", str(data_dir), "--name", "ns", "--listen", "[fd00::1]:0"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    try:
        deadline = time.monotonic() + 20
        while not (data_dir / "listen.addr").exists():
            assert agent.poll() is None and time.monotonic() < deadline, (tmpdir755 / "agent.log").read_text()
            time.sleep(0.05)
        addr = (data_dir / "listen.addr").read_text().strip()
        admin = AgentClient(f"unix://{data_dir / 'unix.socket'}")  # the unix socket is outside any netns
        admin.call("PATCH", "/1.0", json={"config": {"core.trust_password": PASSWORD}})
        crt, key = tmpdir755 / "probe.crt", tmpdir755 / "probe.key"
        certs.generate(crt, key, "probe")
        admin.call("POST", "/1.0/certificates", json={"certificate": crt.read_text(), "name": "probe"})
        server_crt = data_dir / "server.crt"
        common = ["--addr", addr, "--server-crt", str(server_crt)]
        probe = [*in_ns, sys.executable, "-m", "tests.enrolment_load", "probe", *common, "--cert", str(crt),
                 "--key", str(key), "--samples", "40", "--pause", "0.02"]  # fmt: skip
        idle = json.loads(subprocess.run(probe, cwd=REPO, capture_output=True, text=True, check=True).stdout)
        sources = [f"fd00:0:0:{i:x}::1" for i in range(1, 33)]
        seconds = 8.0
        cpu_before = _cpu_seconds(agent.pid)
        hammer = subprocess.Popen(
            [*in_ns, sys.executable, "-m", "tests.enrolment_load", "hammer", *common, "--threads", "32",
             "--pem", str(server_crt), "--seconds", str(seconds), *[f"--source={s}" for s in sources]],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(2.0)
            loaded = json.loads(
                subprocess.run(probe, cwd=REPO, capture_output=True, text=True, check=True).stdout
            )
            out, _ = hammer.communicate(timeout=60)
        finally:
            if hammer.poll() is None:
                hammer.kill()
                hammer.wait()
        cpu = _cpu_seconds(agent.pid) - cpu_before
        result = json.loads(out)
        rate = result["checked"] / result["seconds"]
        print(
            f"\n32 guessers from 32 /64s for {result['seconds']:.1f} s: {result['checked']} scrypt checks "
            f"({rate:.2f}/s), {result}; agent CPU {cpu:.2f} s ({cpu / result['seconds']:.0%} of a core); "
            f"trusted median {idle['median_ms']} ms idle, {loaded['median_ms']} ms loaded"
        )
        guard = EnrolmentGuard()
        assert result["checked"] <= guard.burst + guard.rate * result["seconds"] + 1, result
        assert result["checked"] >= guard.rate * result["seconds"] / 2, result  # the load did reach scrypt
        assert result["busy"] > 0, result  # and the global limit, not only each key's back-off, held it
        assert loaded["median_ms"] < 200, (idle, loaded)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
