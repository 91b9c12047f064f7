"""ctypes declarations of the C ABI (include/lockstep.h). Every function gets argtypes and
restype, so a wrong Python type fails loudly instead of corrupting memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Dict, Iterator, Optional

# The ABI this binding is written for; a library that reports another is refused.
ABI_VERSION = 1

SYNC_OK = 0
SYNC_NOT_FOUND = 1
SYNC_NOT_READY = 2
SYNC_BUFFER_TOO_SMALL = 3
SYNC_UNREACHABLE = 7
SYNC_UNAUTHORIZED = 10

CODE_NAMES = {
    0: "SYNC_OK",
    1: "SYNC_NOT_FOUND",
    2: "SYNC_NOT_READY",
    3: "SYNC_BUFFER_TOO_SMALL",
    4: "SYNC_NULL_PARAMETER",
    5: "SYNC_INVALID_PARAMETER",
    6: "SYNC_BAD_OPTION",
    7: "SYNC_UNREACHABLE",
    8: "SYNC_THREAD_FAILED",
    9: "SYNC_PANIC",
    10: "SYNC_UNAUTHORIZED",
}


class LockstepError(Exception):
    """A status from liblockstep, with its message."""

    code: int
    message: str

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} ({CODE_NAMES.get(code, code)})")
        self.code = code
        self.message = message


class NotReady(LockstepError):
    """No version has arrived from the data server yet."""


class Unreachable(LockstepError):
    """The data server could not be reached, or sent nothing usable, in time (code 7)."""


class Unauthorized(LockstepError):
    """The data server refused the read token (HTTP 401 or 403; code 10): it was reached,
    and the same token will not do better."""


_CLASSES = {SYNC_NOT_READY: NotReady, SYNC_UNREACHABLE: Unreachable,
            SYNC_UNAUTHORIZED: Unauthorized}


class sync_stats(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("lagging", ctypes.c_uint32),
        ("active_version", ctypes.c_uint64),
        ("staged_version", ctypes.c_uint64),
        ("next_activation_us", ctypes.c_int64),
        ("last_checkin_us", ctypes.c_int64),
        ("consecutive_failures", ctypes.c_uint64),
        ("clock_offset_us", ctypes.c_int64),
        ("clock_error_us", ctypes.c_int64),
        ("checkins", ctypes.c_uint64),
        ("activations", ctypes.c_uint64),
        ("rejected_versions", ctypes.c_uint64),
        ("last_activation_us", ctypes.c_int64),
        ("last_activation_mono_ns", ctypes.c_int64),
        ("next_activation_mono_ns", ctypes.c_int64),
        ("host_role", ctypes.c_uint32),
        ("unconfirmed", ctypes.c_uint32),
        ("confirmed_us", ctypes.c_int64),
        ("cache_failures", ctypes.c_uint64),
        ("last_failure", ctypes.c_uint32),
        ("bytes_downloaded", ctypes.c_uint64),
        ("deltas_applied", ctypes.c_uint64),
        ("full_downloads", ctypes.c_uint64),
    ]


_u8p = ctypes.POINTER(ctypes.c_uint8)
_handle = ctypes.c_void_p
_snapshot = ctypes.c_void_p
_size = ctypes.c_size_t

_SIGNATURES = {
    "sync_abi_version": ([], ctypes.c_uint32),
    "sync_version": ([], ctypes.c_char_p),
    "sync_open": ([ctypes.c_char_p, _size, ctypes.POINTER(_handle)], ctypes.c_uint32),
    "sync_close": ([_handle], None),
    # The read path: pointers declared as void * and passed as plain addresses, the cheapest
    # conversion ctypes has (see _client.Client.get).
    "sync_get": ([_handle, ctypes.c_char_p, _size, ctypes.c_void_p, _size, ctypes.c_void_p],
                 ctypes.c_uint32),
    "sync_active_version": ([_handle, ctypes.POINTER(ctypes.c_uint64)], ctypes.c_uint32),
    "sync_staged_version": ([_handle, ctypes.POINTER(ctypes.c_uint64),
                             ctypes.POINTER(ctypes.c_int64)], ctypes.c_uint32),
    "sync_next_activation": ([_handle, ctypes.POINTER(ctypes.c_int64)], ctypes.c_uint32),
    "sync_stats_get": ([_handle, ctypes.POINTER(sync_stats)], ctypes.c_uint32),
    "sync_snapshot_acquire": ([_handle, ctypes.POINTER(_snapshot)], ctypes.c_uint32),
    "sync_snapshot_get": ([_snapshot, ctypes.c_char_p, _size, ctypes.POINTER(_u8p),
                           ctypes.POINTER(_size)], ctypes.c_uint32),
    "sync_snapshot_version": ([_snapshot, ctypes.POINTER(ctypes.c_uint64)], ctypes.c_uint32),
    "sync_snapshot_release": ([_snapshot], None),
    "sync_error_message": ([ctypes.c_uint32, ctypes.c_char_p, _size, ctypes.POINTER(_size)],
                           ctypes.c_uint32),
    "sync_last_error": ([_handle, ctypes.c_char_p, _size, ctypes.POINTER(_size)],
                        ctypes.c_uint32),
}

_lock = threading.Lock()
_loaded: Dict[str, ctypes.CDLL] = {}


def _candidates(explicit: Optional[str]) -> Iterator[str]:
    if explicit:
        yield explicit
        return
    env = os.environ.get("LOCKSTEP_LIBRARY")
    if env:
        yield env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "liblockstep.so")
    # A checkout: bindings/python/lockstep/ -> the repository's target directory.
    repo = os.path.abspath(os.path.join(here, "..", "..", ".."))
    for profile in ("release", "debug"):
        yield os.path.join(repo, "target", profile, "liblockstep.so")
    found = ctypes.util.find_library("lockstep")
    if found:
        yield found


def load_library(path: Optional[str] = None) -> ctypes.CDLL:
    """Loads liblockstep, checks its ABI version and declares every function. Each path is
    loaded once per process; later calls return the same library."""
    with _lock:
        tried = []
        for candidate in _candidates(path):
            if candidate in _loaded:
                return _loaded[candidate]
            if os.path.sep in candidate and not os.path.exists(candidate):
                tried.append(candidate)
                continue
            lib = ctypes.CDLL(candidate)
            for name, (argtypes, restype) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes = argtypes
                fn.restype = restype
            abi = lib.sync_abi_version()
            if abi != ABI_VERSION:
                raise LockstepError(
                    5, f"{candidate} has ABI version {abi}; this binding needs {ABI_VERSION}")
            _loaded[candidate] = lib
            return lib
        raise OSError("liblockstep.so not found (tried: %s); set LOCKSTEP_LIBRARY"
                      % ", ".join(tried) if tried else "liblockstep.so not found; set LOCKSTEP_LIBRARY")


def error_for(lib: ctypes.CDLL, code: int) -> LockstepError:
    """The exception for a status, carrying the library's message."""
    buf = ctypes.create_string_buffer(1024)
    n = ctypes.c_size_t(0)
    lib.sync_error_message(code, buf, len(buf), ctypes.byref(n))
    message = buf.value.decode("utf-8", "replace")
    return _CLASSES.get(code, LockstepError)(code, message)
