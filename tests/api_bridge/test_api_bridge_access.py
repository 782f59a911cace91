"""Who may read keys: per-creator tokens, one shared token, open on loopback (issue 15, part 3).

Against the real `modbatt api-bridge serve` over loopback HTTP. Before per-creator tokens, any
local client (or any holder of the one token) could name any creator and read its halves.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import modbatt.cli.base as cli_base
import modbatt.cli.commands as cli
from modbatt import errors
from modbatt.api_bridge.access import Access, AccessConfigError, is_loopback, load_tokens
from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig, RetryPolicy
from tests.api_bridge_server import BridgeProcess

FAST_RETRY = RetryPolicy(attempts=1, base_delay_s=0.05, max_delay_s=0.1, total_time_s=3.0)


def add_token(tokens: Path, creator: str, capsys: pytest.CaptureFixture[str]) -> str:
    """`modbatt api-bridge add-token`, as an operator runs it; returns the printed token."""
    assert cli.main(["api-bridge", "add-token", "--tokens", str(tokens), creator]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40
    return token


class Tokens(dict[str, str]):
    """Each creator's token; shown as the creators only, should a failing test print it."""

    def __repr__(self) -> str:
        return f"Tokens({sorted(self)})"


@pytest.fixture
def tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Tokens:
    file = tmp_path / "tokens.json"
    return Tokens({creator: add_token(file, creator, capsys) for creator in ("alice", "bob")})


@pytest.fixture
def per_creator(tmp_path: Path, tokens: Tokens) -> Iterator[BridgeProcess]:
    server = BridgeProcess(tmp_path / "bridge.sqlite3", tokens=tmp_path / "tokens.json").start()
    yield server
    server.stop()


def client(server: BridgeProcess, creator: str, token: str | None) -> ApiBridgeClient:
    return ApiBridgeClient(
        ApiBridgeConfig(base_url=server.url, creator=creator, token=token, retry=FAST_RETRY)
    )


