"""Fixtures for the nginx and PHP-FPM tests (helpers live in servers_support.py)."""

import os
import pathlib
import shutil
import tempfile

import pytest

from servers_support import Server, publish_big


@pytest.fixture
def workdir():
    # nginx and PHP-FPM workers run as another user, who must be able to reach the sockets
    # in it: pytest's tmp_path sits below a private directory, so make one under /tmp.
    path = tempfile.mkdtemp(prefix="lockstep-servers-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def nginx_bin():
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(path), "nginx is not installed (apt-get install nginx)"
    return path


@pytest.fixture(scope="session")
def big_db():
    """A data-server database whose active version holds 50,000 keys of 1,000 bytes (51 MB)
    and price:apple = 1.25, made once: encoding it takes a debug data server many seconds."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="lockstep-big-db-"))
    server = Server(path, interval="1s", min_window="500ms")
    try:
        publish_big(server, tag="a")
        server.put("price:apple", "1.25")
        server.wait_active("price:apple", "1.25", timeout=120)
    finally:
        server.proc.terminate()  # a clean stop: the database is whole in its files
        server.proc.wait()
    yield path / "db"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def big_server(big_db, workdir):
    """A data server (1 s interval) in workdir on a copy of big_db, its 51 MB version active."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{big_db}{suffix}"):
            shutil.copy(f"{big_db}{suffix}", workdir / f"db{suffix}")
    server = Server(workdir, interval="1s", min_window="500ms")
    server.wait_active("price:apple", "1.25", timeout=60)
    yield server
    server.stop()
