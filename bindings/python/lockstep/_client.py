"""The Python face of a liblockstep handle."""

import ctypes
import threading

from ._native import (SYNC_BUFFER_TOO_SMALL, SYNC_NOT_FOUND, SYNC_NOT_READY, SYNC_OK,
                      LockstepError, error_for, load_library, sync_stats)


def _key(key):
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


def _ms(seconds):
    return str(int(seconds * 1000))


class Client:
    """One handle on a data server: a background retrieval thread and the staged and active
    versions. Reads never touch the network. Safe to share between threads, and across
    ``fork()`` (gunicorn ``--preload``): a child keeps the data and restarts retrieval itself.
    """

    def __init__(self, url="http://127.0.0.1:7420", *, token=None, name=None,
                 bootstrap_wait=5.0, allow_not_ready=False, connect_timeout=None,
                 checkin_timeout=None, download_timeout=None, cache_dir=None, library=None):
        """``url``: a data server, or several separated by ``,`` (the retrieval thread stays
        with one while it answers and moves to the next when it fails). ``cache_dir``: the
        host cache shared by this host's processes (None: the library's default,
        ``$LOCKSTEP_CACHE_DIR`` or ``/var/tmp/lockstep-<uid>``; ``""``: off, this process on
        its own). Times are in seconds."""
        self._lib = load_library(library)
        pairs = [("url", url), ("bootstrap_wait_ms", _ms(bootstrap_wait)),
                 ("allow_not_ready", "1" if allow_not_ready else "0")]
        if cache_dir is not None:
            pairs.append(("cache_dir", str(cache_dir)))
        if token:
            pairs.append(("token", token))
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

    def get(self, key):
        """The value of ``key`` in the active version, as bytes; None if it is not there.
        Raises NotReady before the first version has arrived."""
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
            return None
        if code == SYNC_BUFFER_TOO_SMALL:
            buf, buf_addr, size, n, n_addr = self._thread_buffer(max(n.value, 2 * size))
            code = self._sync_get(self._handle_addr, k, len(k), buf_addr, size, n_addr)
            if code == SYNC_OK:
                return buf[:n.value]
            if code == SYNC_NOT_FOUND:
                return None
        self._h()  # a closed client says so rather than "NULL pointer"
        raise error_for(self._lib, code)

    @property
    def active_version(self):
        """The version reads see now; 0 before the first one arrives."""
        v = ctypes.c_uint64(0)
        code = self._lib.sync_active_version(self._h(), ctypes.byref(v))
        if code == SYNC_NOT_READY:
            return 0
        self._check(code)
        return v.value

    @property
    def staged_version(self):
        """The version armed for the next activation; 0 when none is."""
        v, at = ctypes.c_uint64(0), ctypes.c_int64(0)
        code = self._lib.sync_staged_version(self._h(), ctypes.byref(v), ctypes.byref(at))
        if code == SYNC_NOT_FOUND:
            return 0
        self._check(code)
        return v.value

    @property
    def next_activation_us(self):
        """The next activation time on the data server's clock (µs since the epoch), or 0."""
        t = ctypes.c_int64(0)
        code = self._lib.sync_next_activation(self._h(), ctypes.byref(t))
        if code == SYNC_NOT_READY:
            return 0
        self._check(code)
        return t.value

    def stats(self):
        """Counters and gauges: versions, last check-in, failures, clock offset, lagging."""
        s = sync_stats()
        s.struct_size = ctypes.sizeof(sync_stats)
        self._check(self._lib.sync_stats_get(self._h(), ctypes.byref(s)))
        out = {name: getattr(s, name) for name, _ in sync_stats._fields_ if name != "struct_size"}
        out["lagging"] = bool(out["lagging"])
        return out

    def last_error(self):
        """The retrieval thread's last failure, or an empty string."""
        buf = ctypes.create_string_buffer(1024)
        n = ctypes.c_size_t(0)
        self._check(self._lib.sync_last_error(self._h(), buf, len(buf), ctypes.byref(n)))
        return buf.value.decode("utf-8", "replace")

    def snapshot(self):
        """Pins the active version: ``with client.snapshot() as s: s.get(...)``."""
        ptr = ctypes.c_void_p()
        self._check(self._lib.sync_snapshot_acquire(self._h(), ctypes.byref(ptr)))
        return Snapshot(self._lib, ptr)

    def close(self):
        """Stops the retrieval thread and frees the handle. Idempotent."""
        handle, self._handle = getattr(self, "_handle", None), None
        self._handle_addr = None
        if handle is not None:
            self._lib.sync_close(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Snapshot:
    """One pinned version; every read through it comes from that version."""

    def __init__(self, lib, ptr):
        self._lib = lib
        self._ptr = ptr
        v = ctypes.c_uint64(0)
        code = lib.sync_snapshot_version(ptr, ctypes.byref(v))
        if code != SYNC_OK:
            lib.sync_snapshot_release(ptr)
            raise error_for(lib, code)
        self.version = v.value

    def get(self, key):
        """The value of ``key`` in this version, or None."""
        if self._ptr is None:
            raise LockstepError(5, "snapshot is released")
        k = _key(key)
        value = ctypes.POINTER(ctypes.c_uint8)()
        n = ctypes.c_size_t(0)
        code = self._lib.sync_snapshot_get(self._ptr, k, len(k), ctypes.byref(value),
                                           ctypes.byref(n))
        if code == SYNC_NOT_FOUND:
            return None
        if code != SYNC_OK:
            raise error_for(self._lib, code)
        return ctypes.string_at(value, n.value)

    def release(self):
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._lib.sync_snapshot_release(ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass
