import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

import lockstep
from lockstep_server import REPO, Server, wait_for


def test_get_versions_stats_and_snapshot(server):
    server.put("blob", "x" * 1000)
    server.admin("/v1/admin/put", {"key": "binary", "value": {"b64": "AP8AAQ=="}})
    server.put("price:apple", "1.25")  # last, so waiting for it waits for all three
    server.wait_active("price:apple", "1.25")
    with lockstep.Client(server.url, name="pytest") as c:
        assert c.get("price:apple") == b"1.25"
        assert c.get(b"price:apple") == b"1.25"
        assert c.get("blob") == b"x" * 1000  # larger than the first buffer
        assert c.get("missing") is None
        assert c.get("binary") == b"\x00\xff\x00\x01"  # NUL bytes survive
        assert c.active_version >= 2
        assert c.next_activation_us > 0
        stats = c.stats()
        assert stats["active_version"] == c.active_version
        assert stats["checkins"] >= 1
        assert stats["lagging"] is False
        with c.snapshot() as s:
            assert s.version == c.active_version
            assert s.get("price:apple") == b"1.25"
            assert s.get("missing") is None
        with pytest.raises(TypeError):
            c.get(42)


def test_an_edit_goes_live_and_a_snapshot_keeps_its_version(server):
    server.put("price", "10")
    server.wait_active("price", "10")
    c = lockstep.Client(server.url)
    s = c.snapshot()
    server.put("price", "8")
    assert wait_for(lambda: c.get("price") == b"8"), c.stats()
    # The snapshot still reads the version it pinned.
    assert s.get("price") == b"10"
    assert c.active_version > s.version
    s.release()
    c.close()
    c.close()  # idempotent


def test_errors_are_exceptions_with_the_library_message(tmp_path):
    with pytest.raises(lockstep.LockstepError) as e:
        lockstep.Client("http://127.0.0.1:9", bootstrap_wait=0.2)
    assert e.value.code == 7
    assert "unreachable" in str(e.value)
    with pytest.raises(lockstep.LockstepError) as e:
        lockstep.Client("ftp://nowhere")
    assert e.value.code == 6 and "url" in e.value.message
    c = lockstep.Client("http://127.0.0.1:9", bootstrap_wait=0, allow_not_ready=True)
    with pytest.raises(lockstep.NotReady):
        c.get("price")
    assert c.active_version == 0
    assert "check-in" in wait_for(c.last_error, timeout=5)
    c.close()


def test_library_reports_the_abi_this_binding_expects():
    lib = lockstep.load_library()
    assert lib.sync_abi_version() == lockstep.ABI_VERSION
    assert lib.sync_version().startswith(b"lockstep ")


def test_fork_child_keeps_reading_and_follows_new_versions(server):
    server.put("price", "10")
    server.wait_active("price", "10")
    c = lockstep.Client(server.url, name="forker")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 1
        try:
            if c.get("price") == b"10":  # reads work at once in the child
                os.write(w, b"r")
                if wait_for(lambda: c.get("price") == b"8", timeout=20):
                    code = 0
        finally:
            os._exit(code)
    os.close(w)
    assert os.read(r, 1) == b"r"
    server.put("price", "8")
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "child never saw the new version"
    assert wait_for(lambda: c.get("price") == b"8")
    c.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gunicorn_preload_workers_all_follow_the_farm(tmp_path):
    server = Server(tmp_path, interval="500ms", min_window="250ms")
    try:
        server.put("price:apple", "1.25")
        server.wait_active("price:apple", "1.25")
        port = free_port()
        env = dict(os.environ, LOCKSTEP_SERVER=server.url, LOCKSTEP_KEYS="price:apple",
                   PYTHONPATH=os.pathsep.join([os.path.join(REPO, "examples", "python"),
                                               os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--preload", "-w", "3", "-b",
             f"127.0.0.1:{port}", "app:app"], env=env, stderr=subprocess.DEVNULL)
        try:
            def fetch():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/price/price:apple",
                                            timeout=5) as resp:
                    import json
                    return json.loads(resp.read())

            def workers_serving(value):
                seen = {}
                for _ in range(60):
                    try:
                        d = fetch()
                    except OSError:
                        return None
                    if d["value"] == value:
                        seen[d["pid"]] = d["version"]
                return seen if len(seen) >= 3 else None

            assert wait_for(lambda: workers_serving("1.25"), timeout=30), "workers never served"
            server.put("price:apple", "0.99")
            seen = wait_for(lambda: workers_serving("0.99"), timeout=30)
            assert seen, "not every worker switched to the new price"
            assert len(set(seen.values())) == 1, f"workers on different versions: {seen}"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    finally:
        server.stop()
