//! The host cache: one directory per data server that every process of a host shares, so the
//! host, not the process, is the unit of the farm.
//!
//! # What lives there
//!
//! ```text
//! <cache_dir>/                      0700, owned by this user (refused otherwise)
//!   <host_port>-<hash>/             one per data server URL: two farms never mix
//!     leader.lock                   flock'd by the one process that talks to the data server
//!     schedule.json                 the leader's word: active, staged and its instant
//!     v<number>-<checksum>.lkv      immutable versions, 0400, mapped read-only by every process
//!     m-<pid>.json                  each follower's heartbeat, for the farm view
//! ```
//!
//! # Why it is built this way
//!
//! * **Immutable version files, named by number and checksum.** A name says exactly which
//!   bytes it holds, so a file is never rewritten: the leader writes a temporary file, fsyncs
//!   it, maps and verifies it, and only then renames it into place. A reader therefore never
//!   sees a torn file under a version's name; and it verifies every file it maps all the same
//!   (a disk can rot, a person can copy files around), removing one that does not verify.
//!   Unlinking a file that processes still map is safe on Linux: the pages live until the
//!   last mapping goes.
//! * **The leader is whoever holds `flock(leader.lock)`.** The kernel releases the lock when
//!   the leader dies, however it dies, and another process takes over at its next try. An
//!   `flock` belongs to the open file description, which a `fork()` child shares: the child's
//!   copy of the descriptor is closed in the `pthread_atfork` child hook ([`close_in_child`]),
//!   so a child never keeps a dead parent's leadership alive.
//! * **The schedule carries instants on CLOCK_MONOTONIC**, which every process of a host
//!   shares, with the boot id they belong to: followers arm the very instant the leader arms,
//!   so the spread inside a host is that of reading one clock; after a reboot the instants
//!   are ignored (the active version is still served).
//! * **Every path is opened relative to the directory's descriptor without following
//!   symlinks**, and the directory itself is checked (owner, mode) after it is opened, so a
//!   planted symlink or a directory another user can write to is refused, not used.

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::activation::Version;
use crate::wire;

/// Versions kept besides the active and staged ones, for rollbacks and late followers.
const KEEP_PREVIOUS: usize = 3;
/// A temporary file older than this was left by a leader that died mid-write.
const STALE_TEMP_SECS: u64 = 60;
/// The schedule file's format; a reader ignores others.
const SCHEDULE_FORMAT: u32 = 1;
/// Largest schedule or member file read: they are a few hundred bytes.
const SMALL_FILE_MAX: usize = 64 << 10;

/// Why the host cache cannot be used; the handle then keeps versions in its own memory.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("host cache {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("host cache {0} is a symlink; refusing it")]
    Symlink(PathBuf),
    #[error("host cache {0} belongs to uid {1}, not to this process's uid {2}; refusing it")]
    Owner(PathBuf, u32, u32),
    #[error("host cache {0} is writable by group or others (mode {1:o}); refusing it")]
    Mode(PathBuf, u32),
    #[error("host cache file {0} does not verify: {1}")]
    Corrupt(String, String),
}

/// Where a handle's host cache is, by default: `$LOCKSTEP_CACHE_DIR`, else
/// `/var/tmp/lockstep-<uid>` (per user: PHP-FPM, gunicorn and nginx workers usually run as
/// different users, and a cache is shared only by processes of one user).
pub fn default_root() -> PathBuf {
    match std::env::var_os("LOCKSTEP_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        // SAFETY: geteuid cannot fail.
        None => PathBuf::from(format!("/var/tmp/lockstep-{}", unsafe { libc::geteuid() })),
    }
}

/// The subdirectory of one data server: readable, and unique per URL.
pub fn server_dir_name(url: &str) -> String {
    let readable: String = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = xxhash_rust::xxh3::xxh3_64(url.as_bytes());
    format!("{readable}-{:08x}", hash as u32)
}

/// A version as the schedule names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub version: u64,
    pub checksum: u64,
}

impl FileRef {
    pub fn of(v: &Version) -> FileRef {
        FileRef {
            version: v.number(),
            checksum: v.checksum(),
        }
    }

    fn file_name(&self) -> String {
        format!(
            "v{}-{}.lkv",
            self.version,
            wire::checksum_hex(self.checksum)
        )
    }
}

