"""The PHP extension built against an installed Lockstep through pkg-config (no build-tree
RUNPATH), loaded by real PHP-FPM behind nginx, serving a value from a real data server."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from conftest import REPO, abi, pkg_config_env, version

sys.path.insert(0, os.path.join(REPO, "tests", "servers"))
from servers_support import Daemon, free_port, render, wait_for  # noqa: E402

EXAMPLE = os.path.join(REPO, "bindings", "php", "example")
EXT = os.path.join(REPO, "target", "php-ext-installed", "modules", "lockstep.so")


@pytest.fixture
def workdir():
    # PHP-FPM and nginx workers must reach the sockets: not below pytest's private tmp.
    path = tempfile.mkdtemp(prefix="lockstep-php-installed-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def dynamic_section(path):
    return subprocess.run(["readelf", "-d", path], check=True, capture_output=True,
                          text=True).stdout


def test_the_extension_builds_against_the_installed_library_and_php_fpm_serves_with_it(
        prefix, server, workdir):
    subprocess.run([os.path.join(REPO, "bindings", "php", "build.sh"), "--installed"],
                   env=pkg_config_env(prefix), check=True)
    dynamic = dynamic_section(EXT)
    assert f"Shared library: [liblockstep.so.{abi()}]" in dynamic
    runpaths = [line for line in dynamic.splitlines() if "RUNPATH" in line or "RPATH" in line]
    # Only the prefix (not a directory the loader searches by itself): never target/.
    assert runpaths and all(f"[{prefix}/lib]" in line for line in runpaths), runpaths

    server.put("price:apple", "1.25")
    server.wait_active("price:apple", "1.25")
    conf = render(os.path.join(EXAMPLE, "php-fpm.conf"), os.path.join(workdir, "php-fpm.conf"),
                  DIR=workdir, URL=server.url, USER="root", GROUP="root", CACHE="",
                  WORKERS=1, MAX_REQUESTS=0)
    fpm = Daemon(["php-fpm8.2", "-R", "-F", "-n", "-d", f"extension={EXT}", "-y", conf,
                  "-p", workdir], os.path.join(workdir, "fpm.out"))
    nginx = None
    try:
        assert wait_for(lambda: os.path.exists(os.path.join(workdir, "php-fpm.sock")),
                        timeout=20), open(os.path.join(workdir, "fpm.out")).read()
        port = free_port()
        nginx_conf = render(os.path.join(EXAMPLE, "nginx.conf"),
                            os.path.join(workdir, "nginx.conf"), DIR=workdir, PORT=port,
                            ROOT=EXAMPLE)
        nginx = Daemon(["nginx", "-c", nginx_conf, "-p", workdir],
                       os.path.join(workdir, "nginx.out"))

        def page():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/?key=price:apple",
                                            timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        body = wait_for(page, timeout=30)
        assert body and body["value"] == "1.25", (body, open(os.path.join(workdir, "php-fpm.log")).read())
        # The worker that answered maps the installed library, not the checkout's.
        with open(f"/proc/{body['pid']}/maps") as f:
            libs = {line.split()[-1] for line in f if "liblockstep" in line}
        assert libs == {str(prefix / "lib" / f"liblockstep.so.{abi()}.{version()}")}, libs
    finally:
        for d in (nginx, fpm):
            if d:
                d.stop()


def test_composer_json_describes_the_extension_for_pie():
    with open(os.path.join(REPO, "composer.json")) as f:
        meta = json.load(f)
    assert meta["type"] == "php-ext"
    ext = meta["php-ext"]
    build = os.path.join(REPO, ext["build-path"])
    assert os.path.exists(os.path.join(build, "config.m4"))
    # The name PHP loads it under, and the configure option config.m4 declares.
    with open(os.path.join(build, "lockstep.c")) as f:
        assert f'"{ext["extension-name"]}",' in f.read()
    with open(os.path.join(build, "config.m4")) as f:
        m4 = f.read()
    for option in ext["configure-options"]:
        assert f"--{option['name']}" in m4
