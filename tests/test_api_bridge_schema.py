"""Property-based test of the running API-Bridge with schemathesis, against its /openapi.json.

Bounded (25 examples per operation) so it finishes well within a minute: no 5xx, and every
answer conforms to the schema (status code documented, content type and body valid). The
operations are driven through schemathesis's hypothesis strategies directly (its pytest
decorators do not support pytest 9 yet).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation

from tests.api_bridge_server import BridgeProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    server = BridgeProcess(Path(tmp_path_factory.mktemp("schema")) / "bridge.sqlite3").start()
    try:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    finally:
        server.stop()


def operations(api_schema: schemathesis.BaseSchema) -> list[APIOperation[Any, Any, Any, Any]]:
    """Every operation of the schema; an operation schemathesis cannot read fails the test."""
    found = []
    for result in api_schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    return found


def test_every_operation_is_covered(api_schema: schemathesis.BaseSchema) -> None:
    paths = {operation.path for operation in operations(api_schema)}
    assert {
        "/health",
        "/api/v1/components/register",
        "/api/v1/lct/create",
        "/api/v1/lct/{lct_id}/status",
        "/api/v1/lct/{lct_id}/keys",
    } <= paths


def test_no_5xx_and_every_answer_conforms(api_schema: schemathesis.BaseSchema) -> None:
    for operation in operations(api_schema):

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: Case[Any]) -> None:
            case.call_and_validate(checks=CHECKS)

        check()


def test_a_method_the_schema_does_not_declare_gets_405_with_allow(
    api_schema: schemathesis.BaseSchema,
) -> None:
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
            response = httpx.request(method, url, timeout=5)
            assert response.status_code == 405, (method, url)
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed == methods, (method, path, allowed)


def _another_route_takes(declared: dict[str, set[str]], concrete: str, method: str) -> bool:
    for template, methods in declared.items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if method in methods and re.fullmatch(pattern, concrete):
            return True
    return False
