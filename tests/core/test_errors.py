"""Every Rust error reaches Python as one class of modbatt.errors, with its builtin mixin."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from modbatt import DROP_REASONS, Gateway, errors
from tests.conftest import STATUS_1, make_ends


def test_the_hierarchy_is_rooted_and_mixes_in_builtins() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.ModbattError)
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.KeyMaterialError, ValueError)
    assert issubclass(errors.MalformedFrameError, ValueError)
    assert issubclass(errors.NoRouteError, LookupError)
    reasons = {
        cls.reason
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.FrameRejectedError)
        and cls is not errors.FrameRejectedError
    }
    assert reasons == {name for _, name in DROP_REASONS}


def test_each_drop_reason_maps_to_its_class() -> None:
    ends = make_ends(max_failures=100)
    can_id, data, _, _ = ends.a.seal(STATUS_1, b"\x01")
    cases: list[tuple[Callable[[], object], type[errors.FrameRejectedError]]] = [
        (lambda: ends.b.open(STATUS_1, b"\x01"), errors.DowngradeError),
        (
            lambda: ends.b.open(can_id, data[:-1] + bytes([data[-1] ^ 1])),
            errors.AuthenticationError,
        ),
        (lambda: ends.b.open(can_id, b"\x00"), errors.MalformedFrameError),
        (lambda: ends.b.open(can_id | 2 << 15, bytes(8)), errors.UnpairedFrameError),
    ]
    for call, cls in cases:
        with pytest.raises(cls) as caught:
            call()
        assert caught.value.reason == cls.reason
    ends.b.open(can_id, data)
    with pytest.raises(errors.ReplayError):
        ends.b.open(can_id, data)


def test_gateway_step_checked_raises_the_drop() -> None:
    gateway = Gateway()
    with pytest.raises(errors.NoRouteError):
        gateway.step_checked(0, STATUS_1, b"")
    gateway.add_rule(0, 0, 0, 1, inbound=3)
    with pytest.raises(errors.NoSessionError):
        gateway.step_checked(0, STATUS_1 | 1 << 17, bytes(5))
    assert gateway.step(0, STATUS_1 | 1 << 17, bytes(5)) == []


def test_a_consumed_session_says_so() -> None:
    ends = make_ends()
    gateway = Gateway()
    gateway.install_session(0, ends.a)
    with pytest.raises(errors.InvalidArgumentError, match="installed in a gateway"):
        ends.a.seal(STATUS_1, b"")
    with pytest.raises(errors.InvalidArgumentError, match="already installed"):
        gateway.install_session(1, ends.a)
    assert "installed in a gateway" in repr(ends.a)
