"""Errors a user can act on, each with its documented exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``: no traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_NOT_READY = 3
EXIT_ENTRIES_FAILED = 4
EXIT_VERIFY_FAILED = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class BfclExtError(Exception):
    """Base class: a message meant for the user and the exit code that goes with it."""

    exit_code = 1


class ConfigError(BfclExtError):
    """A setting has a bad value. The message names the setting and the value."""

    exit_code = EXIT_CONFIG

    def __init__(self, setting: str, value: object, reason: str) -> None:
        super().__init__(f"{setting}={value!r}: {reason}")
        self.setting = setting
        self.value = value


class NotReadyError(BfclExtError):
    """The server could not be reached, refused us, or never became ready."""

    exit_code = EXIT_NOT_READY


class EntriesFailedError(BfclExtError):
    """Some entries still have no model answer after every retry."""

    exit_code = EXIT_ENTRIES_FAILED

    def __init__(self, message: str, failed_ids: list[str]) -> None:
        super().__init__(message)
        self.failed_ids = failed_ids


class VerificationError(BfclExtError):
    """A bundle is damaged, unsafe to unpack, or does not re-score to the scores it records."""

    exit_code = EXIT_VERIFY_FAILED
