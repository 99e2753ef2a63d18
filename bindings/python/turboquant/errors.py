"""Exceptions raised by the bindings: one class per tq_status, carrying the library's own message."""

from __future__ import annotations


class TurboQuantError(Exception):
    """A libturboquant call failed.

    ``status`` is the tq_status value, ``status_name`` its name (tq_status_to_string), ``function`` the
    C function that failed and ``message`` the library's tq_last_error_message() for that call.
    """

    status: int = -1

    def __init__(self, message: str, status: int | None = None, status_name: str = "",
                 function: str = ""):
        super().__init__(f"{function}: {message}" if function else message)
        if status is not None:
            self.status = status
        self.status_name = status_name
        self.function = function
        self.message = message


class LibraryNotFoundError(TurboQuantError, OSError):
    """libturboquant.so could not be found or loaded, or does not match these bindings."""


class InvalidArgumentError(TurboQuantError, ValueError):
    status = 1


class NullPointerError(TurboQuantError, ValueError):
    status = 2


class UnsupportedError(TurboQuantError, ValueError):
    status = 3


class AbiMismatchError(TurboQuantError):
    status = 4


class NonFiniteError(TurboQuantError, ValueError):
    status = 5


class OutOfMemoryError(TurboQuantError, MemoryError):
    status = 6


class CapacityExceededError(TurboQuantError):
    status = 7


class BackendUnavailableError(TurboQuantError):
    status = 8


class BackendError(TurboQuantError):
    status = 9


class TurboQuantIOError(TurboQuantError, OSError):
    status = 10


class CorruptDataError(TurboQuantError):
    status = 11


class IncompatibleError(TurboQuantError):
    status = 12


class PoisonedError(TurboQuantError):
    status = 13


class InternalError(TurboQuantError):
    status = 14


ERROR_BY_STATUS: dict[int, type[TurboQuantError]] = {
    cls.status: cls
    for cls in (InvalidArgumentError, NullPointerError, UnsupportedError, AbiMismatchError,
                NonFiniteError, OutOfMemoryError, CapacityExceededError, BackendUnavailableError,
                BackendError, TurboQuantIOError, CorruptDataError, IncompatibleError, PoisonedError,
                InternalError)
}
