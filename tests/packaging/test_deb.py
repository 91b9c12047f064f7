"""`scripts/package-deb.sh` builds target/debian/lockstep_<version>_<arch>.deb; installed with
dpkg it gives a user, an admin token, the library in the loader's cache and pkg-config, and a
hardened Type=notify unit whose ExecStart, started as systemd would (its user, environment
file, state and working directory, NOTIFY_SOCKET), says READY=1 when it answers, serves a C
client built against the system's copy, and stops cleanly on SIGTERM."""

import configparser
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest

from conftest import PROFILE, REPO, abi, clean_env, version
import sys

sys.path.insert(0, os.path.join(REPO, "tests", "servers"))
from servers_support import free_port  # noqa: E402


def root_and_dpkg():
    """Installing a .deb needs root and dpkg. Without them the tests that use the package
    fail, saying so, unless LOCKSTEP_DEB_TESTS=off skips them explicitly (as
    LOCKSTEP_PG_TESTS=off does for PostgreSQL): a quiet skip would let CI pass without ever
    installing the package."""
    if os.environ.get("LOCKSTEP_DEB_TESTS") == "off":
        pytest.skip("LOCKSTEP_DEB_TESTS=off")
    if os.geteuid() != 0 or shutil.which("dpkg") is None:
        pytest.fail("the .deb tests install a package: run them as root on a machine with "
                    "dpkg, or set LOCKSTEP_DEB_TESTS=off to skip them")


MULTIARCH = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
UNIT = "/usr/lib/systemd/system/lockstep.service"


@pytest.fixture(scope="module")
def deb():
    root_and_dpkg()
    # LOCKSTEP_DEB_NO_BUILD: package the binaries as built (a mutation test's).
    extra = ["--no-build"] if os.environ.get("LOCKSTEP_DEB_NO_BUILD") else []
    subprocess.run([os.path.join(REPO, "scripts", "package-deb.sh"), "--profile", PROFILE]
                   + extra, check=True)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    path = os.path.join(REPO, "target", "debian", f"lockstep_{version()}_{arch}.deb")
    assert os.path.exists(path)
    return path


def test_the_package_lists_the_binary_library_links_header_pc_file_unit_and_config(deb):
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                             check=True).stdout
    entries = {}
    for line in listing.splitlines():
        fields = line.split()
        name = fields[5].lstrip(".")
        entries[name] = (fields[0], fields[7] if len(fields) > 7 else None)
    lib = f"/usr/lib/{MULTIARCH}"
    real = f"liblockstep.so.{abi()}.{version()}"
    expected = {
        "/usr/bin/lockstep": "-rwxr-xr-x",
        f"{lib}/{real}": "-rwxr-xr-x",
        f"{lib}/liblockstep.so.1": "lrwxrwxrwx",
        f"{lib}/liblockstep.so": "lrwxrwxrwx",
        "/usr/include/lockstep.h": "-rw-r--r--",
        f"{lib}/pkgconfig/lockstep.pc": "-rw-r--r--",
        UNIT: "-rw-r--r--",
        "/usr/lib/sysusers.d/lockstep.conf": "-rw-r--r--",
        "/etc/default/lockstep": "-rw-r--r--",
    }
    for name, mode in expected.items():
        assert name in entries, (name, sorted(entries))
        assert entries[name][0] == mode, (name, entries[name])
    assert entries[f"{lib}/liblockstep.so.1"][1] == real
    assert entries[f"{lib}/liblockstep.so"][1] == "liblockstep.so.1"
    info = subprocess.run(["dpkg-deb", "-f", deb, "Package", "Version", "Depends"],
                          capture_output=True, text=True, check=True).stdout
    assert f"Version: {version()}" in info and "libc6 (>= 2.34)" in info
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb], capture_output=True,
                               check=True).stdout
    assert b"conffiles" in conffiles and b"postinst" in conffiles


def unit_service_section(path):
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       empty_lines_in_values=False)
    parser.optionxform = str
    # Repeated keys (SystemCallFilter) are allowed in units: keep the last, as a dict does.
    with open(path) as f:
        text = f.read()
    service = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            service.setdefault(key, []).append(value)
    return service


