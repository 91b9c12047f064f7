//! `lockstep vacuum`: gives the space retention freed in a SQLite database back to the file
//! system.
//!
//! A database made by this version frees it by itself (`auto_vacuum=INCREMENTAL`, and the data
//! server runs `PRAGMA incremental_vacuum` after each pruning). A file made before that has
//! `auto_vacuum=NONE`: it reuses freed pages for new versions but never shrinks, and the
//! setting only changes with a full `VACUUM`, which rewrites the file and holds the write lock
//! meanwhile. So that is a command of its own, run once, best with the data server stopped
//! (while it runs, its writes wait for the rewrite). PostgreSQL's data server VACUUMs the
//! version tables after each pruning itself.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::Location;

/// What a vacuum did, for the command's one line.
pub struct Vacuumed {
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Whether the file was converted to incremental vacuum (rewritten whole).
    pub converted: bool,
}

pub fn vacuum(db: &str) -> Result<Vacuumed, String> {
    let path = match Location::parse(db)? {
        Location::Sqlite(path) => path,
        Location::Postgres(_) => {
            return Err(
                "vacuum is for a SQLite database: on PostgreSQL the data server VACUUMs \
                 the version tables after each pruning (VACUUM FULL gives the space back to \
                 the file system, and locks them meanwhile)"
                    .to_owned(),
            )
        }
    };
    if !path.exists() {
        return Err(format!("no database at {}", path.display()));
    }
    let fail = |what: &str, e: rusqlite::Error| format!("cannot {what} {}: {e}", path.display());
    // Never creates a file, and never migrates: only what the database holds is rewritten.
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| fail("open", e))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| fail("open", e))?;
    conn.query_row("SELECT count(*) FROM versions", [], |r| r.get::<_, i64>(0))
        .map_err(|e| format!("{} holds no Lockstep database: {e}", path.display()))?;
    let bytes_before = file_bytes(&path);
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(|e| fail("read", e))?;
    // 2: INCREMENTAL.
    let converted = mode != 2;
    let sql = if converted {
        "PRAGMA auto_vacuum = INCREMENTAL; VACUUM;"
    } else {
        "PRAGMA incremental_vacuum;"
    };
    conn.execute_batch(sql).map_err(|e| fail("vacuum", e))?;
    // In WAL mode the file shrinks when the log is written back, and VACUUM wrote the whole
    // database into the log.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| fail("checkpoint", e))?;
    Ok(Vacuumed {
        bytes_before,
        bytes_after: file_bytes(&path),
        converted,
    })
}

/// The database file and its write-ahead log.
fn file_bytes(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path.as_os_str(), wal.as_os_str()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}
