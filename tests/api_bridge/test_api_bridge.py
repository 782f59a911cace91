"""The API-Bridge client against the real embedded server, over loopback HTTP."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modbatt import errors
from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig, RetryPolicy
from tests.api_bridge_server import STARTUP_LIMIT_S, BridgeProcess

FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.05, max_delay_s=0.1, total_time_s=3.0)


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    server = BridgeProcess(tmp_path / "bridge.sqlite3").start()
    yield server
    server.stop()


def client_for(
    server: BridgeProcess, creator: str = "alice", token: str | None = None
) -> ApiBridgeClient:
    return ApiBridgeClient(
        ApiBridgeConfig(base_url=server.url, creator=creator, token=token, retry=FAST_RETRY)
    )


def test_the_server_starts_quickly(bridge: BridgeProcess) -> None:
    assert bridge.startup_s < STARTUP_LIMIT_S


def test_register_create_get_update_and_read_back_after_a_restart(bridge: BridgeProcess) -> None:
    with client_for(bridge) as client:
        assert client.health().status == "healthy"
        pack = client.register_component("MODBATT-PACK-RC001-A", "battery_pack_demo")
        app = client.register_component("host-7f3e", "modbatt app")
        assert pack.component_id.startswith("COMP-alice-")
        assert pack.lct_id == f"lct_{pack.component_id}"
        assert len(pack.txhash) == 64
        created = client.create_lct(app.component_id, pack.component_id, "bootstrap")
        keys = created.keys
        halves = [
            keys.device_key_half_a,
            keys.lct_key_half_a,
            keys.device_key_half_b,
            keys.lct_key_half_b,
        ]
        assert all(len(h.get_secret_value()) == 64 for h in halves)
        assert len({h.get_secret_value() for h in halves}) == 4
        assert "**" in repr(keys) and keys.device_key_half_a.get_secret_value().hex() not in repr(
            keys
        )
        changed = client.update_lct_status(created.record.lct_id, "suspended")
        assert (changed.previous_status, changed.status) == ("active", "suspended")
        client.update_lct_status(created.record.lct_id, "active")
    bridge.stop()
    bridge.start()
    with client_for(bridge) as client:
        assert client.get_component(pack.component_id).component_data == "MODBATT-PACK-RC001-A"
        assert client.get_identity(app.component_id).component_identity == app.component_id
        record = client.get_lct(created.record.lct_id)
        assert (record.component_a, record.component_b, record.status) == (
            app.component_id,
            pack.component_id,
            "active",
        )
        again = client.recover_lct_keys(created.record.lct_id)
        assert (
            again.device_key_half_b.get_secret_value() == keys.device_key_half_b.get_secret_value()
        )
        assert client.verify_component(pack.component_id).verified


def test_a_killed_server_keeps_what_it_acknowledged(bridge: BridgeProcess) -> None:
    with client_for(bridge) as client:
        ids = [client.register_component(f"MODULE-{n}").component_id for n in range(20)]
    bridge.kill()
    bridge.start()
    with client_for(bridge) as client:
        assert [client.get_component(i).component_id for i in ids] == ids


def test_register_is_idempotent_and_ids_stay_unique_within_a_second(bridge: BridgeProcess) -> None:
    with client_for(bridge) as client:
        first = client.register_component("MODBATT-PACK-RC001-A")
        again = client.register_component("MODBATT-PACK-RC001-A")
        assert again.component_id == first.component_id and again.already_registered
        burst = {client.register_component(f"MODULE-{n}").component_id for n in range(10)}
        assert len(burst) == 10
        assert all(i.startswith("COMP-alice-") and i.split("-")[-1].isdigit() for i in burst)


def test_key_recovery_revokes_and_replaces(bridge: BridgeProcess) -> None:
    with client_for(bridge) as client:
        a = client.register_component("A").component_id
        b = client.register_component("B").component_id
        old = client.create_lct(a, b)
        new = client.replace_lct(old.record.lct_id, "flash corrupted")
        assert new.record.replaces == old.record.lct_id
        assert client.get_lct(old.record.lct_id).status == "revoked"
        assert client.get_lct(old.record.lct_id).replaced_by == new.record.lct_id
        # calling again (after a lost answer, say) returns the same replacement
        assert client.replace_lct(old.record.lct_id).record.lct_id == new.record.lct_id
        with pytest.raises(errors.ApiBridgeRequestError) as caught:
            client.recover_lct_keys(old.record.lct_id)
        assert caught.value.status == 409
        with pytest.raises(errors.ApiBridgeRequestError, match="revoked"):
            client.update_lct_status(old.record.lct_id, "active")


def test_no_route_hands_out_a_revoked_lcts_halves(bridge: BridgeProcess) -> None:
    """A replayed create (same Idempotency-Key) and a repeated replacement answered 200 with
    the halves of an LCT revoked since; both must answer 409."""
    with client_for(bridge) as client:
        a = client.register_component("A").component_id
        b = client.register_component("B").component_id
    url = f"{bridge.url}/api/v1/lct/create"
    body = {"creator": "alice", "component_a": a, "component_b": b}
    first = httpx.post(url, json=body, headers={"Idempotency-Key": "boot-1"}, timeout=5).json()
    l1 = first["lct_id"]
    status = f"{bridge.url}/api/v1/lct/{{}}/status"
    revoke = {"creator": "alice", "status": "revoked"}
    assert httpx.put(status.format(l1), json=revoke, timeout=5).status_code == 200
    replayed = httpx.post(url, json=body, headers={"Idempotency-Key": "boot-1"}, timeout=5)
    assert replayed.status_code == 409, replayed.text
    assert first["device_key_half"] not in replayed.text
    l2 = httpx.post(url, json={**body, "replaces": l1}, timeout=5).json()
    assert httpx.put(status.format(l2["lct_id"]), json=revoke, timeout=5).status_code == 200
    again = httpx.post(url, json={**body, "replaces": l1}, timeout=5)
    assert again.status_code == 409, again.text
    assert l2["device_key_half"] not in again.text and "revoked" in again.json()["error"]


def test_other_creators_cannot_touch_an_lct(bridge: BridgeProcess) -> None:
    with client_for(bridge) as alice, client_for(bridge, creator="mallory") as mallory:
        lct = alice.create_lct(
            alice.register_component("A").component_id, alice.register_component("B").component_id
        )
        for call in (
            lambda: mallory.recover_lct_keys(lct.record.lct_id),
            lambda: mallory.update_lct_status(lct.record.lct_id, "revoked"),
        ):
            with pytest.raises(errors.ApiBridgeRequestError) as caught:
                call()
            assert caught.value.status == 403


def test_client_mistakes_get_4xx_json_errors(bridge: BridgeProcess) -> None:
    url = bridge.url
    cases = [
        ("POST", "/api/v1/components/register", {"content": b"{not json"}, 422),
        ("POST", "/api/v1/components/register", {"json": {"creator": "alice"}}, 422),
        (
            "POST",
            "/api/v1/components/register",
            {"json": {"creator": "alice", "component_data": "x", "extra": 1}},
            422,
        ),
        (
            "POST",
            "/api/v1/components/register",
            {"json": {"creator": 5, "component_data": "x"}},
            422,
        ),
        ("POST", "/api/v1/components/register", {"content": b"x" * 70_000}, 413),
        ("GET", "/api/v1/components/COMP-nobody-1", {}, 404),
        ("GET", "/api/v1/lct/lct_nothing", {}, 404),
        (
            "PUT",
            "/api/v1/lct/lct_nothing/status",
            {"json": {"creator": "alice", "status": "exploded"}},
            422,
        ),
        (
            "POST",
            "/api/v1/lct/create",
            {"json": {"creator": "alice", "component_a": "A", "component_b": "A"}},
            409,
        ),
        ("GET", "/api/v1/components/%00", {}, 422),
        ("DELETE", "/health", {}, 405),
        ("POST", "/api/v1/components/register", {"content": b'{"creator": "\xff"}'}, 422),
    ]
    for method, path, kwargs, status in cases:
        response = httpx.request(method, url + path, timeout=5, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (method, path, response.text)
        body = response.json()
        assert isinstance(body["error"], str) and body["error"], (method, path)
        assert "Traceback" not in response.text
        if status == 405:
            assert response.headers["allow"] == "GET", (method, path)
        if status == 422:
            assert body["detail"], (method, path)


def test_the_token_guards_the_api(tmp_path: Path) -> None:
    server = BridgeProcess(tmp_path / "bridge.sqlite3", token="s3cret-token").start()
    try:
        with client_for(server) as anonymous:
            assert anonymous.health().status == "healthy"  # /health stays open
            with pytest.raises(errors.ApiBridgeRequestError) as caught:
                anonymous.register_component("A")
            assert caught.value.status == 401
        with client_for(server, token="s3cret-token") as client:
            assert client.register_component("A").component_data == "A"
        assert "s3cret" not in repr(ApiBridgeConfig(token="s3cret-token"))
    finally:
        server.stop()


def test_the_schema_declares_bearer_auth_only_when_the_server_requires_it(tmp_path: Path) -> None:
    for token in (None, "s3cret-token"):
        server = BridgeProcess(tmp_path / f"{token}.sqlite3", token=token).start()
        try:
            schema = httpx.get(f"{server.url}/openapi.json", timeout=5).json()
        finally:
            server.stop()
        schemes = schema.get("components", {}).get("securitySchemes", {})
        register = schema["paths"]["/api/v1/components/register"]["post"]
        assert bool(schemes) == (token is not None), token
        assert ("security" in register) == (token is not None), token
        assert ("401" in register["responses"]) == (token is not None), token


def test_an_idempotency_key_returns_the_same_lct(bridge: BridgeProcess) -> None:
    with client_for(bridge) as client:
        a = client.register_component("A").component_id
        b = client.register_component("B").component_id
    body = {"creator": "alice", "component_a": a, "component_b": b}
    url = f"{bridge.url}/api/v1/lct/create"
    first = httpx.post(url, json=body, headers={"Idempotency-Key": "k1"}, timeout=5)
    again = httpx.post(url, json=body, headers={"Idempotency-Key": "k1"}, timeout=5)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    other = httpx.post(
        url, json={**body, "context": "x"}, headers={"Idempotency-Key": "k1"}, timeout=5
    )
    assert other.status_code == 409
    fresh = httpx.post(url, json=body, headers={"Idempotency-Key": "k2"}, timeout=5)
    assert fresh.json()["lct_id"] != first.json()["lct_id"]


def test_verify_cli_detects_a_record_changed_in_the_database(
    bridge: BridgeProcess, tmp_path: Path
) -> None:
    with client_for(bridge) as client:
        a = client.register_component("A").component_id
        client.create_lct(a, client.register_component("B").component_id)
    bridge.stop()
    verify = [sys.executable, "-m", "modbatt", "api-bridge", "verify", "--db", str(bridge.db)]
    ok = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    with sqlite3.connect(bridge.db) as db:
        db.execute("UPDATE components SET component_data = 'EVIL' WHERE component_id = ?", (a,))
    bad = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert a in bad.stderr and "component_data" in bad.stderr


def test_verify_cli_finds_the_last_write_removed(bridge: BridgeProcess) -> None:
    """A trailing record deleted from a served database verified as intact (issue 15)."""
    with client_for(bridge) as client:
        a = client.register_component("A").component_id
        client.register_component("B")
        last = client.verify_component(a, "bob").txhash
    bridge.stop()
    verify = [sys.executable, "-m", "modbatt", "api-bridge", "verify", "--db", str(bridge.db)]
    ok = subprocess.run([*verify, "--expect", last], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert f"3 records, head {last}" in ok.stdout
    with sqlite3.connect(bridge.db) as db:
        db.execute("DELETE FROM ledger WHERE seq = 3")
    bad = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "records were removed from its end" in bad.stderr
