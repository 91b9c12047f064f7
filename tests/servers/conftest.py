"""Fixtures for the nginx and PHP-FPM tests (helpers live in servers_support.py)."""

import os
import pathlib
import shutil
import tempfile

import pytest


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
