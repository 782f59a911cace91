"""Property-based test of the running API-Bridge with schemathesis, against its /openapi.json.

Bounded (25 examples per operation) so it finishes well within a minute: no 5xx, and every
answer conforms to the schema (status code documented, content type and body valid), in each
access mode: open, one shared token, per-creator tokens (where half the cases name the token's
own creator, so that the requests get past the creator check). The
operations are driven through schemathesis's hypothesis strategies directly (its pytest
decorators do not support pytest 9 yet).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation

from modbatt.api_bridge.access import add_token
from tests.api_bridge_server import BridgeProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Served:
    """A running API-Bridge's schema, and the token and creator its requests carry."""

    schema: schemathesis.BaseSchema
    token: str | None = field(default=None, repr=False)
    creator: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    def get_base_url(self) -> str:
        return self.schema.get_base_url()


@pytest.fixture(scope="module", params=["open", "shared-token", "per-creator"])
def api_schema(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = Path(tmp_path_factory.mktemp("schema"))
    token, creator, tokens = None, None, None
    if request.param == "shared-token":
        token = "shared-" + secrets.token_urlsafe(16)
    elif request.param == "per-creator":
        tokens = folder / "tokens.json"
        token, _ = add_token(tokens, "alice")
        add_token(tokens, "bob")
        creator = "alice"
    server = BridgeProcess(folder / "bridge.sqlite3", token=token if tokens is None else None)
    server.tokens = tokens
    server.start()
    try:
        yield Served(schemathesis.openapi.from_url(f"{server.url}/openapi.json"), token, creator)
    finally:
        server.stop()


def operations(api_schema: Served) -> list[APIOperation[Any, Any, Any, Any]]:
    """Every operation of the schema; an operation schemathesis cannot read fails the test."""
    found = []
    for result in api_schema.schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    return found


def test_every_operation_is_covered(api_schema: Served) -> None:
    paths = {operation.path for operation in operations(api_schema)}
    assert {
        "/health",
        "/api/v1/components/register",
        "/api/v1/lct/create",
        "/api/v1/lct/{lct_id}/status",
        "/api/v1/lct/{lct_id}/keys",
    } <= paths


def test_no_5xx_and_every_answer_conforms(api_schema: Served) -> None:
    statuses: set[int] = set()
    for operation in operations(api_schema):

        @given(case=operation.as_strategy(), own_creator=st.booleans())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: Case[Any], own_creator: bool) -> None:
            if own_creator and api_schema.creator is not None:
                _name_the_creator(case, api_schema.creator)
            response = case.call_and_validate(headers=api_schema.headers, checks=CHECKS)
            statuses.add(response.status_code)

        check()
    # The token was accepted and requests got past the checks, in every mode.
    assert 200 in statuses and 401 not in statuses, statuses


def _name_the_creator(case: Case[Any], creator: str) -> None:
    """Make a generated request act as `creator` wherever it names one."""
    for field_name in ("creator", "verifier"):
        if isinstance(case.body, dict) and field_name in case.body:
            case.body[field_name] = creator
    if isinstance(case.query, dict) and "creator" in case.query:
        case.query["creator"] = creator


def test_a_method_the_schema_does_not_declare_gets_405_with_allow(api_schema: Served) -> None:
    """Every path answers each method its schema does not declare with 405 and an `Allow`
    header listing exactly the declared ones (the error handler once dropped the header)."""
    declared: dict[str, set[str]] = {}
    for operation in operations(api_schema):
        declared.setdefault(operation.path, set()).add(operation.method.upper())
    for path, methods in declared.items():
        concrete = path.replace("{component_id}", "COMP-x-1").replace("{lct_id}", "lct_x")
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - methods:
            if _another_route_takes(declared, concrete, method):
                continue  # GET /components/register is GET /components/{component_id}
            url = api_schema.get_base_url().rstrip("/") + concrete
            response = httpx.request(method, url, headers=api_schema.headers, timeout=5)
            assert response.status_code == 405, (method, url)
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed == methods, (method, path, allowed)


def _another_route_takes(declared: dict[str, set[str]], concrete: str, method: str) -> bool:
    for template, methods in declared.items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if method in methods and re.fullmatch(pattern, concrete):
            return True
    return False
