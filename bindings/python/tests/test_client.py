import os
import signal
import socket
import subprocess
import sys
import time
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


# --- The host cache (cache_dir) and what stats say about it ---

HOST_ROLE_OFF, HOST_ROLE_LEADER, HOST_ROLE_FOLLOWER, HOST_ROLE_UNUSABLE = 0, 1, 2, 3


def private_dir(path):
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path


def test_clients_sharing_a_cache_dir_are_one_leader_and_followers_and_an_empty_one_is_off(
        server, tmp_path):
    server.put("price", "10")
    server.wait_active("price", "10")
    cache = private_dir(tmp_path / "cache")
    leader = lockstep.Client(server.url, cache_dir=cache, name="leader")
    assert wait_for(lambda: leader.stats()["host_role"] == HOST_ROLE_LEADER, timeout=5)
    follower = lockstep.Client(server.url, cache_dir=cache, name="follower")
    alone = lockstep.Client(server.url, cache_dir="", name="alone")
    try:
        for c in (leader, follower, alone):
            assert c.get("price") == b"10"
        assert follower.stats()["host_role"] == HOST_ROLE_FOLLOWER
        assert alone.stats()["host_role"] == HOST_ROLE_OFF
        # The follower's data is confirmed by its leader's check-ins; it makes none itself.
        assert wait_for(lambda: follower.stats()["unconfirmed"] == 0, timeout=5)
        s = follower.stats()
        assert s["checkins"] == 0 and s["cache_failures"] == 0
        assert abs(s["confirmed_us"] - leader.stats()["confirmed_us"]) < 2_000_000
        assert leader.stats()["checkins"] > 0 and alone.stats()["checkins"] > 0
        # The version lives in the cache as an immutable file, one per data server directory.
        files = [f for d in cache.iterdir() for f in d.iterdir() if f.suffix == ".lkv"]
        assert files and all(f.stat().st_mode & 0o777 == 0o400 for f in files), files
        server.put("price", "8")
        assert wait_for(lambda: follower.get("price") == b"8" and alone.get("price") == b"8")
        # When the leader goes, the follower takes over (it tries every 0.5-0.75 s).
        leader.close()
        assert wait_for(lambda: follower.stats()["host_role"] == HOST_ROLE_LEADER, timeout=5)
        checkins = follower.stats()["checkins"]
        assert wait_for(lambda: follower.stats()["checkins"] > checkins, timeout=5)
    finally:
        for c in (leader, follower, alone):
            c.close()


def test_a_cache_dir_others_can_write_or_a_symlink_is_refused_and_reads_go_on(server, tmp_path):
    server.put("price", "10")
    server.wait_active("price", "10")
    shared = private_dir(tmp_path / "shared")
    os.chmod(shared, 0o777)
    link = tmp_path / "link"
    os.symlink(private_dir(tmp_path / "target"), link)
    for cache, why in ((shared, "writable by group or others"), (link, "symlink")):
        with lockstep.Client(server.url, cache_dir=cache) as c:
            assert c.get("price") == b"10"
            assert c.stats()["host_role"] == HOST_ROLE_UNUSABLE
            assert why in c.last_error(), c.last_error()
    assert list((tmp_path / "target").iterdir()) == []


