//! `lockstep backup FILE`: a consistent copy of a running data server's SQLite database.
//!
//! SQLite's online backup API copies the database page by page inside one read transaction,
//! so the copy is the database as of one instant, even while the data server commits
//! rotations and edits (WAL readers never block its writer). All pages go in one step: a
//! step-wise backup restarts whenever another connection writes, and the farm table is
//! written every second. The copy is made beside FILE, checked, synced and renamed into
//! place, so FILE is either the whole backup or absent. PostgreSQL has its own tool,
//! `pg_dump` (README).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::StepResult;
use rusqlite::{Connection, OpenFlags};

use crate::store::Location;

/// How long the backup waits for a writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Between attempts while the database is locked: about a check-in batch's commit.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What a finished backup holds, for the command's one line.
pub struct BackedUp {
    pub bytes: u64,
    pub versions: i64,
}

pub fn backup(db: &str, file: &Path) -> Result<BackedUp, String> {
    let source = match Location::parse(db)? {
        Location::Sqlite(path) => path,
        Location::Postgres(_) => {
            return Err(
                "backup copies a SQLite database; for PostgreSQL use pg_dump \
                 (pg_dump -Fc -f FILE URL, restored with pg_restore; see README)"
                    .to_owned(),
            )
        }
    };
    if !source.exists() {
        return Err(format!("no database at {}", source.display()));
    }
    if file.exists() {
        return Err(format!(
            "{} exists: backup never overwrites a file",
            file.display()
        ));
    }
    let partial = partial_path(file);
    let result = copy(&source, &partial).and_then(|_| check(&partial));
    match result {
        Ok(versions) => {
            sync_file(&partial)?;
            std::fs::rename(&partial, file)
                .map_err(|e| format!("cannot rename {} into place: {e}", partial.display()))?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                sync_dir(dir)?;
            }
            let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            Ok(BackedUp { bytes, versions })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    file.with_file_name(name)
}

fn copy(source: &Path, partial: &Path) -> Result<(), String> {
    // Read-only: a backup never migrates or otherwise changes the database it copies.
    let from = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", source.display()))?;
    from.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("cannot set a busy timeout: {e}"))?;
    let _ = std::fs::remove_file(partial);
    let mut to = Connection::open(partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    copy_pages(&from, &mut to, source)?;
    // The pages carry the source's WAL mode; a backup is one self-contained file instead
    // (the data server turns WAL back on when it opens a restored copy).
    to.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| format!("cannot finish {}: {e}", partial.display()))
}

fn copy_pages(from: &Connection, to: &mut Connection, source: &Path) -> Result<(), String> {
    let backup = rusqlite::backup::Backup::new(from, to)
        .map_err(|e| format!("cannot start the backup: {e}"))?;
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        // -1: every page in this one step, so in one read transaction.
        match backup.step(-1) {
            Ok(StepResult::Done) => return Ok(()),
            Ok(StepResult::More | StepResult::Busy | StepResult::Locked)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(RETRY_PAUSE)
            }
            Ok(other) => {
                return Err(format!(
                    "backup of {} did not finish in {BUSY_TIMEOUT:?} ({other:?})",
                    source.display()
                ))
            }
            Err(e) => return Err(format!("backup of {} failed: {e}", source.display())),
        }
    }
}

/// SQLite's own check of the copy, and how many versions it holds.
fn check(partial: &Path) -> Result<i64, String> {
    let db = Connection::open_with_flags(partial, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open the copy: {e}"))?;
    let verdict: String = db
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| format!("cannot check the copy: {e}"))?;
    if verdict != "ok" {
        return Err(format!("the copy failed SQLite's check: {verdict}"));
    }
    db.query_row("SELECT count(*) FROM versions", [], |row| row.get(0))
        .map_err(|e| format!("the copy holds no Lockstep database: {e}"))
}

fn sync_file(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}
