"""LinkKey: the key schedule's inputs, its checks, and what it never reveals."""

from __future__ import annotations

import pytest

from modbatt import LinkKey, errors
from modbatt.protocol.reference import aes_cmac, hkdf_sha256

HALF_A = bytes(range(64))
HALF_B = bytes(range(64, 128))


def test_argument_order_does_not_matter() -> None:
    one = LinkKey(HALF_A, "COMP-a", HALF_B, "COMP-b")
    two = LinkKey(HALF_B, "COMP-b", HALF_A, "COMP-a")
    assert one.fingerprint == two.fingerprint


def test_bytes_like_halves_are_accepted_so_callers_can_wipe_them() -> None:
    half = bytearray(HALF_A)
    key = LinkKey(half, "COMP-a", memoryview(HALF_B), "COMP-b")
    half[:] = bytes(64)  # the caller wipes its copy; the key is unaffected
    assert key.fingerprint == LinkKey(HALF_A, "COMP-a", HALF_B, "COMP-b").fingerprint


def test_the_dh_secret_changes_the_key() -> None:
    plain = LinkKey(HALF_A, "COMP-a", HALF_B, "COMP-b")
    with_dh = LinkKey(HALF_A, "COMP-a", HALF_B, "COMP-b", dh_secret=bytes(range(1, 33)))
    assert plain.fingerprint != with_dh.fingerprint


@pytest.mark.parametrize(
    ("half_a", "id_a", "half_b", "id_b", "dh", "error", "message"),
    [
        (HALF_A[:63], "a", HALF_B, "b", None, errors.KeyMaterialError, "64 bytes, got 63"),
        (bytes(64), "a", HALF_B, "b", None, errors.KeyMaterialError, "all zero"),
        (HALF_A, "a", HALF_A, "b", None, errors.KeyMaterialError, "identical"),
        (HALF_A, "a", HALF_B, "a", None, errors.InvalidArgumentError, "different component ids"),
        (HALF_A, "", HALF_B, "b", None, errors.InvalidArgumentError, "1 to 255 bytes"),
        (HALF_A, "a", HALF_B, "b", bytes(32), errors.KeyMaterialError, "all zero"),
        (HALF_A, "a", HALF_B, "b", bytes(range(31)), errors.KeyMaterialError, "32 bytes"),
    ],
)
def test_bad_material_gets_a_clear_error_without_the_bytes(
    half_a: bytes,
    id_a: str,
    half_b: bytes,
    id_b: str,
    dh: bytes | None,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message) as caught:
        LinkKey(half_a, id_a, half_b, id_b, dh)
    assert isinstance(caught.value, ValueError)
    assert HALF_A.hex()[8:24] not in str(caught.value)
    assert HALF_B.hex()[8:24] not in str(caught.value)


def test_a_non_bytes_half_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        LinkKey("not bytes", "a", HALF_B, "b")  # type: ignore[arg-type]


def test_repr_shows_a_fingerprint_only() -> None:
    key = LinkKey(HALF_A, "COMP-a", HALF_B, "COMP-b")
    assert repr(key) == f"LinkKey(<redacted>, fingerprint={key.fingerprint})"
    assert len(key.fingerprint) == 16
    assert not hasattr(key, "key") and not hasattr(key, "bytes")


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf_sha256(bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_rfc5869_case_3_empty_salt_and_info() -> None:
    okm = hkdf_sha256(bytes([0x0B] * 22), b"", b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


@pytest.mark.parametrize(
    ("length", "tag"),
    [
        (0, "bb1d6929e95937287fa37d129b756746"),
        (16, "070a16b46b4d4144f79bdd9dd04a287c"),
        (40, "dfa66747de9ae63030ca32611497c827"),
        (64, "51f0bebf7e3b9d92fc49741779363cfe"),
    ],
)
def test_aes_cmac_rfc4493(length: int, tag: str) -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    message = bytes.fromhex(
        "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
        "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
    )
    assert aes_cmac(key, message[:length]).hex() == tag
