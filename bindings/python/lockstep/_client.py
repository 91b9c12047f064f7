"""The Python face of a liblockstep handle."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref
from typing import Any, Dict, Optional, TypeVar, Union

from ._native import (SYNC_BUFFER_TOO_SMALL, SYNC_NOT_FOUND, SYNC_NOT_READY, SYNC_OK,
                      LockstepError, error_for, load_library, sync_stats)

Key = Union[str, bytes, bytearray, memoryview]
T = TypeVar("T")

log = logging.getLogger("lockstep")

# How often the health watcher reads a client's counters, in seconds: often enough that a log
# line follows an outage by about one check-in period, rare enough to cost nothing.
_WATCH_PERIOD_S = 1.0


def _key(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


class Client:
    """One handle on a data server: a background retrieval thread and the staged and active
    versions. Reads never touch the network. Safe to share between threads, and across
    ``fork()`` (gunicorn ``--preload``): a child keeps the data and restarts retrieval itself.
    """

    def __init__(self, url: str = "http://127.0.0.1:7420", *, token: Optional[str] = None,
                 name: Optional[str] = None, bootstrap_wait: float = 5.0,
                 allow_not_ready: bool = False, connect_timeout: Optional[float] = None,
                 checkin_timeout: Optional[float] = None,
                 download_timeout: Optional[float] = None,
                 cache_dir: Optional[Union[str, os.PathLike]] = None,
                 ca_file: Optional[Union[str, os.PathLike]] = None,
                 blob_url: Optional[str] = None,
                 library: Optional[str] = None) -> None:
        """Opens a handle; waits up to ``bootstrap_wait`` for the version active now.

        ``url``: a data server, or several separated by ``,`` (the retrieval thread stays
        with one while it answers and moves to the next when it fails). ``token``: the read
        token. ``name``: this process in ``lockstep status``. ``bootstrap_wait`` (seconds,
        default 5): how long to wait for data before giving up; with ``allow_not_ready`` the
        client opens anyway and reads raise :class:`NotReady` until data arrives.
        ``connect_timeout``, ``checkin_timeout``, ``download_timeout``: the retrieval
        thread's network timeouts, in seconds (None: the library's 2, 5 and 120 s).
        ``cache_dir``: the host cache shared by this host's processes (None: the library's
        default, ``$LOCKSTEP_CACHE_DIR`` or ``/var/tmp/lockstep-<uid>``; ``""``: off, this
        process on its own). ``ca_file``: a PEM file of the certificate authorities an
        ``https://`` data server is verified against (None: the system's roots). ``blob_url``:
        an HTTP cache in front of the data servers that version downloads go through (None:
        the data server itself; check-ins always go there). ``library``:
        the path of liblockstep.so (None: the one in this
        package, or ``$LOCKSTEP_LIBRARY``; see :func:`load_library`).

        Raises :class:`Unauthorized` (code 10) when the data server refused the token,
        :class:`Unreachable` (code 7) when no data arrived in time, both
        :class:`LockstepError`, and that with code 6 for a bad option."""
        self._lib = load_library(library)
        pairs = [("url", url), ("bootstrap_wait_ms", _ms(bootstrap_wait)),
                 ("allow_not_ready", "1" if allow_not_ready else "0")]
        if cache_dir is not None:
            pairs.append(("cache_dir", str(cache_dir)))
        if token:
            pairs.append(("token", token))
        if ca_file is not None:
            pairs.append(("ca_file", str(ca_file)))
        if blob_url:
            pairs.append(("blob_url", blob_url))
        if name:
            pairs.append(("name", name))
        for key, value in (("connect_timeout_ms", connect_timeout),
                           ("checkin_timeout_ms", checkin_timeout),
                           ("download_timeout_ms", download_timeout)):
            if value is not None:
                pairs.append((key, _ms(value)))
        for key, value in pairs:
            # ',' separates the data servers of url (a list: "http://a:7420,http://b:7420").
            banned = ";\n" if key == "url" else ";,\n"
            if any(c in str(value) for c in banned):
                raise ValueError(f"option {key} may not contain {banned!r}")
        options = ";".join(f"{k}={v}" for k, v in pairs).encode("utf-8")
        handle = ctypes.c_void_p()
        code = self._lib.sync_open(options, len(options), ctypes.byref(handle))
        if code != SYNC_OK:
            raise error_for(self._lib, code)
        self._handle = handle
        self._handle_addr = handle.value
        self._buffers = threading.local()
        self._sync_get = self._lib.sync_get
        # The watcher's stats call and close() must never overlap (sync_close frees the
        # handle); reads do not take this lock.
        self._close_lock = threading.Lock()
        self._url = url
        _Watcher.start(self)

    @classmethod
    def from_env(cls, **options: Any) -> "Client":
        """A client configured from the environment, as the CLI and the C library are:
        ``LOCKSTEP_SERVER`` (the URL, or several separated by ``,``; default
        ``http://127.0.0.1:7420``), ``LOCKSTEP_TOKEN`` (the read token) and
        ``LOCKSTEP_CACHE_DIR`` (the host cache; empty turns it off). Keyword arguments are
        passed to :class:`Client` and win over the environment."""
        env = os.environ
        options.setdefault("url", env.get("LOCKSTEP_SERVER") or "http://127.0.0.1:7420")
        if env.get("LOCKSTEP_TOKEN"):
            options.setdefault("token", env["LOCKSTEP_TOKEN"])
        if "LOCKSTEP_CACHE_DIR" in env:
            options.setdefault("cache_dir", env["LOCKSTEP_CACHE_DIR"])
        return cls(**options)

    def _h(self):
        if self._handle is None:
            raise LockstepError(5, "client is closed")
        return self._handle

    def _check(self, code):
        if code != SYNC_OK:
            raise error_for(self._lib, code)

    def _thread_buffer(self, size=256):
        buf = ctypes.create_string_buffer(size)
        n = ctypes.c_size_t(0)
        state = (buf, ctypes.addressof(buf), len(buf), n, ctypes.addressof(n))
        self._buffers.state = state
        return state

    def get(self, key: Key, default: Optional[T] = None) -> Union[bytes, T, None]:
        """The value of ``key`` (str, UTF-8 encoded, or bytes) in the active version, as
        bytes; ``default`` if it is not there. Never touches the network. Raises
        :class:`NotReady` before the first version has arrived."""
        # The hot path of every request. ctypes converts every argument on every call, and
        # that costs more than the lookup, so the pointers go in as plain integer addresses
        # (the handle, this thread's buffer and length cell) and the work stays minimal.
        k = key.encode() if type(key) is str else _key(key)
        state = getattr(self._buffers, "state", None) or self._thread_buffer()
        buf, buf_addr, size, n, n_addr = state
        code = self._sync_get(self._handle_addr, k, len(k), buf_addr, size, n_addr)
        if code == SYNC_OK:
            return buf[:n.value]
        if code == SYNC_NOT_FOUND:
            return default
        if code == SYNC_BUFFER_TOO_SMALL:
            buf, buf_addr, size, n, n_addr = self._thread_buffer(max(n.value, 2 * size))
            code = self._sync_get(self._handle_addr, k, len(k), buf_addr, size, n_addr)
            if code == SYNC_OK:
                return buf[:n.value]
            if code == SYNC_NOT_FOUND:
                return default
        self._h()  # a closed client says so rather than "NULL pointer"
        raise error_for(self._lib, code)

    def get_str(self, key: Key, default: Optional[T] = None, encoding: str = "utf-8",
                errors: str = "strict") -> Union[str, T, None]:
        """Like :meth:`get`, decoded as text (``encoding``, UTF-8 by default)."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            return default
        return value.decode(encoding, errors)

    def __getitem__(self, key: Key) -> bytes:
        """``client[key]``: the value in the active version; KeyError if it is not there."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: Key) -> bool:
        """``key in client``: whether the active version holds ``key``."""
        return self.get(key, _MISSING) is not _MISSING

    @property
    def active_version(self) -> int:
        """The version reads see now; 0 before the first one arrives."""
        v = ctypes.c_uint64(0)
        code = self._lib.sync_active_version(self._h(), ctypes.byref(v))
        if code == SYNC_NOT_READY:
            return 0
        self._check(code)
        return v.value

    @property
    def staged_version(self) -> int:
        """The version armed for the next activation; 0 when none is."""
        v, at = ctypes.c_uint64(0), ctypes.c_int64(0)
        code = self._lib.sync_staged_version(self._h(), ctypes.byref(v), ctypes.byref(at))
        if code == SYNC_NOT_FOUND:
            return 0
        self._check(code)
        return v.value

    @property
    def next_activation_us(self) -> int:
        """The next activation time on the data server's clock (µs since the epoch), or 0."""
        t = ctypes.c_int64(0)
        code = self._lib.sync_next_activation(self._h(), ctypes.byref(t))
        if code == SYNC_NOT_READY:
            return 0
        self._check(code)
        return t.value

    def stats(self) -> Dict[str, Any]:
        """Counters and gauges of the handle, as a dict. Times ending in ``_us`` are µs
        since the Unix epoch on the data server's clock (``last_checkin_us``,
        ``next_activation_us``, ``last_activation_us``, ``confirmed_us``; 0: never);
        ``clock_offset_us`` and ``clock_error_us`` are µs; ``_mono_ns`` are CLOCK_MONOTONIC
        nanoseconds; ``lagging`` and ``unconfirmed`` are bools; ``host_role`` is 0 no host
        cache, 1 leader, 2 follower, 3 host cache unusable; ``last_failure`` is 0 while the
        last check-in succeeded, else the code of its failure (7 unreachable, 10 the token
        was refused); ``bytes_downloaded`` counts the bytes received for versions and deltas
        as transferred, ``deltas_applied`` the versions rebuilt from a delta,
        ``full_downloads`` the versions downloaded whole; the rest are counts."""
        s = sync_stats()
        s.struct_size = ctypes.sizeof(sync_stats)
        self._check(self._lib.sync_stats_get(self._h(), ctypes.byref(s)))
        out = {name: getattr(s, name) for name, _ in sync_stats._fields_ if name != "struct_size"}
        out["lagging"] = bool(out["lagging"])
        out["unconfirmed"] = bool(out["unconfirmed"])
        return out

    def last_error(self) -> str:
        """The retrieval thread's last failure, or an empty string."""
        buf = ctypes.create_string_buffer(1024)
        n = ctypes.c_size_t(0)
        self._check(self._lib.sync_last_error(self._h(), buf, len(buf), ctypes.byref(n)))
        return buf.value.decode("utf-8", "replace")

    def snapshot(self) -> "Snapshot":
        """Pins the active version: ``with client.snapshot() as s: s.get(...)``."""
        ptr = ctypes.c_void_p()
        self._check(self._lib.sync_snapshot_acquire(self._h(), ctypes.byref(ptr)))
        return Snapshot(self._lib, ptr)

    def close(self) -> None:
        """Stops the retrieval thread (waiting at most 2 s, or up to 15 s for a version
        still arriving for the host cache) and frees the handle.
        Idempotent. Reads after it raise :class:`LockstepError`."""
        lock = getattr(self, "_close_lock", None)
        if lock is None:  # __init__ failed before the handle existed
            return
        with lock:
            handle, self._handle = getattr(self, "_handle", None), None
            self._handle_addr = None
            if handle is not None:
                self._lib.sync_close(handle)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Snapshot:
    """One pinned version; every read through it comes from that version."""

    version: int

    def __init__(self, lib: ctypes.CDLL, ptr: ctypes.c_void_p) -> None:
        self._lib = lib
        self._ptr = ptr
        v = ctypes.c_uint64(0)
        code = lib.sync_snapshot_version(ptr, ctypes.byref(v))
        if code != SYNC_OK:
            lib.sync_snapshot_release(ptr)
            raise error_for(lib, code)
        self.version = v.value

    def get(self, key: Key, default: Optional[T] = None) -> Union[bytes, T, None]:
        """The value of ``key`` in this version, or ``default``."""
        if self._ptr is None:
            raise LockstepError(5, "snapshot is released")
        k = _key(key)
        value = ctypes.POINTER(ctypes.c_uint8)()
        n = ctypes.c_size_t(0)
        code = self._lib.sync_snapshot_get(self._ptr, k, len(k), ctypes.byref(value),
                                           ctypes.byref(n))
        if code == SYNC_NOT_FOUND:
            return default
        if code != SYNC_OK:
            raise error_for(self._lib, code)
        return ctypes.string_at(value, n.value)

    def __getitem__(self, key: Key) -> bytes:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: Key) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def release(self) -> None:
        """Lets the version go (its memory is freed once no one holds it). Idempotent."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._lib.sync_snapshot_release(ptr)

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


_MISSING: Any = object()


class _Watcher:
    """Logs when a client's retrieval starts failing and when it recovers.

    One daemon thread per client reads the handle's counters every second (reads never wait
    for it) and holds the client only weakly, so an unreferenced client is still collected.
    A ``fork()`` child gets a watcher of its own for the clients it inherited.
    """

    _clients: "weakref.WeakSet[Client]" = weakref.WeakSet()
    _registered = False

    @classmethod
    def start(cls, client: Client) -> None:
        if not cls._registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=cls._after_fork)
            cls._registered = True
        cls._clients.add(client)
        cls._spawn(client)

    @classmethod
    def _after_fork(cls) -> None:
        for client in list(cls._clients):
            # The parent's watcher may have held the lock at the fork; it has no thread here.
            client._close_lock = threading.Lock()
            if client._handle is not None:
                cls._spawn(client)

    @staticmethod
    def _spawn(client: Client) -> None:
        ref = weakref.ref(client)
        thread = threading.Thread(target=_Watcher._run, args=(ref,), daemon=True,
                                  name="lockstep-watch")
        thread.start()

    @staticmethod
    def _run(ref: "weakref.ref[Client]") -> None:
        failing = False
        stop = threading.Event()
        while not stop.wait(_WATCH_PERIOD_S):
            client = ref()
            if client is None:
                return
            with client._close_lock:
                if client._handle is None:
                    return
                stats = client.stats()
                error = client.last_error() if stats["consecutive_failures"] else ""
            url = client._url
            del client
            if stats["consecutive_failures"] and not failing:
                failing = True
                log.warning("lockstep: retrieval from %s is failing (%s); reads keep serving "
                            "version %d", url, error or "no message",
                            stats["active_version"])
            elif not stats["consecutive_failures"] and failing:
                failing = False
                log.info("lockstep: retrieval from %s recovered; active version %d, staged %d",
                         url, stats["active_version"], stats["staged_version"])
