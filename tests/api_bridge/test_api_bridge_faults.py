"""The client under faults: a real HTTP server on loopback that answers badly on purpose."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from modbatt import errors
from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig, RetryPolicy
from modbatt.tools.demo import free_port

POLICY = RetryPolicy(attempts=4, base_delay_s=0.05, max_delay_s=0.2, total_time_s=3.0)
HALF = "ab" * 64
COMPONENT = {
    "component_id": "COMP-alice-1753769423",
    "component_identity": "COMP-alice-1753769423",
    "lct_id": "lct_COMP-alice-1753769423",
    "status": "registered",
    "txhash": "0" * 64,
    "creator": "alice",
    "component_data": "MODBATT-PACK-RC001-A",
    "context": "",
}
LCT = {
    "lct_id": "lct_1",
    "component_a": "COMP-a-1",
    "component_b": "COMP-b-1",
    "status": "active",
    "created_at": "2026-11-28T00:00:00Z",
    "creator": "alice",
    "txhash": "1" * 64,
    "device_key_half": HALF,
    "lct_key_half": HALF[::-1],
    "component_b_device_key_half": "cd" * 64,
    "component_b_lct_key_half": "ef" * 64,
}


@dataclass
class Answer:
    """One canned answer: status, JSON (or raw bytes), headers, a delay, a short write."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    declared_length: int | None = None  # a Content-Length larger than what is sent


