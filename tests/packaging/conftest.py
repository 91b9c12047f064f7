"""Fixtures for the packaging tests: what a new user installs (the wheel, an install prefix,
the .deb), used from outside the checkout."""

import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "bindings", "python", "tests"))

from lockstep_server import Server  # noqa: E402

# The cargo profile the install and the wheel are built from (CI: debug, built already).
PROFILE = os.environ.get("LOCKSTEP_CARGO_PROFILE", "release")


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


def clean_env(**extra):
    """The environment of a user who set nothing of Lockstep's: no LOCKSTEP_* and no
    PYTHONPATH pointing into the checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOCKSTEP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def prefix(tmp_path_factory):
    """A Lockstep installed by scripts/install.sh into a fresh prefix, from another cwd."""
    prefix = tmp_path_factory.mktemp("prefix")
    os.chmod(prefix, 0o755)  # php-fpm and nginx workers of other users load from it
    subprocess.run([os.path.join(REPO, "scripts", "install.sh"), "--prefix", str(prefix),
                    "--profile", PROFILE], check=True, cwd=tmp_path_factory.mktemp("cwd"))
    return prefix


def pkg_config_env(prefix):
    return clean_env(PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))


def version():
    """The workspace's version (Cargo.toml), which the library's file name, pkg-config and
    the .deb carry."""
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        for line in f:
            if line.startswith('version = "'):
                return line.split('"')[1]
    raise AssertionError("version not found in Cargo.toml")


def abi():
    """The C ABI version (SYNC_ABI_VERSION), the library's SONAME number."""
    for source in (("src", "ffi.rs"), ("src", "ffi", "mod.rs")):
        path = os.path.join(REPO, *source)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                if line.startswith("pub const SYNC_ABI_VERSION: u32 = "):
                    return int(line.split("=")[1].strip(" ;\n"))
    raise AssertionError("SYNC_ABI_VERSION not found")