def test_a_client_opened_while_the_data_server_is_down_serves_the_hosts_version_at_once(
        tmp_path):
    port = free_port()
    server = Server(tmp_path, listen=f"127.0.0.1:{port}")
    try:
        server.put("price", "10")
        server.wait_active("price", "10")
        cache = private_dir(tmp_path / "cache")
        with lockstep.Client(server.url, cache_dir=cache) as first:
            assert first.get("price") == b"10"
            # Ready means the active version is in; its confirmation ends the same cycle.
            assert wait_for(lambda: first.stats()["confirmed_us"] > 0)
            confirmed = first.stats()["confirmed_us"]
        server.stop()

        # Without the host cache: nothing to serve, and the open waits bootstrap_wait.
        with pytest.raises(lockstep.LockstepError) as e:
            lockstep.Client(server.url, cache_dir="", bootstrap_wait=0.5)
        assert e.value.code == 7
        # With it: at once, whatever bootstrap_wait says, and said to be unconfirmed.
        started = time.monotonic()
        c = lockstep.Client(server.url, cache_dir=cache, bootstrap_wait=30)
        took = time.monotonic() - started
        try:
            assert c.get("price") == b"10"
            print(f"opened from the host cache in {took * 1000:.1f} ms")
            assert took < 2
            s = c.stats()
            assert s["unconfirmed"] == 1 and s["active_version"] >= 2
            assert confirmed - 1_000_000 <= s["confirmed_us"] <= confirmed + 1_000_000
            # The data server comes back: the next check-in confirms the version.
            server = Server(tmp_path, listen=f"127.0.0.1:{port}")
            assert wait_for(lambda: c.stats()["unconfirmed"] == 0, timeout=10), c.stats()
            assert c.stats()["confirmed_us"] > confirmed
        finally:
            c.close()
    finally:
        server.stop()


def test_get_takes_a_default_and_the_client_reads_like_a_mapping(server):
    server.put("city", "Zürich")
    server.wait_active("city", "Zürich")
    with lockstep.Client(server.url) as c:
        assert c.get("missing", b"fallback") == b"fallback"
        assert c.get("city", b"fallback") == "Zürich".encode()
        assert c.get_str("city") == "Zürich"
        assert c.get_str("missing") is None and c.get_str("missing", "-") == "-"
        assert c["city"] == "Zürich".encode()
        with pytest.raises(KeyError):
            c["missing"]
        assert "city" in c and "missing" not in c
        with c.snapshot() as s:
            assert s["city"] == "Zürich".encode() and s.get("missing", 7) == 7
            assert "city" in s and "missing" not in s


def test_from_env_reads_the_server_token_and_cache_dir(server, tmp_path, monkeypatch):
    server.put("price", "3")
    server.wait_active("price", "3")
    cache = private_dir(tmp_path / "env-cache")
    monkeypatch.setenv("LOCKSTEP_SERVER", server.url)
    monkeypatch.setenv("LOCKSTEP_CACHE_DIR", str(cache))
    monkeypatch.setenv("LOCKSTEP_TOKEN", "not;allowed")  # reaches the options: refused
    with pytest.raises(ValueError, match="token"):
        lockstep.Client.from_env()
    monkeypatch.delenv("LOCKSTEP_TOKEN")
    with lockstep.Client.from_env(name="from-env") as c:
        assert c.get("price") == b"3"
        assert c.stats()["host_role"] == 1  # the leader of the cache named by the environment
        assert os.listdir(cache)
    monkeypatch.setenv("LOCKSTEP_SERVER", "http://127.0.0.1:9")
    with pytest.raises(lockstep.LockstepError) as e:
        lockstep.Client.from_env(bootstrap_wait=0.2, cache_dir="")
    assert e.value.code == 7


def test_retrieval_failure_and_recovery_are_logged(tmp_path, caplog):
    port = free_port()
    server = Server(tmp_path, listen=f"127.0.0.1:{port}")
    try:
        server.put("price", "10")
        server.wait_active("price", "10")
        caplog.set_level("INFO", logger="lockstep")
        with lockstep.Client(server.url, cache_dir="", connect_timeout=0.2) as c:
            server.stop()
            assert wait_for(lambda: "is failing" in caplog.text, timeout=20), caplog.text
            warning = [r for r in caplog.records if "is failing" in r.getMessage()]
            assert len(warning) == 1 and warning[0].levelname == "WARNING"
            assert server.url in warning[0].getMessage()
            assert c.get("price") == b"10"  # reads go on meanwhile
            server = Server(tmp_path, listen=f"127.0.0.1:{port}")
            assert wait_for(lambda: "recovered" in caplog.text, timeout=20), caplog.text
            recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
            assert len(recovered) == 1 and recovered[0].levelname == "INFO"
            # Once each: still one warning after the recovery.
            assert len([r for r in caplog.records if "is failing" in r.getMessage()]) == 1
    finally:
        server.stop()


