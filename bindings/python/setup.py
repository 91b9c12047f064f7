"""Builds liblockstep.so from this repository with cargo and ships it inside the wheel.

The package itself is pure Python (ctypes); the wheel is a platform wheel only because it
carries the shared library, so it is tagged ``py3-none-<platform>``: any Python 3.8+ on the
platform. On Linux the platform is ``manylinux_2_<N>_<arch>``, N being the newest glibc symbol
version the library was linked against (it needs nothing but libc, libgcc_s and the loader,
all in the manylinux policy): pip refuses the wheel on an older glibc instead of failing at
load time. Built on Debian 12 that is glibc 2.34 (README: Install).

Environment:
  LOCKSTEP_CARGO_PROFILE  cargo profile to build (default ``release``; CI uses ``debug`` to
                          reuse the workspace build it has just made)
  CARGO_TARGET_DIR        honoured by cargo as usual; the library is taken from there
  CARGO                   the cargo to run (default ``cargo`` on PATH)
"""

import json
import os
import re
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MANIFEST = os.path.join(ROOT, "Cargo.toml")


def _cargo(*args, capture=False):
    cmd = [os.environ.get("CARGO", "cargo"), *args, "--manifest-path", MANIFEST]
    if capture:
        return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(cmd, check=True)
    return None


def build_library():
    """Runs cargo for the lockstep crate and returns the path of the cdylib it made."""
    if not os.path.exists(MANIFEST):
        raise SystemExit(
            "lockstep: %s not found: the Python package is built from a Lockstep checkout "
            "(pip wheel ./bindings/python), which holds the Rust library it ships" % MANIFEST)
    profile = os.environ.get("LOCKSTEP_CARGO_PROFILE", "release")
    profile = "dev" if profile == "debug" else profile
    _cargo("build", "--lib", "-p", "lockstep", "--profile", profile)
    meta = json.loads(_cargo("metadata", "--format-version", "1", "--no-deps", capture=True))
    # cargo names the dev profile's directory "debug".
    subdir = "debug" if profile == "dev" else profile
    path = os.path.join(meta["target_directory"], subdir, "liblockstep.so")
    if not os.path.exists(path):
        raise SystemExit("lockstep: cargo finished but %s is missing" % path)
    return path


class BuildPyWithLibrary(build_py):
    """build_py, plus liblockstep.so next to the package's modules (where _native looks)."""

    def run(self):
        super().run()
        if self.dry_run:
            return
        target = os.path.join(self.build_lib, "lockstep", "liblockstep.so")
        self.mkpath(os.path.dirname(target))
        shutil.copyfile(build_library(), target)
        os.chmod(target, 0o755)
        self.distribution.lockstep_library = target


def glibc_baseline(library):
    """The newest ``GLIBC_2.N`` symbol version the library needs, as N (None: no glibc)."""
    with open(library, "rb") as f:
        needed = [int(m) for m in re.findall(rb"GLIBC_2\.(\d+)", f.read())]
    return max(needed) if needed else None


class BinaryDistribution(Distribution):
    """Carries a platform binary: built into the platform lib directory, a non-pure wheel."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """A wheel for this platform that any Python 3 can use: the library is not a CPython
    extension, so neither the interpreter nor its ABI matters."""

    def get_tag(self):
        _, _, plat = super().get_tag()
        library = getattr(self.distribution, "lockstep_library", None)
        if plat.startswith("linux_") and library:
            minor = glibc_baseline(library)
            if minor is not None:
                plat = "manylinux_2_%d_%s" % (minor, plat[len("linux_"):])
        return "py3", "none", plat


setup(distclass=BinaryDistribution,
      cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel})