/// The staged version and when it activates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRef {
    pub file: FileRef,
    /// The activation time on the data server's clock, µs.
    pub activation_us: i64,
    /// The same instant on this host's CLOCK_MONOTONIC, ns (valid for `boot_id` only).
    pub at_mono_ns: i64,
}

/// The leader's word to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub format: u32,
    /// `/proc/sys/kernel/random/boot_id` when written: monotonic instants of another boot
    /// mean nothing.
    pub boot_id: String,
    pub leader_pid: u32,
    /// When the leader last wrote it (CLOCK_MONOTONIC ns): its heartbeat.
    pub written_mono_ns: i64,
    /// The data server's clock at the leader's last successful check-in, µs (0: none).
    pub confirmed_us: i64,
    /// The same moment on CLOCK_MONOTONIC, ns: a follower that started before it knows its
    /// version has been confirmed since.
    pub confirmed_mono_ns: i64,
    pub active: Option<FileRef>,
    pub staged: Option<StagedRef>,
    pub clock_offset_us: i64,
    pub clock_error_us: i64,
    pub lagging: bool,
    /// The data server's clock at the leader's last check-in that answered, µs (0: none),
    /// even one whose cycle has not finished: a follower serving the version the leader
    /// activated on it shows when its host last heard from the data server, not "never".
    #[serde(default)]
    pub last_checkin_us: i64,
}

impl Schedule {
    pub fn new(leader_pid: u32) -> Schedule {
        Schedule {
            format: SCHEDULE_FORMAT,
            boot_id: boot_id(),
            leader_pid,
            written_mono_ns: 0,
            confirmed_us: 0,
            confirmed_mono_ns: 0,
            active: None,
            staged: None,
            clock_offset_us: 0,
            clock_error_us: 0,
            lagging: false,
            last_checkin_us: 0,
        }
    }

    /// True if its monotonic instants belong to this boot.
    pub fn same_boot(&self) -> bool {
        self.boot_id == boot_id()
    }
}

/// A follower's heartbeat, which the leader reports to the data server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub pid: u32,
    pub name: String,
    pub active: u64,
    pub staged: u64,
    pub lagging: bool,
    pub written_mono_ns: i64,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Descriptors of held leader locks, closed in a `fork()` child (see the module notes).
static LOCK_FDS: [AtomicI32; 64] = [const { AtomicI32::new(-1) }; 64];

/// Closes, in a `fork()` child, the leader-lock descriptors inherited from the parent. Only
/// async-signal-safe calls: it runs in the `pthread_atfork` child hook.
pub fn close_in_child() {
    for slot in &LOCK_FDS {
        let fd = slot.swap(-1, Relaxed);
        if fd >= 0 {
            // SAFETY: the descriptor was registered by a LeaderLock of the parent; in the
            // child no LeaderLock will close it (their threads did not survive the fork).
            unsafe { libc::close(fd) };
        }
    }
}

/// Leadership of one host cache, for as long as it lives.
pub struct LeaderLock {
    /// Held, not read: closing it releases the flock.
    _fd: OwnedFd,
    slot: Option<usize>,
}

impl Drop for LeaderLock {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            LOCK_FDS[i].store(-1, Relaxed);
        }
        // Closing `fd` releases the flock.
    }
}

fn cstr(name: &str) -> CString {
    CString::new(name).expect("cache file names have no NUL")
}

fn last_os_error_at(path: &Path) -> CacheError {
    CacheError::Io(path.to_owned(), io::Error::last_os_error())
}

/// One data server's directory in the host cache.
pub struct HostCache {
    path: PathBuf,
    dir: OwnedFd,
}

