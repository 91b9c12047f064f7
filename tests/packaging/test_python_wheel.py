"""`pip wheel ./bindings/python` makes a platform wheel carrying liblockstep.so, and a fresh
virtualenv outside the checkout, with no Lockstep environment variables, installs it and reads
data from a real data server."""

import os
import re
import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import REPO, clean_env

README = os.path.join(REPO, "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # The README's command; LOCKSTEP_CARGO_PROFILE (CI: debug) only picks the cargo profile.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--disable-pip-version-check", "-w", str(out), "./bindings/python"],
                   cwd=REPO, check=True)
    (path,) = out.glob("lockstep-*.whl")
    return path


def readme_python_block():
    """The ```python block of README's Install section, as README has it."""
    with open(README) as f:
        section = f.read().split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def glibc_needed(library):
    """The newest GLIBC_2.N the library needs, from objdump's dynamic symbol table."""
    dump = subprocess.run(["objdump", "-T", str(library)], check=True, capture_output=True,
                          text=True).stdout
    return max(int(m) for m in re.findall(r"GLIBC_2\.(\d+)", dump))


def test_the_wheel_is_a_platform_wheel_carrying_the_library_and_type_information(
        wheel, tmp_path):
    name = wheel.name
    m = re.fullmatch(r"lockstep-(.+)-py3-none-manylinux_2_(\d+)_x86_64\.whl", name)
    assert m, name
    version, glibc_minor = m.group(1), int(m.group(2))
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        assert f'version = "{version}"' in f.read(), "wheel and crate versions differ"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"lockstep/__init__.py", "lockstep/_client.py", "lockstep/_native.py",
                "lockstep/py.typed", "lockstep/liblockstep.so"} <= names, names
        z.extract("lockstep/liblockstep.so", tmp_path)
        assert "Root-Is-Purelib: false" in z.read(f"lockstep-{version}.dist-info/WHEEL").decode()
    library = tmp_path / "lockstep" / "liblockstep.so"
    # The tag promises exactly the glibc the library needs, and README says which that is.
    assert glibc_needed(library) == glibc_minor
    with open(README) as f:
        assert f"glibc 2.{glibc_minor}" in f.read()
    soname = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True,
                            check=True).stdout
    assert "Library soname: [liblockstep.so.1]" in soname


def test_a_fresh_venv_elsewhere_installs_the_wheel_and_reads_from_a_data_server(
        wheel, server, tmp_path):
    server.put("price:apple", "1.25")
    server.wait_active("price:apple", "1.25")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, env=clean_env())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent("""
        import os, sys
        import lockstep
        c = lockstep.Client(sys.argv[1], name="fresh-venv", cache_dir="")
        maps = open("/proc/self/maps").read()
        libs = {l.split()[-1] for l in maps.splitlines() if "liblockstep" in l}
        print(lockstep.__file__)
        print(",".join(sorted(libs)))
        print(lockstep.__version__, c.get_str("price:apple"), "price:apple" in c)
    """)
    out = subprocess.run([py, "-c", script, server.url], cwd=elsewhere, env=clean_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    package, libs, result = out.stdout.splitlines()
    assert package.startswith(str(venv)), package
    # The library the wheel carried, not the checkout's.
    assert libs == os.path.join(os.path.dirname(package), "liblockstep.so"), libs
    version = wheel.name.split("-")[1]
    assert result == f"{version} 1.25 True"  # __version__ is the package's version

    # README's example, run as it stands with the environment it names.
    readme = readme_python_block() + textwrap.dedent("""
        print(client.get("price:apple", b"0"), client["price:apple"], "promo" in client,
              client.get("promo", b"0"))
    """)
    out = subprocess.run([py, "-c", readme], cwd=elsewhere, capture_output=True, text=True,
                         timeout=60, env=clean_env(LOCKSTEP_SERVER=server.url,
                                                   LOCKSTEP_CACHE_DIR=str(tmp_path / "cache")))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "b'1.25' b'1.25' False b'0'", out.stdout
