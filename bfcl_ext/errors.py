"""Errors a user can act on, each with its documented exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``: no traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_NOT_READY = 3
EXIT_ENTRIES_FAILED = 4
EXIT_VERIFY_FAILED = 5
EXIT_OUTPUT = 6
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class BfclExtError(Exception):
    """Base class: a message meant for the user and the exit code that goes with it."""

    exit_code = EXIT_INTERNAL


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


class OutputError(BfclExtError):
    """An answer could not be written (read-only folder, disk full, no permission, quota): the run
    stops at once, keeping every answer already on disk. The message names the file and the cause."""

    exit_code = EXIT_OUTPUT

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}; the run stopped and the answers already written are "
                         "kept; make room or fix the folder, then run the same command again")
        self.path = path
        self.reason = reason


class WorkerError(BfclExtError):
    """A bug in a worker thread (anything but a transport failure or an ``OutputError``): the run stops
    at once instead of waiting for an answer that will never come."""

    exit_code = EXIT_INTERNAL