class FaultServer:
    """Answers each request with the next canned Answer (repeating the last one)."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.requests: list[str] = []
        self.idempotency_keys: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append(f"{self.command} {self.path}")
                server.idempotency_keys.append(self.headers.get("Idempotency-Key"))
                index = min(len(server.requests), len(server.answers)) - 1
                answer = server.answers[index]
                time.sleep(answer.delay_s)
                payload = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(answer.declared_length or len(payload)))
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)
                if answer.declared_length:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = _answer  # noqa: N815 (http.server's names)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def client(url: str, timeout_s: float = 1.0) -> ApiBridgeClient:
    return ApiBridgeClient(ApiBridgeConfig(base_url=url, timeout_s=timeout_s, retry=POLICY))


@pytest.fixture
def retries_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="modbatt.api_bridge.client"):
        yield caplog


def test_server_down_fails_clearly_within_the_time_bound(
    retries_logged: pytest.LogCaptureFixture,
) -> None:
    started = time.monotonic()
    with (
        client(f"http://127.0.0.1:{free_port()}") as c,
        pytest.raises(errors.ApiBridgeUnavailableError, match="gave up after 4 attempt"),
    ):
        c.register_component("MODBATT-PACK-RC001-A")
    assert time.monotonic() - started < POLICY.total_time_s
    assert len(retries_logged.records) == 3
    assert all("retry" in r.getMessage() for r in retries_logged.records)


def test_5xx_is_retried_then_succeeds() -> None:
    with FaultServer(
        [Answer(500, {"error": "boom"}), Answer(503, {}), Answer(200, COMPONENT)]
    ) as s:
        with client(s.url) as c:
            assert (
                c.register_component("MODBATT-PACK-RC001-A").component_id
                == COMPONENT["component_id"]
            )
        assert len(s.requests) == 3


def test_persistent_500_gives_up_after_the_attempt_bound() -> None:
    with FaultServer([Answer(500, {"error": "boom"})]) as s, client(s.url) as c:
        with pytest.raises(errors.ApiBridgeUnavailableError, match="HTTP 500"):
            c.get_component("COMP-alice-1")
        assert len(s.requests) == POLICY.attempts


def test_429_honours_retry_after() -> None:
    answers = [
        Answer(429, {"error": "slow down"}, headers=(("Retry-After", "0.3"),)),
        Answer(200, COMPONENT),
    ]
    with FaultServer(answers) as s, client(s.url) as c:
        started = time.monotonic()
        c.get_component("COMP-alice-1753769423")
        assert time.monotonic() - started >= 0.3


def test_other_4xx_is_not_retried() -> None:
    with FaultServer([Answer(400, {"error": "creator is required"})]) as s, client(s.url) as c:
        with pytest.raises(errors.ApiBridgeRequestError, match="creator is required") as caught:
            c.register_component("x")
        assert caught.value.status == 400
        assert len(s.requests) == 1


def test_a_slow_server_times_out_within_the_total_bound() -> None:
    with FaultServer([Answer(200, COMPONENT, delay_s=1.0)]) as s, client(s.url, timeout_s=0.2) as c:
        started = time.monotonic()
        with pytest.raises(errors.ApiBridgeUnavailableError, match="Timeout"):
            c.get_component("COMP-alice-1753769423")
        assert time.monotonic() - started < POLICY.total_time_s + 0.5


def test_truncated_json_is_a_clear_error() -> None:
    with FaultServer([Answer(200, raw=b'{"component_id": "COMP-al')]) as s, client(s.url) as c:
        with pytest.raises(errors.ApiBridgeResponseError, match="not valid JSON"):
            c.get_component("COMP-alice-1753769423")


def test_a_connection_cut_mid_answer_is_retried() -> None:
    cut = Answer(200, COMPONENT, declared_length=10_000)
    with FaultServer([cut, Answer(200, COMPONENT)]) as s, client(s.url) as c:
        assert c.get_component("COMP-alice-1753769423").creator == "alice"
        assert len(s.requests) == 2


def test_a_response_missing_fields_is_a_clear_error() -> None:
    with FaultServer([Answer(200, {"component_id": "COMP-alice-1"})]) as s, client(s.url) as c:
        with pytest.raises(errors.ApiBridgeResponseError, match=r"register.*invalid"):
            c.register_component("x")


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"device_key_half": "generated_device_key_half"}, "device_key_half", "placeholder"),
        ({"lct_key_half": "generated_lct_key_half"}, "lct_key_half", "placeholder"),
        ({"component_b_device_key_half": None}, "component_b_device_key_half", "missing"),
        ({"lct_key_half": "AB" * 64}, "lct_key_half", "lowercase hexadecimal"),
        ({"device_key_half": "ab" * 63}, "device_key_half", "126 hex characters"),
        ({"component_b_lct_key_half": 12}, "component_b_lct_key_half", "not a hex string"),
        ({"device_key_half": "00" * 64}, "device_key_half", "all zero"),
    ],
)
def test_bad_key_halves_are_refused_by_name(
    changes: dict[str, Any], field: str, problem: str
) -> None:
    body = {k: v for k, v in {**LCT, **changes}.items() if v is not None}
    with FaultServer([Answer(200, body)]) as s, client(s.url) as c:
        with pytest.raises(errors.KeyHalfError, match=problem) as caught:
            c.create_lct("COMP-a-1", "COMP-b-1")
        assert caught.value.field == field
        assert HALF not in str(caught.value)


def test_the_public_bridges_answer_is_refused() -> None:
    # What the public Go API-Bridge returns from lct/create today (REFERENCE §1).
    public = {k: v for k, v in LCT.items() if not k.startswith("component_b_")}
    public.update(
        device_key_half="generated_device_key_half", lct_key_half="generated_lct_key_half"
    )
    with FaultServer([Answer(200, public)]) as s, client(s.url) as c:
        with pytest.raises(errors.KeyHalfError, match="placeholder"):
            c.create_lct("COMP-a-1", "COMP-b-1")


def test_lct_create_retries_carry_one_idempotency_key() -> None:
    with FaultServer([Answer(502, {}), Answer(200, LCT)]) as s, client(s.url) as c:
        c.create_lct("COMP-a-1", "COMP-b-1")
        c.create_lct("COMP-a-1", "COMP-b-1")
    first, retry, second = s.idempotency_keys
    assert first is not None and first == retry  # the same call's retry: the same key
    assert second != first  # a new call: a new key