def test_a_refused_token_raises_unauthorized_never_unreachable(tmp_path):
    s = Server(tmp_path, env={"LOCKSTEP_READ_TOKEN": "py-read-token"})
    try:
        s.put("price", "4")
        for token in ("wrong", None):
            with pytest.raises(lockstep.Unauthorized) as e:
                lockstep.Client(s.url, token=token, cache_dir="", bootstrap_wait=3)
            assert isinstance(e.value, lockstep.LockstepError)
            assert not isinstance(e.value, lockstep.Unreachable)
            assert e.value.code == 10 and "refused the read token" in str(e.value)
        lazy = lockstep.Client(s.url, token="wrong", cache_dir="", bootstrap_wait=0,
                               allow_not_ready=True)
        assert wait_for(lambda: lazy.stats()["last_failure"], timeout=10) == 10
        with pytest.raises(lockstep.NotReady):
            lazy.get("price")
        lazy.close()
        with lockstep.Client(s.url, token="py-read-token", cache_dir="", bootstrap_wait=10) as c:
            assert wait_for(lambda: c.get("price", None) == b"4", timeout=10)
            assert c.stats()["last_failure"] == 0
    finally:
        s.stop()
    with pytest.raises(lockstep.Unreachable) as e:
        lockstep.Client("http://127.0.0.1:9", cache_dir="", bootstrap_wait=0.2)
    assert e.value.code == 7 and not isinstance(e.value, lockstep.Unauthorized)


def test_https_from_the_data_server_itself_with_ca_file_and_another_ca_refused(tmp_path):
    from pki import make_ca
    ca, cert, key = make_ca(tmp_path / "pki", "farm")
    other_ca, _, _ = make_ca(tmp_path / "pki", "other")
    server = Server(tmp_path, tls=(cert, key, ca))
    try:
        server.put("price", "5")
        server.wait_active("price", "5")
        with lockstep.Client(server.url, ca_file=ca, cache_dir="", bootstrap_wait=10) as c:
            assert c.get("price") == b"5"
            server.put("price", "6")
            assert wait_for(lambda: c.get("price") == b"6", timeout=20)
            assert c.stats()["last_failure"] == 0
        for wrong in (other_ca, None):
            with pytest.raises(lockstep.Unreachable) as e:
                lockstep.Client(server.url, ca_file=wrong, cache_dir="", bootstrap_wait=3)
            assert "certificate" in str(e.value).lower(), str(e.value)
        # Plain HTTP on the TLS port gets no answer a client could take for data.
        with pytest.raises(lockstep.Unreachable):
            lockstep.Client(server.url.replace("https://", "http://"), cache_dir="",
                            bootstrap_wait=2)
    finally:
        server.stop()


def test_stats_count_bytes_full_downloads_and_an_applied_delta(tmp_path):
    # A window long enough that the client holds the active version when the edit is staged,
    # so it takes the delta rather than catching up with a full download.
    server = Server(tmp_path, interval="2s", min_window="1s")
    try:
        entries = [{"key": "key:%04d" % i, "value": "value-%d" % i} for i in range(2000)]
        server.admin("/v1/admin/import", {"entries": entries})
        server.wait_active("key:0000", "value-0")
        with lockstep.Client(server.url, name="pytest-delta", cache_dir="") as c:
            s = c.stats()
            assert s["full_downloads"] == 1 and s["deltas_applied"] == 0, s
            first = s["bytes_downloaded"]
            assert first > 2000 * 10, s
            server.put("key:0000", "changed")
            assert wait_for(lambda: c.get("key:0000") == b"changed", timeout=30)
            s = c.stats()
            assert s["deltas_applied"] == 1 and s["full_downloads"] == 1, s
            assert s["rejected_versions"] == 0 and not s["lagging"], s
            # One key of 2000 changed: the delta is a sliver of the version.
            assert 0 < s["bytes_downloaded"] - first < first / 10, s
    finally:
        server.stop()
