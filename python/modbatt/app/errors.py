"""What the app's workflows raise: each names the step and the reason, never a key."""

from __future__ import annotations

from modbatt.errors import ModbattError
from modbatt.state.stores import StoreCorruptError


class AppError(ModbattError):
    """A step of the app's workflow failed; the message names the step and the reason."""


class PlainCommandError(AppError):
    """A command to an unpaired module would reach every unpaired module: not confirmed."""


class KeystoreLostError(AppError, StoreCorruptError):
    """The app's keystore has no slot that verifies: its keys are lost (exit status 4)."""


class PackSilentError(AppError):
    """The pack controller did not answer a request, through every retry."""


class PackRefusedError(AppError):
    """The pack controller answered a request with an `error`."""