impl HostCache {
    /// Opens (creating 0700 where missing) `root` and the subdirectory for `url`, refusing
    /// symlinks, directories of another owner and directories others may write to.
    pub fn open(root: &Path, url: &str) -> Result<HostCache, CacheError> {
        let root_fd = open_private_dir(None, root)?;
        let name = server_dir_name(url);
        let path = root.join(&name);
        let dir = open_private_dir(Some((&root_fd, &name)), &path)?;
        Ok(HostCache { path, dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Becomes the host's leader if nobody is; None if another process leads.
    pub fn try_lead(&self) -> Result<Option<LeaderLock>, CacheError> {
        let fd = self.open_at("leader.lock", libc::O_RDWR | libc::O_CREAT, 0o600)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Ok(None),
                _ => Err(CacheError::Io(self.path.join("leader.lock"), e)),
            };
        }
        let slot = LOCK_FDS.iter().position(|s| {
            s.compare_exchange(-1, fd.as_raw_fd(), Relaxed, Relaxed)
                .is_ok()
        });
        Ok(Some(LeaderLock { _fd: fd, slot }))
    }

    /// True if some process (this one included) leads the host now. A schedule whose leader
    /// is gone may be stale: its staged version was the dead leader's last word.
    pub fn leader_alive(&self) -> bool {
        let Ok(fd) = self.open_at("leader.lock", libc::O_RDWR | libc::O_CREAT, 0o600) else {
            return false;
        };
        // SAFETY: flock on a descriptor we own; closing it (on drop) releases what we took.
        let free = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        !free
    }

    fn open_at(&self, name: &str, flags: i32, mode: libc::mode_t) -> Result<OwnedFd, CacheError> {
        let c = cstr(name);
        // SAFETY: a plain openat relative to our directory descriptor, never following a
        // symlink in the last component (the only one: names have no slash).
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(last_os_error_at(&self.path.join(name)));
        }
        // SAFETY: openat returned a fresh descriptor we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn unlink(&self, name: &str) {
        let c = cstr(name);
        // SAFETY: unlinkat relative to our directory descriptor.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) };
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), CacheError> {
        let (f, t) = (cstr(from), cstr(to));
        // SAFETY: renameat within our directory.
        let r = unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                f.as_ptr(),
                self.dir.as_raw_fd(),
                t.as_ptr(),
            )
        };
        if r != 0 {
            return Err(last_os_error_at(&self.path.join(to)));
        }
        Ok(())
    }

    fn temp_name(prefix: &str) -> String {
        format!(
            ".tmp-{prefix}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        )
    }

    /// Writes a small file atomically (temporary file, rename): readers see the old or the
    /// new content, never a mix. No fsync: after a crash an older schedule is still a valid
    /// one.
    fn write_small(&self, name: &str, bytes: &[u8]) -> Result<(), CacheError> {
        let tmp = Self::temp_name(name);
        let fd = self.open_at(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)?;
        let mut f = std::fs::File::from(fd);
        if let Err(e) = f.write_all(bytes) {
            self.unlink(&tmp);
            return Err(CacheError::Io(self.path.join(&tmp), e));
        }
        drop(f);
        self.rename(&tmp, name).inspect_err(|_| self.unlink(&tmp))
    }

    fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let fd = match self.open_at(name, libc::O_RDONLY, 0) {
            Ok(fd) => fd,
            Err(CacheError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        std::fs::File::from(fd)
            .take(SMALL_FILE_MAX as u64)
            .read_to_end(&mut out)
            .map_err(|e| CacheError::Io(self.path.join(name), e))?;
        Ok(Some(out))
    }

    /// The leader's last schedule; None if there is none (or it is not one this build reads).
    pub fn read_schedule(&self) -> Result<Option<Schedule>, CacheError> {
        Ok(self
            .read_small("schedule.json")?
            .and_then(|b| serde_json::from_slice::<Schedule>(&b).ok())
            .filter(|s| s.format == SCHEDULE_FORMAT))
    }

    pub fn write_schedule(&self, s: &Schedule) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(s).expect("a schedule serializes");
        self.write_small("schedule.json", &bytes)
    }

    /// A follower's heartbeat.
    pub fn write_member(&self, m: &Member) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(m).expect("a member serializes");
        self.write_small(&format!("m-{}.json", m.pid), &bytes)
    }

    pub fn remove_member(&self, pid: u32) {
        self.unlink(&format!("m-{pid}.json"));
    }

    /// Followers whose heartbeat is newer than `since_mono_ns`; older files are removed
    /// (their processes are gone), and so are files from the future (another boot's clock).
    pub fn members(&self, since_mono_ns: i64) -> Vec<Member> {
        let future = crate::clock::mono_ns() + 60_000_000_000;
        let mut out = Vec::new();
        for name in self.names() {
            if !(name.starts_with("m-") && name.ends_with(".json")) {
                continue;
            }
            match self
                .read_small(&name)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<Member>(&b).ok())
            {
                Some(m) if (since_mono_ns..future).contains(&m.written_mono_ns) => out.push(m),
                _ => self.unlink(&name),
            }
        }
        out.sort_by_key(|m| m.pid);
        out
    }

    fn names(&self) -> Vec<String> {
        std::fs::read_dir(&self.path)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Maps and verifies the file of `file`. None if there is no such file; a file that does
    /// not verify is removed (it will be fetched again) and reported.
    pub fn load(&self, file: FileRef) -> Result<Option<Arc<Version>>, CacheError> {
        let name = file.file_name();
        let fd = match self.open_at(&name, libc::O_RDONLY, 0) {
            Ok(fd) => fd,
            Err(CacheError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match map_and_verify(&fd, file) {
            Ok(v) => Ok(Some(Arc::new(v))),
            Err(why) => {
                self.unlink(&name);
                Err(CacheError::Corrupt(name, why))
            }
        }
    }

    /// Publishes a verified version as an immutable file (temporary file, fsync, map and
    /// verify, rename, fsync the directory) and returns it mapped from there.
    pub fn publish(&self, v: &Version) -> Result<Arc<Version>, CacheError> {
        let file = FileRef::of(v);
        let name = file.file_name();
        if let Ok(Some(existing)) = self.load(file) {
            return Ok(existing);
        }
        let tmp = Self::temp_name(&name);
        let fd = self.open_at(&tmp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600)?;
        let result = (|| {
            let mut f = std::fs::File::from(
                fd.try_clone()
                    .map_err(|e| CacheError::Io(self.path.join(&tmp), e))?,
            );
            f.write_all(v.bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| CacheError::Io(self.path.join(&tmp), e))?;
            // SAFETY: fchmod on our descriptor: published files are read-only to everyone.
            unsafe { libc::fchmod(fd.as_raw_fd(), 0o400) };
            let mapped =
                map_and_verify(&fd, file).map_err(|why| CacheError::Corrupt(tmp.clone(), why))?;
            self.rename(&tmp, &name)?;
            // SAFETY: fsync of our directory descriptor makes the rename durable.
            unsafe { libc::fsync(self.dir.as_raw_fd()) };
            Ok(Arc::new(mapped))
        })();
        if result.is_err() {
            self.unlink(&tmp);
        }
        result
    }

    /// Removes version files other than `keep` and the newest [`KEEP_PREVIOUS`] others, and
    /// temporary files left by a leader that died mid-write.
    pub fn prune(&self, keep: &[FileRef]) {
        let keep: Vec<String> = keep.iter().map(FileRef::file_name).collect();
        let mut versions: Vec<(u64, String)> = Vec::new();
        for name in self.names() {
            if name.starts_with(".tmp-") {
                let old = std::fs::symlink_metadata(self.path.join(&name))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > STALE_TEMP_SECS);
                if old {
                    self.unlink(&name);
                }
            } else if let Some(n) = name
                .strip_prefix('v')
                .and_then(|r| r.split_once('-'))
                .and_then(|(n, _)| n.parse::<u64>().ok())
                .filter(|_| name.ends_with(".lkv") && !keep.contains(&name))
            {
                versions.push((n, name));
            }
        }
        versions.sort();
        let extra = versions.len().saturating_sub(KEEP_PREVIOUS);
        for (_, name) in versions.into_iter().take(extra) {
            self.unlink(&name);
        }
    }
}

fn map_and_verify(fd: &OwnedFd, file: FileRef) -> Result<Version, String> {
    // SAFETY: the file is mapped read-only and private to no one: published files are never
    // written again (0400, replaced only by rename), so the bytes cannot change under the
    // mapping; what is in them is verified below before anything reads it in place.
    let map = unsafe { memmap2::Mmap::map(fd) }.map_err(|e| e.to_string())?;
    let v = Version::verify_mapped(map, Some(file.version)).map_err(|e| e.to_string())?;
    if v.checksum() != file.checksum {
        return Err(format!(
            "checksum {} is not the {} in its name",
            wire::checksum_hex(v.checksum()),
            wire::checksum_hex(file.checksum)
        ));
    }
    Ok(v)
}

/// Opens a directory that only this user may write to, creating it 0700 if missing: at
/// `path`, or at `name` inside `parent` (whose descriptor pins where it is).
fn open_private_dir(parent: Option<(&OwnedFd, &str)>, path: &Path) -> Result<OwnedFd, CacheError> {
    let (at, name) = match parent {
        Some((fd, name)) => (fd.as_raw_fd(), cstr(name)),
        None => (
            libc::AT_FDCWD,
            CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| CacheError::Io(path.to_owned(), io::ErrorKind::InvalidInput.into()))?,
        ),
    };
    // SAFETY: mkdirat/openat/fstat with a NUL-terminated name and descriptors we own.
    unsafe {
        if libc::mkdirat(at, name.as_ptr(), 0o700) != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
        {
            return Err(last_os_error_at(path));
        }
        let fd = libc::openat(
            at,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) if is_symlink(at, &name) => {
                    CacheError::Symlink(path.to_owned())
                }
                _ => CacheError::Io(path.to_owned(), e),
            });
        }
        let fd = OwnedFd::from_raw_fd(fd);
        check_private(fd.as_raw_fd(), path)?;
        Ok(fd)
    }
}