def refused(call: object, *args: object) -> int:
    with pytest.raises(errors.ApiBridgeRequestError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.status


def test_with_per_creator_tokens_a_client_reads_only_its_own_creators_lcts(
    per_creator: BridgeProcess, tokens: Tokens
) -> None:
    with client(per_creator, "alice", tokens["alice"]) as alice:
        a = alice.register_component("A").component_id
        b = alice.register_component("B").component_id
        lct = alice.create_lct(a, b).record.lct_id
        assert alice.recover_lct_keys(lct).lct_id == lct
        assert alice.get_lct(lct).creator == "alice"
    # Bob's token, naming alice or himself: nothing of alice's.
    with client(per_creator, "alice", tokens["bob"]) as bob_as_alice:
        assert refused(bob_as_alice.recover_lct_keys, lct) == 403
        assert refused(bob_as_alice.register_component, "C") == 403
        assert refused(bob_as_alice.create_lct, a, b) == 403
        assert refused(bob_as_alice.update_lct_status, lct, "revoked") == 403
        assert refused(bob_as_alice.get_lct, lct) == 403
        assert refused(bob_as_alice.verify_component, a) == 403
    with client(per_creator, "bob", tokens["bob"]) as bob:
        assert refused(bob.recover_lct_keys, lct) == 403
        assert refused(bob.get_lct, lct) == 403
        assert bob.verify_component(a).verifier == "bob"  # verifying is for anyone, as himself
        assert bob.register_component("C").creator == "bob"
    # No token, or alice's token altered: 401.
    for token in (None, tokens["alice"][:-1] + ("A" if tokens["alice"][-1] != "A" else "B")):
        with client(per_creator, "alice", token) as stranger:
            assert refused(stranger.recover_lct_keys, lct) == 401
    response = httpx.get(
        f"{per_creator.url}/api/v1/lct/{lct}/keys",
        params={"creator": "alice"},
        headers={"Authorization": f"Bearer {tokens['bob']}"},
        timeout=5,
    )
    assert response.status_code == 403
    assert "halves" not in response.text and "key_half" not in response.text


def test_the_startup_line_says_the_access_mode(
    tmp_path: Path, tokens: Tokens, per_creator: BridgeProcess
) -> None:
    per_creator.stop()
    shared = BridgeProcess(tmp_path / "shared.sqlite3", token="s3cret-token").start()
    shared.stop()
    opened = BridgeProcess(tmp_path / "open.sqlite3").start()
    opened.stop()
    assert "access: per-creator tokens (2 creators)" in per_creator.stderr
    assert "access: one shared token (development)" in shared.stderr
    assert "access: open (development, loopback only)" in opened.stderr
    for server in (per_creator, shared, opened):
        assert "s3cret" not in server.stderr
        assert not any(token in server.stderr for token in tokens.values())


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "bridge.example"])
def test_an_open_bridge_is_refused_on_an_address_others_can_reach(
    tmp_path: Path, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "bridge.sqlite3"
    code = cli.main(["api-bridge", "serve", "--db", str(db), "--host", host, "--port", "1"])
    assert code == cli_base.EXIT_USAGE
    err = capsys.readouterr().err
    assert "refusing to serve" in err and "--tokens" in err
    assert not db.exists()  # refused before anything was opened


def test_loopback_addresses_are_recognised() -> None:
    for host in ("127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "bridge.example", ""):
        assert not is_loopback(host), host
    Access(shared_token="t").check_address("0.0.0.0")  # development, said in the startup line
    Access(creator_digests={"alice": "0" * 64}).check_address("0.0.0.0")
    with pytest.raises(AccessConfigError):
        Access().check_address("0.0.0.0")


def test_the_tokens_file_keeps_no_token(tmp_path: Path, tokens: Tokens) -> None:
    file = tmp_path / "tokens.json"
    text = file.read_text()
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert not any(token in text for token in tokens.values())
    assert set(load_tokens(file)) == {"alice", "bob"}
    assert "alice" not in repr(Access(creator_digests=load_tokens(file)))


def test_a_new_token_replaces_the_old_one(
    tmp_path: Path, tokens: Tokens, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "tokens.json"
    before = load_tokens(file)
    new = add_token(file, "alice", capsys)
    after = load_tokens(file)
    assert after["bob"] == before["bob"] and after["alice"] != before["alice"]
    access = Access(creator_digests=after)
    assert access.caller(new) == "alice"
    with pytest.raises(PermissionError):
        access.caller(tokens["alice"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no tokens file"),
        ("not json", "not a tokens file"),
        ('{"creators": {}}', "no creators"),
        ('{"creators": {"al ice": {"sha256": "' + "0" * 64 + '"}}}', "not a valid entry"),
        ('{"creators": {"alice": {"sha256": "xyz"}}}', "not a valid entry"),
    ],
)
def test_a_bad_tokens_file_is_a_clear_usage_error(
    tmp_path: Path, content: str | None, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "tokens.json"
    if content is not None:
        file.write_text(content)
    code = cli.main(
        ["api-bridge", "serve", "--db", str(tmp_path / "b.sqlite3"), "--tokens", str(file)]
    )
    assert code == cli_base.EXIT_USAGE
    assert problem in capsys.readouterr().err


def test_tokens_and_a_shared_token_are_not_mixed(
    tmp_path: Path, tokens: Tokens, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "tokens.json"
    code = cli.main(["api-bridge", "serve", "--tokens", str(file), "--token", "x"])
    assert code == cli_base.EXIT_USAGE
    assert "two access modes" in capsys.readouterr().err
    assert json.loads(file.read_text())["creators"].keys() == {"alice", "bob"}


def test_the_schema_of_a_per_creator_bridge_declares_bearer_auth(
    per_creator: BridgeProcess,
) -> None:
    schema = httpx.get(f"{per_creator.url}/openapi.json", timeout=5).json()
    keys = schema["paths"]["/api/v1/lct/{lct_id}/keys"]["get"]
    assert schema["components"]["securitySchemes"]
    assert "security" in keys and {"401", "403"} <= set(keys["responses"])
