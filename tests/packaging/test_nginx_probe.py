"""The nginx module's `config` probes for liblockstep with auto/feature: without it,
configure stops with a readable sentence (not a link error later); with an installed copy
found through pkg-config, the module builds against it and serves from it in real nginx."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO, abi, clean_env, pkg_config_env, version

sys.path.insert(0, os.path.join(REPO, "tests", "servers"))
from servers_support import Daemon, free_port, wait_for  # noqa: E402

NGINX_SRC = "/usr/share/nginx/src"
MODULE_DIR = os.path.join(REPO, "bindings", "nginx")
SENTENCE = "error: the lockstep module requires liblockstep, which was not found."


def configure(tmp_path, env):
    src = tmp_path / "nginx-src"
    if not src.exists():
        shutil.copytree(NGINX_SRC, src, symlinks=True)
    return subprocess.run(["./configure", "--with-compat", f"--add-dynamic-module={MODULE_DIR}"],
                          cwd=src, env=env, capture_output=True, text=True), src


def without_system_pc(**extra):
    """pkg-config that sees only `extra`'s PKG_CONFIG_PATH: a lockstep.pc that an installed
    .deb put in the system directories stays out of sight."""
    empty = tempfile.mkdtemp(prefix="empty-pc-")
    return clean_env(PKG_CONFIG_LIBDIR=empty, **extra)


def test_configure_without_the_library_stops_with_a_readable_sentence(tmp_path):
    result, src = configure(tmp_path, without_system_pc())
    assert result.returncode != 0
    assert SENTENCE in result.stderr, (result.stdout[-2000:], result.stderr)
    assert "pkg-config --libs lockstep" in result.stderr
    assert not (src / "objs" / "Makefile").exists()


def test_configure_with_a_pc_file_whose_library_is_gone_fails_the_probe(prefix, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(prefix, broken, symlinks=True)
    for lib in (broken / "lib").glob("liblockstep.so*"):
        lib.unlink()
    pc = broken / "lib" / "pkgconfig" / "lockstep.pc"
    pc.write_text(pc.read_text().replace(str(prefix), str(broken)))
    result, src = configure(tmp_path, without_system_pc(
        PKG_CONFIG_PATH=str(broken / "lib" / "pkgconfig")))
    assert result.returncode != 0
    assert "checking for liblockstep" in result.stdout and "not found" in result.stdout
    assert SENTENCE in result.stderr, result.stderr


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="lockstep-nginx-installed-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_module_builds_against_the_installed_library_and_serves_from_it(
        prefix, server, workdir):
    # README's command, as a user runs it with PKG_CONFIG_PATH set to the prefix.
    subprocess.run([os.path.join(MODULE_DIR, "build.sh"), "--installed"],
                   env=pkg_config_env(prefix), check=True)
    with open(os.path.join(REPO, "target", "nginx-build-installed", "configure.log")) as f:
        probe = f.read()
    assert f"checking for liblockstep {version()} (pkg-config) ... found" in probe, probe
    module = os.path.join(REPO, "target", "nginx-module-installed", "ngx_http_lockstep_module.so")
    dynamic = subprocess.run(["readelf", "-d", module], capture_output=True, text=True,
                             check=True).stdout
    assert f"Shared library: [liblockstep.so.{abi()}]" in dynamic
    assert f"[{prefix}/lib]" in dynamic and "target/" not in dynamic

    server.put("price:apple", "1.25")
    server.wait_active("price:apple", "1.25")
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
load_module {module};
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  lockstep_url {server.url};
  lockstep_cache_dir off;
  server {{
    listen 127.0.0.1:{port};
    location /prices/ {{ lockstep_serve; }}
    location = /pid {{ return 200 "$pid"; }}
  }}
}}
""")
    nginx = Daemon(["nginx", "-c", conf, "-p", workdir], os.path.join(workdir, "nginx.out"))
    try:
        import urllib.request

        def value():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/prices/price:apple",
                                            timeout=5) as r:
                    return r.read()
            except OSError:
                return None
        assert wait_for(value, timeout=20) == b"1.25", open(os.path.join(workdir, "error.log")).read()
        pid = urllib.request.urlopen(f"http://127.0.0.1:{port}/pid", timeout=5).read().decode()
        with open(f"/proc/{pid}/maps") as f:
            libs = {line.split()[-1] for line in f if "liblockstep" in line}
        assert libs == {f"{prefix}/lib/liblockstep.so.{abi()}.{version()}"}, libs
    finally:
        nginx.stop()