fn is_symlink(at: RawFd, name: &CStr) -> bool {
    // SAFETY: fstatat into a stat we own, not following the link.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstatat(at, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }
}

fn check_private(fd: RawFd, path: &Path) -> Result<(), CacheError> {
    // SAFETY: fstat into a stat we own; geteuid cannot fail.
    let (st, uid) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(last_os_error_at(path));
        }
        (st, libc::geteuid())
    };
    if st.st_uid != uid {
        return Err(CacheError::Owner(path.to_owned(), st.st_uid, uid));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(CacheError::Mode(path.to_owned(), st.st_mode & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode, Content};

    fn version(n: u64, value: &str) -> Version {
        let mut c = Content::new();
        c.insert(b"price".to_vec(), value.as_bytes().to_vec());
        Version::verify(encode(n, 0, &c).unwrap(), Some(n)).unwrap()
    }

    #[test]
    fn a_published_version_is_mapped_back_and_verified() {
        let root = tempfile::tempdir().unwrap();
        let c = HostCache::open(root.path(), "http://127.0.0.1:7420").unwrap();
        let v = version(3, "1.00");
        let mapped = c.publish(&v).unwrap();
        assert!(mapped.is_mapped());
        assert_eq!(mapped.get(b"price"), Some(&b"1.00"[..]));
        let again = c.load(FileRef::of(&v)).unwrap().unwrap();
        assert_eq!(again.number(), 3);
        let mode = std::fs::metadata(c.path()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
    }

    #[test]
    fn a_corrupt_version_file_is_removed_not_mapped() {
        let root = tempfile::tempdir().unwrap();
        let c = HostCache::open(root.path(), "http://a:1").unwrap();
        let v = version(4, "2.00");
        c.publish(&v).unwrap();
        let path = c.path().join(FileRef::of(&v).file_name());
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            c.load(FileRef::of(&v)),
            Err(CacheError::Corrupt(..))
        ));
        assert!(!path.exists());
        assert!(c.load(FileRef::of(&v)).unwrap().is_none());
    }

    #[test]
    fn symlinks_and_open_directories_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            HostCache::open(&link, "http://a:1"),
            Err(CacheError::Symlink(_))
        ));
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        assert!(matches!(
            HostCache::open(&open, "http://a:1"),
            Err(CacheError::Mode(..))
        ));
    }

    #[test]
    fn one_leader_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let a = HostCache::open(root.path(), "http://a:1").unwrap();
        let b = HostCache::open(root.path(), "http://a:1").unwrap();
        let lead = a.try_lead().unwrap().expect("first takes the lead");
        assert!(b.try_lead().unwrap().is_none());
        drop(lead);
        assert!(b.try_lead().unwrap().is_some());
    }

    #[test]
    fn prune_keeps_active_staged_and_a_few_previous() {
        let root = tempfile::tempdir().unwrap();
        let c = HostCache::open(root.path(), "http://a:1").unwrap();
        let vs: Vec<Version> = (1..=8).map(|n| version(n, &n.to_string())).collect();
        for v in &vs {
            c.publish(v).unwrap();
        }
        c.prune(&[FileRef::of(&vs[0]), FileRef::of(&vs[7])]);
        let mut left: Vec<u64> = (1..=8)
            .filter(|n| c.load(FileRef::of(&vs[*n as usize - 1])).unwrap().is_some())
            .collect();
        left.sort();
        assert_eq!(left, vec![1, 5, 6, 7, 8]);
    }

    #[test]
    fn two_data_servers_never_share_a_directory() {
        assert_ne!(
            server_dir_name("http://10.0.0.1:7420"),
            server_dir_name("http://10.0.0.2:7420")
        );
        assert!(server_dir_name("http://10.0.0.1:7420").starts_with("10.0.0.1_7420-"));
    }
}
