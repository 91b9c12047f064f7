"""Every command of README's Install section is run by a test (or, for systemctl, which needs
a booted systemd, checked by one): this list says which test function runs it and what in
that function's source runs it, and fails when README gains a command no test runs or a
test stops running its command."""

import os
import re

from conftest import REPO

# README command -> (file, the function that runs it, what that function's source must hold:
# the command as the test spells it, or its distinctive part). A mapping to a function that
# does not run the command fails here.
DEB = ("test_deb.py", "test_installed_package_runs_as_its_unit_says_and_serves_a_client")
RUN_BY = {
    "pip wheel --no-deps -w dist ./bindings/python":
        ("test_python_wheel.py", "wheel", '"wheel", "-q", "--no-deps"'),
    "pip install dist/lockstep-0.1.0-py3-none-manylinux_2_34_x86_64.whl":
        ("test_python_wheel.py",
         "test_a_fresh_venv_elsewhere_installs_the_wheel_and_reads_from_a_data_server",
         '"-m", "pip", "install"'),
    "./scripts/install.sh --prefix /opt/lockstep":
        ("conftest.py", "prefix", '"install.sh"), "--prefix"'),
    "export PKG_CONFIG_PATH=/opt/lockstep/lib/pkgconfig":
        ("conftest.py", "pkg_config_env", 'PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig")'),
    "make -C examples/c installed":
        ("test_install_prefix.py",
         "test_the_c_example_builds_through_pkg_config_and_reads_from_a_data_server",
         '"make", "-s", "-B", "-C", example, "installed"'),
    "cc app.c $(pkg-config --cflags --libs lockstep) -Wl,-rpath,/opt/lockstep/lib -o app":
        ("test_install_prefix.py", "test_the_installed_header_compiles_as_c99_and_as_cpp",
         'f"-Wl,-rpath,{prefix}/lib", "-o"'),
    "bindings/php/build.sh --installed":
        ("test_php_installed.py",
         "test_the_extension_builds_against_the_installed_library_and_php_fpm_serves_with_it",
         '"build.sh"), "--installed"'),
    "bindings/nginx/build.sh --installed":
        ("test_nginx_probe.py",
         "test_the_module_builds_against_the_installed_library_and_serves_from_it",
         '"build.sh"), "--installed"'),
    "./scripts/package-deb.sh":
        ("test_deb.py", "deb", '"package-deb.sh")'),
    "dpkg -i target/debian/lockstep_0.1.0_amd64.deb": DEB + ('["dpkg", "-i", deb]',),
    "LOCKSTEP_ADMIN_TOKEN=$(cat /etc/lockstep/admin-token) lockstep put price:apple 1.25":
        DEB + ('"put", "price:apple", "1.25"',),
    "lockstep backup --db /var/lib/lockstep/lockstep.db /var/backups/lockstep.db":
        DEB + ('"backup", "--db", db',),
    "rm -f /var/lib/lockstep/lockstep.db-wal /var/lib/lockstep/lockstep.db-shm":
        DEB + ('"rm", "-f", "/var/lib/lockstep/lockstep.db-wal",',),
    "install -o lockstep -g lockstep -m 0640 /var/backups/lockstep.db /var/lib/lockstep/lockstep.db":
        DEB + ('"install", "-o", "lockstep", "-g", "lockstep", "-m", "0640"',),
    "pg_dump -Fc -f lockstep.dump postgres://lockstep@db.internal/lockstep":
        ("../../server/tests/backup.rs",
         "a_postgres_farm_is_backed_up_with_pg_dump_and_restored_with_pg_restore",
         'Command::new("pg_dump")\n        .args(["-Fc", "-f"])'),
    "pg_restore -d postgres://lockstep@db.internal/lockstep_restored lockstep.dump":
        ("../../server/tests/backup.rs",
         "a_postgres_farm_is_backed_up_with_pg_dump_and_restored_with_pg_restore",
         'Command::new("pg_restore").args(["-d", &to])'),
    # The ```python block, run as README has it (LOCKSTEP_SERVER set) in the fresh venv.
    "```python": ("test_python_wheel.py",
                  "test_a_fresh_venv_elsewhere_installs_the_wheel_and_reads_from_a_data_server",
                  "readme_python_block()"),
}

# Commands no test can run here, and what stands in for them. systemctl needs a booted
# systemd (PID 1), which CI's containers lack: the .deb test verifies the unit with
# `systemd-analyze verify` and runs its ExecStart as systemd would (exec_as_systemd), and
# stops it with the SIGTERM systemd sends.
CHECKED_INSTEAD = {
    "systemctl enable --now lockstep": DEB + ('"systemd-analyze", "verify", UNIT',),
    "systemctl stop lockstep": DEB + ("proc.terminate()",),
    "systemctl start lockstep": DEB + ("# `systemctl start lockstep`: ExecStart again",),
}


def install_commands():
    """Every indented command line of README's Install section, and each fenced block by its
    opening line."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    commands = [line[4:] for line in section.splitlines()
                if line.startswith("    ") and not line.startswith("     ")]
    return commands + re.findall(r"^```\w+$", section, re.M)


def function_source(path, name):
    """The source of the Python or Rust function `name` in `path`, up to the next top-level
    item."""
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"(def|fn|async fn) {name}\(", line):
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j] and not lines[j][0].isspace()), len(lines))
            return "\n".join(lines[i:end])
    raise AssertionError(f"{name} not found in {path}")


def test_every_install_command_in_readme_is_run_by_a_test():
    commands = install_commands()
    assert len(commands) >= 16, commands
    mapped = {**RUN_BY, **CHECKED_INSTEAD}
    missing = [c for c in commands if c not in mapped]
    assert not missing, f"README commands no test runs: {missing}"
    stale = [c for c in mapped if c not in commands]
    assert not stale, f"mapped commands README no longer has: {stale}"
    here = os.path.dirname(__file__)
    for command, (path, name, fragment) in mapped.items():
        source = function_source(os.path.join(here, path), name)
        assert fragment in source, (command, f"{path}::{name} does not run it")


def test_the_readme_names_the_versions_the_build_produces():
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        version = re.search(r'^version = "(.+)"$', f.read(), re.M).group(1)
    for command in install_commands():
        for found in re.findall(r"lockstep[-_](\d+\.\d+\.\d+)", command):
            assert found == version, command
