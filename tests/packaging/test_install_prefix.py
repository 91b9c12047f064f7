"""`scripts/install.sh --prefix DIR`: the library with its SONAME and symlinks, the header,
the pkg-config file and the `lockstep` binary; examples/c builds against that copy through
pkg-config and reads from a real data server; the header compiles as C99 and as C++."""

import os
import subprocess
import threading

import pytest

from conftest import REPO, abi, clean_env, pkg_config_env


def pkg_config(prefix, *args):
    return subprocess.run(["pkg-config", *args, "lockstep"], env=pkg_config_env(prefix), check=True,
                          capture_output=True, text=True).stdout.strip()


def test_install_puts_the_versioned_library_symlinks_header_pc_file_and_binary(prefix):
    lib = prefix / "lib"
    n = abi()
    (real,) = [p.name for p in lib.iterdir() if p.name.startswith(f"liblockstep.so.{n}.")]
    assert os.readlink(lib / f"liblockstep.so.{n}") == real
    assert os.readlink(lib / "liblockstep.so") == f"liblockstep.so.{n}"
    dynamic = subprocess.run(["readelf", "-d", str(lib / real)], check=True,
                             capture_output=True, text=True).stdout
    assert f"Library soname: [liblockstep.so.{n}]" in dynamic
    assert "RUNPATH" not in dynamic and "RPATH" not in dynamic
    assert (prefix / "include" / "lockstep.h").is_file()
    out = subprocess.run([str(prefix / "bin" / "lockstep"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("lockstep ")
    assert pkg_config(prefix, "--modversion") == out.split()[1]
    assert pkg_config(prefix, "--cflags") == f"-I{prefix}/include"
    assert pkg_config(prefix, "--libs") == f"-L{prefix}/lib -llockstep"


def test_the_c_example_builds_through_pkg_config_and_reads_from_a_data_server(prefix, server,
                                                                               tmp_path):
    server.put("price:apple", "1.25")
    server.wait_active("price:apple", "1.25")
    example = os.path.join(REPO, "examples", "c")
    env = pkg_config_env(prefix)
    subprocess.run(["make", "-s", "-B", "-C", example, "installed"], env=env, check=True)
    binary = os.path.join(example, "watch-installed")
    needed = subprocess.run(["ldd", binary], env=clean_env(), capture_output=True, text=True,
                            check=True).stdout
    # Linked by SONAME and loaded from the prefix, never from the build tree.
    assert f"liblockstep.so.{abi()} => {prefix}/lib/liblockstep.so.{abi()}" in needed, needed
    assert "target/" not in needed
    # A host cache of its own, not the shared /var/tmp/lockstep-<uid> an earlier run left.
    env["LOCKSTEP_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.Popen([binary, server.url, "price:apple"], env=env,
                            stdout=subprocess.PIPE, text=True)
    # It prints a line per version; killed after a minute, its output ends.
    timer = threading.Timer(60, proc.kill)
    timer.start()
    try:
        proc.stdout.readline()  # the banner
        line = proc.stdout.readline()
        assert "price:apple = 1.25" in line, line
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("compiler,flags,source", [
    ("cc", ["-std=c99", "-pedantic-errors", "-Wall", "-Wextra", "-Werror"], "header.c"),
    ("c++", ["-std=c++11", "-pedantic-errors", "-Wall", "-Wextra", "-Werror"], "header.cpp"),
])
def test_the_installed_header_compiles_as_c99_and_as_cpp(prefix, tmp_path, compiler, flags,
                                                         source):
    # Uses types and calls from the header, so C++ name mangling would fail at link time.
    (tmp_path / source).write_text(
        '#include <lockstep.h>\n'
        '#include <stdio.h>\n'
        'int main(void) {\n'
        '  sync_stats s;\n'
        '  s.struct_size = sizeof s;\n'
        '  (void)s;\n'
        '  printf("%u %s\\n", (unsigned)sync_abi_version(), sync_version());\n'
        '  return sync_abi_version() == SYNC_ABI_VERSION ? 0 : 1;\n'
        '}\n')
    cflags = pkg_config(prefix, "--cflags").split()
    libs = pkg_config(prefix, "--libs").split()
    exe = tmp_path / "header"
    subprocess.run([compiler, *flags, *cflags, str(tmp_path / source), *libs,
                    f"-Wl,-rpath,{prefix}/lib", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    assert out.startswith(f"{abi()} lockstep ")
