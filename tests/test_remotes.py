"""Remotes, enrolment and authentication against real agents over real TLS."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import yaml

from orchapi import certs
from orchapi.client import AgentClient
from orchapi.errors import Forbidden, TooManyRequests
from tests.conftest import PASSWORD


def test_remote_add_pins_certificate_and_enrols(make_agent, orch):
    foo = make_agent("foo")
    out = orch.run("remote", "add", "foo", foo.addr, "--accept-certificate", "--password", PASSWORD).stdout
    fingerprint = certs.fingerprint_pem((foo.data_dir / "server.crt").read_bytes())
    assert f"Certificate fingerprint: {fingerprint}" in out
    assert "Client certificate stored at server: foo" in out
    pinned = orch.config_home / "orch" / "servercerts" / "foo.crt"
    assert certs.fingerprint_pem(pinned.read_bytes()) == fingerprint
    config = yaml.safe_load((orch.config_home / "orch" / "config.yml").read_text())
    assert config["remotes"]["foo"]["addr"] == f"https://{foo.addr}"
    # the agent now trusts exactly our client certificate
    client_fp = certs.fingerprint_pem((orch.config_home / "orch" / "client.crt").read_bytes())
    trusted = orch.run("remote", "list", "--format", "json")
    assert "foo" in yaml.safe_load(trusted.stdout)
    info = orch.run("info", "foo:").stdout
    assert "Auth: trusted" in info
    local_admin = AgentClient(f"unix://{foo.socket}")
    assert [c["fingerprint"] for c in local_admin.get("/1.0/certificates", params={"recursion": 1})] == [
        client_fp
    ]


def test_remote_add_asks_y_n_and_refuses_on_no(make_agent, orch):
    foo = make_agent("foo")
    # without a terminal and without --accept-certificate the CLI refuses instead of hanging
    err = orch.fails("remote", "add", "foo", foo.addr, "--password", PASSWORD)
    assert "--accept-certificate" in err
    assert "foo" not in orch.run("remote", "list", "--format", "csv").stdout


def test_wrong_password_is_refused_and_nothing_saved(make_agent, orch):
    foo = make_agent("foo")
    err = orch.fails("remote", "add", "foo", foo.addr, "--accept-certificate", "--password", "nope")
    assert "wrong trust password" in err
    assert "foo" not in orch.run("remote", "list", "--format", "csv").stdout
    assert not (orch.config_home / "orch" / "servercerts" / "foo.crt").exists()
    assert AgentClient(f"unix://{foo.socket}").get("/1.0/certificates") == []


def test_repeated_wrong_passwords_are_slowed_down(make_agent, orch):
    foo = make_agent("foo")
    client = AgentClient(
        foo.url, fingerprint=certs.fingerprint_pem((foo.data_dir / "server.crt").read_bytes())
    )
    pem = (foo.data_dir / "server.crt").read_text()  # any certificate will do for a wrong guess
    checked_at: list[float] = []
    while len(checked_at) < 4:
        try:
            client.call("POST", "/1.0/certificates", json={"certificate": pem, "password": "guess"})
        except TooManyRequests:  # refused at once during the back-off (tests/test_enrolment.py)
            time.sleep(0.05)
            continue
        except Forbidden as exc:
            assert "wrong trust password" in str(exc)
            checked_at.append(time.monotonic())
        else:
            pytest.fail("a wrong password was accepted")
    gaps = [checked_at[i + 1] - checked_at[i] for i in range(3)]
    # 0.5, 1, 2 seconds of back-off after the 1st, 2nd and 3rd wrong guess
    assert gaps[2] >= 1.9 and gaps[2] > gaps[0] + 1.2, gaps


def test_trust_password_is_stored_as_salted_scrypt_hash(make_agent):
    foo = make_agent("foo")
    stored = (foo.data_dir / "server.json").read_text()
    assert PASSWORD not in stored
    assert '"core.trust_password": "scrypt$' in stored


def test_unknown_remote_is_a_clear_error(orch):
    err = orch.fails("list", "nope:")
    assert "remote 'nope' doesn't exist" in err


def test_unreachable_agent_is_a_clear_error(orch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    err = orch.fails("remote", "add", "gone", f"127.0.0.1:{port}", "--accept-certificate", "--password", "x")
    assert "cannot reach the agent" in err and "Connection refused" in err


def test_changed_server_certificate_is_refused_naming_both_fingerprints(make_agent, orch):
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    old = certs.fingerprint_pem((foo.data_dir / "server.crt").read_bytes())
    addr = foo.addr
    foo.stop()
    (foo.data_dir / "server.crt").unlink()
    (foo.data_dir / "server.key").unlink()
    foo.start(listen_addr=addr)
    new = certs.fingerprint_pem((foo.data_dir / "server.crt").read_bytes())
    assert new != old
    err = orch.fails("list", "foo:")
    assert old in err and new in err and "changed" in err


def test_remote_rename_default_remove_and_unix_remote(make_agent, orch):
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    orch.run("remote", "rename", "foo", "foo2")
    orch.run("remote", "set-default", "foo2")
    assert orch.run("remote", "get-default").stdout.strip() == "foo2"
    table = orch.run("remote", "list").stdout
    assert "| foo2 (default) |" in table and "NAME" in table.splitlines()[1] and "PROTOCOL" in table
    assert "can't remove the default remote" in orch.fails("remote", "remove", "foo2")
    orch.run("remote", "set-default", "local")
    orch.run("remote", "remove", "foo2")
    assert "foo2" not in orch.run("remote", "list", "--format", "csv").stdout
    assert "static" in orch.fails("remote", "remove", "local")
    orch.run("remote", "add", "sock", f"unix://{foo.socket}")
    assert orch.run("list", "sock:", "--format", "json").stdout.strip() == "[]"
    assert "exists already" in orch.fails("remote", "add", "sock", f"unix://{foo.socket}")
    assert "invalid remote name" in orch.fails("remote", "add", "bad:name", foo.addr)


def _protected_requests(spec: dict) -> list[tuple[str, str]]:
    public = {("get", "/1.0"), ("post", "/1.0/certificates")}
    out = []
    for path, item in spec["paths"].items():
        concrete = (
            path.replace("{name}", "c1")
            .replace("{snapshot}", "s1")
            .replace("{ref}", "abc")
            .replace("{alias}", "bb")
            .replace("{fingerprint}", "abc")
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
        )
        for method in item:
            if method in ("get", "post", "put", "patch", "delete") and (method, path) not in public:
                out.append((method.upper(), concrete))
    return out


def test_untrusted_client_gets_403_on_every_protected_endpoint(make_agent):
    foo = make_agent("foo")
    spec = AgentClient(f"unix://{foo.socket}").request("GET", "/1.0/openapi.json").json()
    fingerprint = certs.fingerprint_pem((foo.data_dir / "server.crt").read_bytes())
    anonymous = AgentClient(foo.url, fingerprint=fingerprint)
    checked = 0
    for method, path in _protected_requests(spec):
        response = anonymous.session.request(method, foo.url + path, json={}, timeout=10)
        assert response.status_code == 403, (method, path, response.status_code)
        assert response.json()["type"] == "error"
        checked += 1
    assert checked >= 25
    info = anonymous.get("/1.0")
    assert info["auth"] == "untrusted" and "transfer_methods" not in info["environment"]


def test_unknown_client_certificate_is_refused(make_agent, tmpdir755):
    foo = make_agent("foo")
    crt, key = tmpdir755 / "other.crt", tmpdir755 / "other.key"
    certs.generate(crt, key, "stranger")
    fingerprint = certs.fingerprint_pem((foo.data_dir / "server.crt").read_bytes())
    stranger = AgentClient(foo.url, fingerprint=fingerprint, client_cert=(crt, key))
    with pytest.raises(Forbidden):
        stranger.get("/1.0/containers")


def test_removed_certificate_loses_access(make_agent, orch):
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    orch.run("list", "foo:")
    admin = AgentClient(f"unix://{foo.socket}")
    client_fp = certs.fingerprint_pem((orch.config_home / "orch" / "client.crt").read_bytes())
    admin.call("DELETE", f"/1.0/certificates/{client_fp}")
    err = orch.fails("list", "foo:")
    assert "not trusted" in err or "does not trust" in err


def test_tls_is_at_least_1_2_with_modern_ciphers(make_agent):
    foo = make_agent("foo")
    host, port = foo.addr.rsplit(":", 1)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            old.wrap_socket(raw).close()
    tls12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls12.check_hostname, tls12.verify_mode = False, ssl.CERT_NONE
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with tls12.wrap_socket(raw) as tls:
            name, version, _ = tls.cipher()
            assert (
                version == "TLSv1.2" and name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
            )


def test_ca_bundle_in_environment_does_not_override_pinning(make_agent, orch, tmpdir755):
    foo = make_agent("foo")
    bogus = tmpdir755 / "bogus-ca.pem"
    certs.generate(bogus, tmpdir755 / "bogus.key", "bogus ca")
    orch.env["REQUESTS_CA_BUNDLE"] = str(bogus)
    orch.env["CURL_CA_BUNDLE"] = str(bogus)
    orch.add_remote("foo", foo)
    assert orch.run("list", "foo:", "--format", "json").stdout.strip() == "[]"


def test_openapi_document_describes_every_route(make_agent):
    from hostagent.api import MODULES

    foo = make_agent("foo", password=None)
    spec = AgentClient(f"unix://{foo.socket}").request("GET", "/1.0/openapi.json").json()
    served = set()
    for module in MODULES:
        for route in module.routes:
            path = route.path.replace("{alias:.+}", "{alias}")
            served.add((route.method.lower(), path))
    documented = {(m, p) for p, item in spec["paths"].items() for m in item if m != "parameters"}
    assert served == documented


def test_interactive_remote_add_asks_fingerprint_then_password(make_agent, orch):
    """On a terminal, `remote add` shows the fingerprint, asks ok (y/n)? and the admin password."""
    import pexpect

    from tests.procs import ORCH

    foo = make_agent("foo")
    fingerprint = certs.fingerprint_pem((foo.data_dir / "server.crt").read_bytes())
    child = pexpect.spawn(
        ORCH, ["remote", "add", "foo", foo.addr], env=orch.env, encoding="utf-8", timeout=30
    )
    child.expect(f"Certificate fingerprint: {fingerprint}")
    child.expect(r"ok \(y/n\)\? ")
    child.sendline("y")
    child.expect("Admin password for foo: ")
    child.sendline(PASSWORD)
    child.expect("Client certificate stored at server: foo")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # answering "n" adds nothing
    child = pexpect.spawn(
        ORCH, ["remote", "add", "foo2", foo.addr], env=orch.env, encoding="utf-8", timeout=30
    )
    child.expect(r"ok \(y/n\)\? ")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "foo2" not in orch.run("remote", "list", "--format", "csv").stdout
