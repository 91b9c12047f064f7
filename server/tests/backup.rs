//! `lockstep backup FILE`: a consistent copy of a running data server's SQLite database,
//! which a data server started on it (the restore) serves as it was.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn backup(db: &str, file: &std::path::Path) -> Output {
    Command::new(bin())
        .args(["backup", "--db", db])
        .arg(file)
        .env_remove("LOCKSTEP_DB")
        .output()
        .unwrap()
}

/// Keys k0, k1, … of a `keys` listing, as numbers.
fn edit_numbers(keys: &serde_json::Value) -> Vec<usize> {
    let mut n: Vec<usize> = keys["keys"]
        .as_array()
        .or_else(|| keys.as_array())
        .expect("a key list")
        .iter()
        .filter_map(|k| k["key"].as_str()?.strip_prefix('k')?.parse().ok())
        .collect();
    n.sort();
    n
}

#[test]
fn a_backup_taken_while_edits_and_rotations_go_on_restores_to_a_whole_consistent_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lockstep.db");
    let s = Server::start(&db, &["--interval", "200ms", "--min-window", "100ms"]);
    // An editor putting k0, k1, … one after the other, each acknowledged before the next,
    // while check-ins rotate: a consistent copy holds k0..=kN with no gap.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let url = s.url.clone();
    let editor = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::json!({"key": format!("k{i}"), "value": "x".repeat(2000)});
                let a = post(
                    &format!("{url}/v1/admin/put"),
                    Some(TOKEN),
                    body.to_string().as_bytes(),
                );
                assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
                i += 1;
                done.store(i, Ordering::Relaxed);
                if i % 10 == 0 {
                    // Rotations happen at check-ins.
                    get(&format!("{url}/v1/checkin?name=editor"), None, &[]);
                }
            }
        })
    };
    while done.load(Ordering::Relaxed) < 50 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = dir.path().join("backup.db");
    let out = backup(db.to_str().unwrap(), &file);
    let during = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    editor.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("lockstep: backed up "), "{said}");
    // One self-contained file: nothing beside it to forget when copying it away.
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("backup.db"))
        .collect();
    assert_eq!(beside, ["backup.db"]);

    let in_backup: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("SELECT count(*) FROM production", [], |row| row.get(0))
        .unwrap();

    // Restore as README says: stop the data server (here the hard way, leaving its WAL
    // behind), remove the database's -wal and -shm files, put the backup in its place.
    drop(s);
    for stale in ["lockstep.db-wal", "lockstep.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(stale));
    }
    std::fs::copy(&file, &db).unwrap();
    let r = Server::start(&db, &["--interval", "200ms", "--min-window", "100ms"]);
    let edits = edit_numbers(&admin_get(&r, "/v1/admin/keys"));
    assert!(edits.len() >= 50, "{} edits", edits.len());
    assert_eq!(
        edits,
        (0..edits.len()).collect::<Vec<_>>(),
        "a gap: not one instant"
    );
    assert!(edits.len() <= during + 1);
    // Exactly the backup: nothing the data server wrote after it came back.
    assert_eq!(edits.len() as i64, in_backup);
    // It carries on: a new edit goes live on the restored data server.
    put(&r, "after-restore", "yes");
    wait_active(&r, "after-restore", "yes");
}

#[test]
fn a_postgres_farm_is_backed_up_with_pg_dump_and_restored_with_pg_restore() {
    // README's commands for PostgreSQL, against a throwaway cluster.
    let Some(cluster) = common::postgres::cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = cluster.new_database();
    let s = Server::start(
        std::path::Path::new(&from),
        &["--interval", "200ms", "--min-window", "100ms"],
    );
    for i in 0..20 {
        put(&s, &format!("k{i}"), "v");
    }
    wait_active(&s, "k19", "v");
    let dump = dir.path().join("lockstep.dump");
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&from));
    let history = admin_get(&s, "/v1/admin/history");
    drop(s);

    let to = cluster.new_database();
    run(Command::new("pg_restore").args(["-d", &to]).arg(&dump));
    let r = Server::start(std::path::Path::new(&to), &[]);
    assert_eq!(
        edit_numbers(&admin_get(&r, "/v1/admin/keys")),
        (0..20).collect::<Vec<_>>()
    );
    let restored = admin_get(&r, "/v1/admin/history");
    assert_eq!(restored["versions"], history["versions"]);
}

#[test]
fn backup_never_overwrites_a_file_and_sends_postgres_users_to_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lockstep.db");
    let s = Server::start(&db, &[]);
    put(&s, "k", "v");
    let file = dir.path().join("exists.db");
    std::fs::write(&file, b"precious").unwrap();
    let out = backup(db.to_str().unwrap(), &file);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    let out = backup(
        "postgres://lockstep@127.0.0.1:1/lockstep",
        &dir.path().join("pg"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));

    let out = backup(
        dir.path().join("missing.db").to_str().unwrap(),
        &dir.path().join("m"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !dir.path().join("missing.db").exists(),
        "backup created the database"
    );
}
