//! `lockstep migrate`: a SQLite data server's state moved to PostgreSQL, whole.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::postgres::Backend;
use common::*;

fn migrate(from: &Path, to: &Path) -> Output {
    Command::new(bin())
        .arg("migrate")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap()
}

/// What the admin API shows of the state a migration must carry.
fn views(s: &Server) -> Vec<(&'static str, serde_json::Value)> {
    [
        ("history", "/v1/admin/history?limit=1000000"),
        ("rotations", "/v1/admin/rotations"),
        ("keys", "/v1/admin/keys?limit=1000000"),
        ("scheduled", "/v1/admin/scheduled"),
        ("audit", "/v1/admin/audit?limit=100000"),
    ]
    .into_iter()
    .map(|(name, path)| (name, admin_get(s, path)))
    .collect()
}

fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn a_sqlite_farm_moves_to_postgres_with_its_versions_schedules_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pg) = Backend::Postgres.database(dir.path()) else {
        return;
    };
    let sqlite = dir.path().join("lockstep.db");
    let s = Server::start(&sqlite, &["--interval", "300ms", "--min-window", "150ms"]);
    for i in 0..5 {
        put(&s, &format!("k{i}"), &format!("v{i}"));
        put(&s, "binary", &format!("\u{1}\u{0}{i}"));
        std::thread::sleep(Duration::from_millis(400));
        // Rotations happen at check-ins.
        checkin(&s, "probe");
    }
    // One change applied already, one still waiting.
    let soon = rfc3339(now_us() + 100_000);
    // Far beyond the next activation of the 1h cycle set below (a grid point up to 2 h away).
    let later = rfc3339(now_us() + 10 * 86_400_000_000);
    for (key, at) in [("soon", &soon), ("later", &later)] {
        admin_post(
            &s,
            "/v1/admin/put",
            serde_json::json!({"key": key, "value": "scheduled", "at": at}),
        );
    }
    wait_active(&s, "soon", "scheduled");
    let sync = checkin(&s, "probe").sync;
    assert_eq!(
        get(
            &format!("{}/v1/versions/{}", s.url, sync.active_version),
            None,
            &[]
        )
        .status,
        200
    );
    // A cycle long enough that nothing rotates while the views are compared.
    admin_post(
        &s,
        "/v1/admin/interval",
        serde_json::json!({"interval": "1h"}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while checkin(&s, "probe").sync.activation_time_us < now_us() + 60_000_000 {
        assert!(Instant::now() < deadline, "the long cycle never began");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A pin and the change sets move too (checked after the migration).
    admin_post(&s, "/v1/admin/pin", serde_json::json!({"version": 2}));
    let in_v3: Vec<Option<String>> = (0..5)
        .map(|i| value_in_version(&s, &format!("k{i}"), 3))
        .collect();
    // The urgent window is the farm's setting too.
    admin_post(
        &s,
        "/v1/admin/interval",
        serde_json::json!({"interval": "1h", "urgent_window": "1500ms"}),
    );
    let before = views(&s);
    let table = checkin(&s, "probe").sync;
    // Stopped cleanly, so that its download counts are written.
    let mut s = s;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    assert!(s.child.wait().unwrap().success());

    let out = migrate(&sqlite, &pg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("checksums verified"), "{stdout}");

    let p = Server::start(&pg, &[]);
    assert_eq!(checkin(&p, "probe").sync, table);
    assert_eq!(
        admin_get(&p, "/v1/admin/status")["urgent_window_us"],
        1_500_000
    );
    for ((name, a), (_, b)) in before.iter().zip(views(&p)) {
        assert_eq!(*a, b, "{name} differs after the migration");
    }
    let versions = before[0].1.as_array().unwrap().len();
    assert!(versions > 5, "only {versions} versions to migrate");
    // The versions themselves: every one served from PostgreSQL verifies.
    for v in 1..=versions {
        let bytes = get(&format!("{}/v1/versions/{v}", p.url), None, &[]).body;
        assert_eq!(
            lockstep::format::decode(&bytes).unwrap().0.version,
            v as u64
        );
    }
    // The migrated farm carries on: a new scheduled change gets a new id, and edits go live.
    admin_post(
        &p,
        "/v1/admin/put",
        serde_json::json!({"key": "later2", "value": "x", "at": later}),
    );
    let scheduled = admin_get(&p, "/v1/admin/scheduled");
    assert_eq!(scheduled.as_array().unwrap().len(), 2, "{scheduled}");

    // A second migration into a database that holds state is refused, and changes nothing.
    let again = migrate(&sqlite, &pg);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds"), "{stderr}");
    assert_eq!(admin_get(&p, "/v1/admin/scheduled"), scheduled);

    // With retention at its tightest, the pinned version keeps its content, and one whose
    // content is dropped is rebuilt from the change sets the migration carried.
    drop(p);
    let p = Server::start(&pg, &["--keep-versions", "1", "--keep-for", "1ms"]);
    let row = |v: u64| {
        admin_get(&p, "/v1/admin/history?limit=1000000")
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .unwrap()
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while row(3).get("pruned_us").is_none() {
        assert!(Instant::now() < deadline, "version 3 never dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(row(2)["pinned"], true);
    assert!(row(2).get("pruned_us").is_none(), "{}", row(2));
    let rebuilt: Vec<Option<String>> = (0..5)
        .map(|i| value_in_version(&p, &format!("k{i}"), 3))
        .collect();
    assert_eq!(rebuilt, in_v3);
}

#[test]
fn migrating_from_a_database_that_does_not_exist_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("missing.db");
    let out = migrate(&missing, &dir.path().join("to.db"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!missing.exists());
}

#[test]
fn a_copy_that_differs_from_its_source_is_refused_and_leaves_the_target_empty() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pg) = Backend::Postgres.database(dir.path()) else {
        return;
    };
    let sqlite = dir.path().join("lockstep.db");
    {
        let s = Server::start(&sqlite, &["--interval", "10m"]);
        put(&s, "price", "1");
        put(&s, "stock", "2");
    }
    // The target changes every production value it is given, by a trigger that an event
    // trigger adds as soon as the migration creates the table: a copy that does not match.
    let name = pg.to_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let cluster = common::postgres::cluster().unwrap();
    cluster.psql(
        &name,
        "CREATE FUNCTION skew() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN NEW.value := NEW.value || '\\x00'::bytea; RETURN NEW; END $$; \
         CREATE FUNCTION arm() RETURNS event_trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() \
                          WHERE object_identity = 'public.production') THEN \
           EXECUTE 'CREATE TRIGGER skew BEFORE INSERT ON production \
                    FOR EACH ROW EXECUTE FUNCTION skew()'; \
         END IF; END $$; \
         CREATE EVENT TRIGGER arm ON ddl_command_end WHEN TAG IN ('CREATE TABLE') \
         EXECUTE FUNCTION arm()",
    );
    let out = migrate(&sqlite, &pg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a differing copy was accepted");
    assert!(stderr.contains("differs from the source"), "{stderr}");
    for table in ["production", "versions", "sync", "rotations", "blobs"] {
        assert_eq!(
            cluster.psql(&name, &format!("SELECT count(*) FROM {table}")),
            "0",
            "the refused copy left rows in {table}"
        );
    }
}
