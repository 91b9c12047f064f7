"""Every command of README's Install section is run by a test (or, for systemctl, which needs
a booted systemd, checked by one): this list says which, and fails when README gains a
command no test runs."""

import os
import re

from conftest import REPO

# README command -> the test that runs it (file::function).
RUN_BY = {
    "pip wheel --no-deps -w dist ./bindings/python":
        "test_python_wheel.py::wheel",
    "pip install dist/lockstep-0.1.0-py3-none-manylinux_2_34_x86_64.whl":
        "test_python_wheel.py::test_a_fresh_venv_elsewhere_installs_the_wheel_and_reads_from_a_data_server",
    "./scripts/install.sh --prefix /opt/lockstep":
        "conftest.py::prefix",
    "export PKG_CONFIG_PATH=/opt/lockstep/lib/pkgconfig":
        "conftest.py::pkg_config_env",
    "make -C examples/c installed":
        "test_install_prefix.py::test_the_c_example_builds_through_pkg_config_and_reads_from_a_data_server",
    "cc app.c $(pkg-config --cflags --libs lockstep) -Wl,-rpath,/opt/lockstep/lib -o app":
        "test_install_prefix.py::test_the_installed_header_compiles_as_c99_and_as_cpp",
    "bindings/php/build.sh --installed":
        "test_php_installed.py::test_the_extension_builds_against_the_installed_library_and_php_fpm_serves_with_it",
    "bindings/nginx/build.sh --installed":
        "test_nginx_probe.py::test_the_module_builds_against_the_installed_library_and_serves_from_it",
    "./scripts/package-deb.sh":
        "test_deb.py::deb",
    "dpkg -i target/debian/lockstep_0.1.0_amd64.deb":
        "test_deb.py::test_installed_package_runs_as_its_unit_says_and_serves_a_client",
    # systemctl needs a booted systemd: the unit is verified (systemd-analyze verify) and its
    # ExecStart run as systemd runs it, READY=1 awaited on a NOTIFY_SOCKET.
    "systemctl enable --now lockstep":
        "test_deb.py::test_installed_package_runs_as_its_unit_says_and_serves_a_client",
    "LOCKSTEP_ADMIN_TOKEN=$(cat /etc/lockstep/admin-token) lockstep put price:apple 1.25":
        "test_deb.py::test_installed_package_runs_as_its_unit_says_and_serves_a_client",
    "lockstep backup --db /var/lib/lockstep/lockstep.db /var/backups/lockstep.db":
        "test_deb.py::test_installed_package_runs_as_its_unit_says_and_serves_a_client",
    "systemctl stop lockstep":
        "../../server/tests/backup.rs::a_backup_taken_while_edits_and_rotations_go_on_restores_to_a_whole_consistent_state",
    "rm -f /var/lib/lockstep/lockstep.db-wal /var/lib/lockstep/lockstep.db-shm":
        "../../server/tests/backup.rs::a_backup_taken_while_edits_and_rotations_go_on_restores_to_a_whole_consistent_state",
    "install -o lockstep -g lockstep -m 0640 /var/backups/lockstep.db /var/lib/lockstep/lockstep.db":
        "../../server/tests/backup.rs::a_backup_taken_while_edits_and_rotations_go_on_restores_to_a_whole_consistent_state",
    "systemctl start lockstep":
        "../../server/tests/backup.rs::a_backup_taken_while_edits_and_rotations_go_on_restores_to_a_whole_consistent_state",
    "pg_dump -Fc -f lockstep.dump postgres://lockstep@db.internal/lockstep":
        "../../server/tests/backup.rs::a_postgres_farm_is_backed_up_with_pg_dump_and_restored_with_pg_restore",
    "pg_restore -d postgres://lockstep@db.internal/lockstep_restored lockstep.dump":
        "../../server/tests/backup.rs::a_postgres_farm_is_backed_up_with_pg_dump_and_restored_with_pg_restore",
}


def install_commands():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    return [line[4:] for line in section.splitlines()
            if line.startswith("    ") and not line.startswith("     ")]


def test_every_install_command_in_readme_is_run_by_a_test():
    commands = install_commands()
    assert len(commands) >= 15, commands
    missing = [c for c in commands if c not in RUN_BY]
    assert not missing, f"README commands no test runs: {missing}"
    here = os.path.dirname(__file__)
    for command, where in RUN_BY.items():
        path, name = where.split("::")
        with open(os.path.join(here, path)) as f:
            source = f.read()
        assert re.search(rf"\bfn {name}\b|\bdef {name}\b", source), (command, where)


def test_the_readme_names_the_versions_the_build_produces():
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        version = re.search(r'^version = "(.+)"$', f.read(), re.M).group(1)
    for command in install_commands():
        for found in re.findall(r"lockstep[-_](\d+\.\d+\.\d+)", command):
            assert found == version, command
