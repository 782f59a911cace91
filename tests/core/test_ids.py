"""CAN id helpers: `base << 18 | node` and the encryption flag E (bit 17)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import modbatt
from modbatt import _core


def test_reference_examples() -> None:
    assert modbatt.compose_id(0x500, 0xFF) == 0x1400_00FF
    assert modbatt.compose_id(0x502, 0x05) == 0x1408_0005
    assert modbatt.compose_id(0x514, 0x00) == 0x1450_0000
    assert modbatt.split_id(0x1408_0005) == (0x502, 0x05)


def test_encryption_flag_is_bit_17() -> None:
    assert modbatt.ENCRYPTION_FLAG == 0x0002_0000
    assert modbatt.set_encrypted(0x1408_0005) == 0x140A_0005
    assert modbatt.is_encrypted(0x140A_0005)
    assert not modbatt.is_encrypted(0x1408_0005)
    assert modbatt.clear_encrypted(0x140A_0005) == 0x1408_0005
    assert modbatt.SECURE_BITS == 0x0003_8000
    assert modbatt.logical_id(0x140B_8005) == 0x1408_0005


@pytest.mark.parametrize(("base", "node"), [(0x800, 0), (0, 0x100)])
def test_out_of_range_parts_are_refused(base: int, node: int) -> None:
    with pytest.raises(modbatt.errors.InvalidArgumentError):
        modbatt.compose_id(base, node)


@given(base=st.integers(0, 0x7FF), node=st.integers(0, 0xFF), e=st.booleans())
def test_split_inverts_compose_and_ignores_e(base: int, node: int, e: bool) -> None:
    can_id = modbatt.compose_id(base, node)
    if e:
        can_id = modbatt.set_encrypted(can_id)
    assert modbatt.split_id(can_id) == (base, node)


def test_frame_format_bits() -> None:
    assert [_core.frame_format(0x1408_0005 | f << 15) for f in range(4)] == [0, 1, 2, 3]