def test_the_unit_is_hardened_and_notifies_readiness():
    service = unit_service_section(os.path.join(REPO, "packaging", "lockstep.service"))
    one = {k: v[-1] for k, v in service.items()}
    assert one["Type"] == "notify" and one["User"] == "lockstep"
    assert one["StateDirectory"] == "lockstep"
    for key, value in [("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("PrivateDevices", "yes"), ("CapabilityBoundingSet", ""),
                       ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
                       ("MemoryDenyWriteExecute", "yes")]:
        assert one.get(key) == value, (key, one.get(key))


class NotifySocket:
    """What systemd listens on for a Type=notify service: a datagram socket."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)  # the service's user sends to it

    def wait(self, timeout):
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()


def exec_as_systemd(service, env_file_extra, notify_path):
    """ExecStart run the way systemd runs it: the unit's user and group, its environment
    file, its state directory made and owned by the user, its working directory and umask.

    Not its sandbox: ProtectSystem, PrivateTmp, SystemCallFilter and the rest need systemd
    itself, and CI's containers have no booted systemd (no /run/systemd/system), so there the
    unit is only checked by `systemd-analyze verify` and by
    test_the_unit_is_hardened_and_notifies_readiness. A machine with a booted systemd could
    use `systemctl start lockstep` instead; this test does not, so that it runs the same
    everywhere."""
    one = {k: v[-1] for k, v in service.items()}
    user = pwd.getpwnam(one["User"])
    state = os.path.join("/var/lib", one["StateDirectory"])
    os.makedirs(state, exist_ok=True)
    os.chown(state, user.pw_uid, user.pw_gid)
    os.chmod(state, int(one.get("StateDirectoryMode", "0755"), 8))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": user.pw_dir,
           "USER": user.pw_name, "NOTIFY_SOCKET": notify_path}
    env_file = one["EnvironmentFile"].lstrip("-")
    with open(env_file) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    env.update(env_file_extra)
    argv = shlex.split(one["ExecStart"])
    umask = int(one.get("UMask", "0022"), 8)
    return subprocess.Popen(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "--"] + argv,
        env=env, cwd=one["WorkingDirectory"], preexec_fn=lambda: os.umask(umask),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_installed_package_runs_as_its_unit_says_and_serves_a_client(deb, tmp_path):
    had_user = subprocess.run(["getent", "passwd", "lockstep"], capture_output=True).returncode == 0
    assert subprocess.run(["dpkg", "-s", "lockstep"], capture_output=True).returncode != 0, \
        "lockstep is installed on this machine already: the test would remove it"
    proc = notify_dir = None
    try:
        subprocess.run(["dpkg", "-i", deb], check=True, capture_output=True)
        token_file = "/etc/lockstep/admin-token"
        st = os.stat(token_file)
        assert oct(st.st_mode & 0o777) == "0o640" and st.st_uid == 0
        assert st.st_gid == pwd.getpwnam("lockstep").pw_gid
        assert "liblockstep.so.1 " in subprocess.run(["ldconfig", "-p"], capture_output=True,
                                                     text=True).stdout
        assert subprocess.run(["pkg-config", "--modversion", "lockstep"], env=clean_env(),
                              capture_output=True, text=True).stdout.strip() == version()
        verify = subprocess.run(["systemd-analyze", "verify", UNIT], capture_output=True,
                                text=True)
        assert verify.returncode == 0, verify.stderr

        port = free_port()
        # Where the service's user can reach it (pytest's tmp_path sits in a private dir).
        notify_dir = tempfile.mkdtemp(prefix="lockstep-notify-")
        os.chmod(notify_dir, 0o755)
        notify = NotifySocket(notify_dir)
        proc = exec_as_systemd(unit_service_section(UNIT),
                               {"LOCKSTEP_LISTEN": f"127.0.0.1:{port}"}, notify.path)
        try:
            message = notify.wait(timeout=60)
        except TimeoutError:
            proc.kill()
            raise AssertionError("no READY=1: " + proc.communicate()[1].decode()[-2000:])
        assert "READY=1" in message.split("\n"), message
        url = f"http://127.0.0.1:{port}"
        # Ready means ready: an edit is taken at once, not answered 503.
        with open(token_file) as f:
            token = f.read().strip()
        cli_env = clean_env(LOCKSTEP_ADMIN_TOKEN=token, LOCKSTEP_SERVER=url)
        subprocess.run(["/usr/bin/lockstep", "put", "price:apple", "1.25"], env=cli_env,
                       check=True, capture_output=True)
        # A new database cycles every 10 minutes: an operator's shorter cycle, for the test.
        subprocess.run(["/usr/bin/lockstep", "interval", "500ms"], env=cli_env, check=True,
                       capture_output=True)

        # A C client built against the system's copy through pkg-config.
        example = os.path.join(REPO, "examples", "c")
        subprocess.run(["make", "-s", "-B", "-C", example, "installed"], env=clean_env(),
                       check=True)
        binary = os.path.join(example, "watch-installed")
        ldd = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        assert f"liblockstep.so.1 => /lib/{MULTIARCH}/liblockstep.so.1" in ldd or \
            f"liblockstep.so.1 => /usr/lib/{MULTIARCH}/liblockstep.so.1" in ldd, ldd
        client = subprocess.Popen([binary, url, "price:apple"], stdout=subprocess.PIPE,
                                  text=True, env=clean_env(LOCKSTEP_CACHE_DIR=""))
        # It prints a line per version; killed after a minute, its output ends.
        timer = threading.Timer(60, client.kill)
        timer.start()
        try:
            seen = ""
            for line in client.stdout:
                seen += line
                if "price:apple = 1.25" in line:
                    break
            assert "price:apple = 1.25" in seen, seen
        finally:
            timer.cancel()
            client.kill()
            client.wait()

        # The database is the service user's, in its state directory.
        db = "/var/lib/lockstep/lockstep.db"
        assert os.stat(db).st_uid == pwd.getpwnam("lockstep").pw_uid
        # README's backup while it runs.
        backup = os.path.join(notify_dir, "lockstep.db")
        subprocess.run(["lockstep", "backup", "--db", db, backup], check=True,
                       capture_output=True, env=clean_env())
        assert os.path.getsize(backup) > 0
        # An edit after the backup, which the restore must undo.
        subprocess.run(["/usr/bin/lockstep", "put", "after:backup", "1"], env=cli_env,
                       check=True, capture_output=True)

        # `systemctl stop lockstep`: SIGTERM, as systemd sends it.
        proc.terminate()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        proc = None
        # README's restore, as it spells it.
        subprocess.run(["rm", "-f", "/var/lib/lockstep/lockstep.db-wal",
                        "/var/lib/lockstep/lockstep.db-shm"], check=True)
        subprocess.run(["install", "-o", "lockstep", "-g", "lockstep", "-m", "0640", backup,
                        db], check=True)
        # `systemctl start lockstep`: ExecStart again, as systemd would.
        proc = exec_as_systemd(unit_service_section(UNIT),
                               {"LOCKSTEP_LISTEN": f"127.0.0.1:{port}"}, notify.path)
        try:
            message = notify.wait(timeout=60)
        except TimeoutError:
            proc.kill()
            raise AssertionError("no READY=1 after the restore: "
                                 + proc.communicate()[1].decode()[-2000:])
        assert "READY=1" in message.split("\n"), message
        keys = subprocess.run(["/usr/bin/lockstep", "ls"], env=cli_env, check=True,
                              capture_output=True, text=True).stdout
        assert "price:apple" in keys and "after:backup" not in keys, keys

        proc.terminate()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        proc = None
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        if notify_dir:
            shutil.rmtree(notify_dir, ignore_errors=True)
        subprocess.run(["dpkg", "--purge", "lockstep"], capture_output=True)
        shutil.rmtree("/var/lib/lockstep", ignore_errors=True)
        if not had_user:
            subprocess.run(["userdel", "lockstep"], capture_output=True)
    assert not os.path.exists(f"/usr/lib/{MULTIARCH}/liblockstep.so.1")
