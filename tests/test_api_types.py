"""The agent API's shared request/response types (orchapi/api/): what a client builds is what the agent
parses back, and what the agent refuses it refuses with one message naming the field. Pure logic: the
endpoints themselves are exercised over real TLS by the migration, copy and bad-input tests."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from hostagent.migration.push import parse_push
from hostagent.migration.target.request import parse_pull
from orchapi.api.containers import Rename, StateChange
from orchapi.api.migration import DEFAULT_TTL, MAX_TTL, MigrationIssued, MigrationRequest
from orchapi.api.receive import ImageFromMigration, PushRequest, ReceiveSource
from orchapi.api.server import ServerInfo
from orchapi.errors import BadRequest
from orchapi.rates import MIN_RATE


def _real_pem() -> str:
    """A real certificate (the target fingerprints the one it is given)."""
    from orchapi import certs

    with tempfile.TemporaryDirectory() as tmp:
        certs.generate(Path(tmp) / "a.crt", Path(tmp) / "a.key", "api-types")
        return (Path(tmp) / "a.crt").read_text()


PEM = _real_pem()
URL = "https://10.0.0.1:8443/1.0/migrations/0123abcd-0123-4567-89ab-0123456789ab"


def wire(value):  # type: ignore[no-untyped-def]
    """Through JSON, as it travels."""
    return json.loads(json.dumps(value.to_json()))


def test_a_migration_request_round_trips_and_defaults_what_is_absent():
    request = MigrationRequest(
        PEM, mode="push", snapshot="snap0", instance_only=True, ttl=120, bwlimit=MIN_RATE
    )
    assert MigrationRequest.from_json(wire(request)) == request
    plain = MigrationRequest.from_json({"target_certificate": PEM})
    assert (plain.mode, plain.snapshot, plain.ttl, plain.bwlimit) == ("pull", None, DEFAULT_TTL, None)
    assert "bwlimit" not in plain.to_json()  # unlimited is said by leaving it out
    assert MigrationRequest.from_json({"target_certificate": PEM, "bwlimit": None}).bwlimit is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_certificate": ""}, "target_certificate must be the target agent's PEM certificate"),
        ({"mode": "teleport"}, "unknown transfer mode 'teleport'"),
        ({"snapshot": "../x"}, "invalid snapshot name"),
        ({"instance_only": "yes"}, "instance_only must be true or false"),
        ({"ttl": MAX_TTL + 1}, f"between 1 and {MAX_TTL}"),
        ({"ttl": True}, f"between 1 and {MAX_TTL}"),  # JSON's true is not 1 here
        ({"ttl": None}, f"between 1 and {MAX_TTL}"),  # null is no number of seconds (as before the types)
        ({"bwlimit": MIN_RATE - 1}, f"at least {MIN_RATE}"),
        ({"bwlimit": 1.5e6}, f"at least {MIN_RATE}"),
    ],
)
def test_a_bad_migration_request_is_refused_naming_the_field(change, message):
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(".", r"\.")):
        MigrationRequest.from_json({"target_certificate": PEM, **change})


def test_a_body_that_is_not_an_object_is_refused():
    for body in ([], "x", None, 3):
        with pytest.raises(BadRequest, match="must be a JSON object"):
            MigrationRequest.from_json(body)
        with pytest.raises(BadRequest, match="must be a JSON object"):
            StateChange.from_json(body)


def test_the_answer_reads_back_and_ignores_what_it_does_not_know():
    issued = MigrationIssued("m1", {"fs": "s1", "image": "s2"}, PEM, size=42, snapshots=["a"])
    again = MigrationIssued.from_json({**wire(issued), "added_in_a_later_agent": 1})
    assert again == issued and again.size == 42


def test_state_changes_are_checked():
    assert StateChange.from_json(wire(StateChange("stop", 5, force=True))) == StateChange("stop", 5.0, True)
    assert StateChange.from_json({"action": "start"}) == StateChange("start", 30.0, False)
    for body, message in [
        ({"action": "pause"}, "action must be one of start, stop, restart"),
        ({"action": "stop", "timeout": 3601}, "between 0 and 3600"),
        ({"action": "stop", "timeout": -1}, "between 0 and 3600"),
        ({"action": "stop", "force": "no"}, "force must be true or false"),
    ]:
        with pytest.raises(BadRequest, match=message):
            StateChange.from_json(body)
    with pytest.raises(BadRequest, match="invalid container name"):
        Rename.from_json({"name": "-bad"})


def test_what_a_worker_asks_a_target_to_receive_is_what_the_target_parses():
    pull = ReceiveSource(
        "pull", PEM, base_image="f" * 64, method="rsync", operation=URL, secrets={"fs": "t0k"}
    )
    spec = parse_pull(wire(pull))
    assert (spec.mode, spec.pushed, spec.source.url, spec.source.token) == ("pull", False, URL, "t0k")
    assert (spec.base_image, spec.method, spec.compression) == ("f" * 64, "rsync", "auto")
    push = parse_pull(wire(ReceiveSource("push", PEM)))
    assert push.pushed and push.source.url == "" and push.source.token == ""
    assert "operation" not in ReceiveSource("relay", PEM).to_json()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"mode": "beam"}, "migration mode 'beam' is not supported"),
        ({"secrets": "t0k"}, "source.secrets must hold the 'fs' migration secret"),
        ({"mode": "push", "operation": URL}, "source.operation is for pull mode"),
        ({"refresh": 1}, "source.refresh must be true or false"),
        ({"allow_privileged": "true"}, "source.allow_privileged must be true or false"),
        ({"base-image": "abc"}, "source.base-image must be an image fingerprint"),
        ({"method": "ftp"}, "unknown transfer method 'ftp'"),
        ({"compression": "lz4"}, "unknown compression 'lz4'"),
        ({"operation": "http://10.0.0.1/1.0/migrations/x"}, "invalid source.operation"),
        ({"secrets": {"fs": ""}}, "the migration secret is missing"),
        ({"certificate": ""}, "source.certificate must be the source agent's PEM certificate"),
    ],
)
def test_the_target_refuses_a_bad_receive_request_naming_the_field(source, message):
    good = {"type": "migration", "mode": "pull", "certificate": PEM, "operation": URL, "secrets": {"fs": "t"}}
    with pytest.raises(BadRequest, match=message):
        parse_pull({**good, **source})


def test_push_requests_and_image_pulls_have_one_shape_on_both_sides():
    push = PushRequest(["10.0.0.2:8443", "10.0.0.2:8443"], "0123abcd-0123-4567-89ab-0123456789ab", "s")
    assert parse_push(wire(push)).addresses == ["10.0.0.2:8443"]  # duplicates dropped
    with pytest.raises(BadRequest, match="addresses must list"):
        parse_push({**wire(push), "addresses": ["10.0.0.2"]})
    image = ImageFromMigration(URL, "s", PEM, "f" * 64).to_json()
    assert image["source"]["type"] == "migration" and image["source"]["fingerprint"] == "f" * 64


def test_server_info_reads_what_an_agent_reports_and_tolerates_what_it_leaves_out():
    info = ServerInfo.from_json(
        {"auth": "trusted", "config": {"orch.status": "cordoned"},
         "environment": {"certificate": PEM, "addresses": ["10.0.0.1:8443"], "transfer_methods": ["rsync"],
                         "storage_free": 10}}
    )  # fmt: skip
    assert info.trusted and info.config["orch.status"] == "cordoned" and info.storage_free == 10
    assert info.addresses == ["10.0.0.1:8443"] and info.transfer_methods == ["rsync"]
    bare = ServerInfo.from_json({"auth": "untrusted"})
    assert not bare.trusted and bare.addresses == [] and bare.storage_free is None and bare.certificate == ""
