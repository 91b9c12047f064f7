//! The management commands: a thin client of the admin API.
//!
//! Output is for people by default and JSON with `--json`. Every failure ends the process
//! with one line on stderr that says what to do (`{"error": "..."}` under `--json`), and exit
//! status 1. A reader that stops reading early (`lockstep status | head -1`) ends the process
//! quietly with status 0.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use lockstep::wire::{
    self, Blob, DeleteRequest, DiffResponse, Entry, ErrorBody, ImportRequest, IntervalRequest,
    IntervalResponse, KeyChanges, KeyInfo, PublishRequest, PublishResponse, PutRequest,
    RollbackRequest, RollbackResponse, WriteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::audit::AuditEntry;
use crate::clock::{format_duration_us, format_us};
use crate::farm::{HostView, Member, Role};
use crate::proof::ActivationProof;
use crate::store::{PinChange, Status, VersionRow};

// A leaf module (std, csv, serde_json and lockstep's wire types only), so the `import` fuzz
// target compiles it as it is.
#[path = "import.rs"]
pub(crate) mod import;
pub use import::parse_import;

/// Largest admin answer we read (a `ls` of a big production can be large).
const MAX_ANSWER_BYTES: u64 = 1 << 30;

pub struct Cli {
    agent: ureq::Agent,
    server: String,
    token: Option<String>,
    pub json: bool,
}

/// A failure with the one line the user should read.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult = Result<(), CliError>;

/// Writes one line of human output into a buffer (formatting into a `String` cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Writes the whole output to stdout at once.
///
/// A closed stdout means the reader has all it wanted (`| head -1`), so the process ends
/// there, quietly and successfully, instead of panicking in `println!` as it used to.
fn emit(text: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(CliError(format!("cannot write the output: {e}"))),
    }
}

impl Cli {
    /// A client that verifies an `https://` server against the system's roots.
    pub fn new(server: String, token: Option<String>, json: bool) -> Cli {
        Self::with_ca_file(server, token, json, None).expect("the system roots need no file")
    }

    /// `ca_file`: the authorities an `https://` server is verified against; without it the
    /// system's roots, which honour `SSL_CERT_FILE`.
    pub fn with_ca_file(
        server: String,
        token: Option<String>,
        json: bool,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Cli, CliError> {
        let tls = lockstep::tls::config(ca_file).map_err(|e| CliError(format!("--{e}")))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(tls)
            .build()
            .into();
        Ok(Cli {
            agent,
            server: server.trim_end_matches('/').to_owned(),
            token,
            json,
        })
    }

    fn auth(&self) -> Result<String, CliError> {
        match &self.token {
            Some(t) if !t.is_empty() => Ok(format!("Bearer {t}")),
            _ => Err(CliError(
                "no admin token: set LOCKSTEP_ADMIN_TOKEN to the token the server was started with"
                    .into(),
            )),
        }
    }

    fn finish<T: DeserializeOwned>(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, CliError> {
        let mut resp = result.map_err(|e| {
            CliError(format!(
                "cannot reach the data server at {} ({e}): start it with 'lockstep serve' or set --server / LOCKSTEP_SERVER",
                self.server
            ))
        })?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(CliError(format!("server said {}: {msg}", status.as_u16())));
        }
        serde_json::from_slice(&body)
            .map_err(|e| CliError(format!("unexpected answer from the data server: {e}")))
    }

    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        let mut req = self
            .agent
            .get(&format!("{}{path}", self.server))
            .header("Authorization", &self.auth()?);
        for (k, v) in query {
            req = req.query(*k, v);
        }
        self.finish(req.call())
    }

    pub(crate) fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, CliError> {
        let req = self
            .agent
            .post(&format!("{}{path}", self.server))
            .header("Authorization", &self.auth()?);
        self.finish(req.send_json(body))
    }

    /// Prints `value` as JSON, or as `human` writes it for people.
    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce(&T, &mut String)) -> CliResult {
        let mut out = String::new();
        if self.json {
            outln!(out, "{}", serde_json::to_string_pretty(value)?);
        } else {
            human(value, &mut out);
        }
        emit(&out)
    }

    fn print_write(&self, r: &WriteResponse) -> CliResult {
        self.print(r, |r, out| outln!(out, "{}", r.message))
    }

    pub fn put(&self, key: String, value: Vec<u8>, at: Option<String>, urgent: bool) -> CliResult {
        let r: WriteResponse = self.post(
            &wire::admin_path(wire::ADMIN_PUT),
            &PutRequest {
                key: Blob::Text(key),
                value: Blob::from_bytes(&value),
                at,
                urgent,
            },
        )?;
        self.print_write(&r)
    }

    pub fn rm(&self, key: String, at: Option<String>, urgent: bool) -> CliResult {
        let r: WriteResponse = self.post(
            &wire::admin_path(wire::ADMIN_DELETE),
            &DeleteRequest {
                key: Blob::Text(key),
                at,
                urgent,
            },
        )?;
        self.print_write(&r)
    }

    pub fn get_key(&self, key: String, version: Option<u64>) -> CliResult {
        let mut q = vec![("key", key)];
        if let Some(v) = version {
            q.push(("version", v.to_string()));
            let e: Entry = self.get(&wire::admin_path(wire::ADMIN_KEY), &q)?;
            return self.print(&e, |e, out| outln!(out, "{}", e.value.display()));
        }
        let info: KeyInfo = self.get(&wire::admin_path(wire::ADMIN_KEY), &q)?;
        self.print(&info, |i, out| outln!(out, "{}", i.value.display()))
    }

    pub fn ls(&self, prefix: Option<String>) -> CliResult {
        let keys: Vec<KeyInfo> = self.get(
            &wire::admin_path(wire::ADMIN_KEYS),
            &[("prefix", prefix.unwrap_or_default())],
        )?;
        self.print(&keys, |keys, out| {
            for k in keys {
                outln!(out, "{}\t{}", k.key.display(), k.value.display());
            }
        })
    }

    pub fn import(&self, file: &Path, urgent: bool) -> CliResult {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError(format!("cannot read {}: {e}", file.display())))?;
        let entries =
            parse_import(&text).map_err(|e| CliError(format!("{}: {e}", file.display())))?;
        let r: WriteResponse = self.post(
            &wire::admin_path(wire::ADMIN_IMPORT),
            &ImportRequest { entries, urgent },
        )?;
        self.print_write(&r)
    }

    pub fn interval(
        &self,
        interval: String,
        min_window: Option<String>,
        urgent_window: Option<String>,
    ) -> CliResult {
        let set_urgent = urgent_window.clone();
        let r: IntervalResponse = self.post(
            &wire::admin_path(wire::ADMIN_INTERVAL),
            &IntervalRequest {
                interval,
                min_window,
                urgent_window,
            },
        )?;
        self.print(&r, |r, out| {
            outln!(out, "{}", r.message);
            if let Some(w) = &set_urgent {
                outln!(out, "urgent changes go live {w} after the request");
            }
        })
    }

    /// Makes production's content go live at now + the urgent window.
    pub fn publish_urgent(&self) -> CliResult {
        let r: PublishResponse = self.post(
            &wire::admin_path(wire::ADMIN_PUBLISH),
            &PublishRequest { urgent: true },
        )?;
        self.print(&r, |r, out| outln!(out, "{}", r.message))
    }

    pub fn status(&self) -> CliResult {
        let s: Status = self.get(&wire::admin_path(wire::ADMIN_STATUS), &[])?;
        self.print(&s, |s, out| {
            outln!(out, "data server time   {}", format_us(s.server_time_us));
            outln!(
                out,
                "next activation    {} (in {:.1}s)",
                format_us(s.sync.activation_time_us),
                (s.sync.activation_time_us - s.server_time_us) as f64 / 1e6
            );
            outln!(
                out,
                "interval           {}ms (minimum retrieval window {}ms)",
                s.sync.interval_us / 1000,
                s.sync.min_window_us / 1000
            );
            outln!(out, "active version     {}", s.sync.active_version);
            outln!(out, "staged version     {}", s.sync.staged_version);
            outln!(
                out,
                "production         {} keys, {} scheduled changes pending",
                s.production_keys,
                s.pending_scheduled
            );
            outln!(
                out,
                "versions           {}, rotations {}",
                s.versions,
                s.rotations
            );
            write_farm(out, &s.farm, &s.hosts);
        })
    }

    /// The newest `limit` versions (every one with `None`), saying so when the list is cut.
    pub fn history(&self, limit: Option<u64>) -> CliResult {
        let h: Vec<VersionRow> = self.get(
            &wire::admin_path(wire::ADMIN_HISTORY),
            &[("limit", limit.unwrap_or(u64::MAX).to_string())],
        )?;
        let total = match limit {
            Some(n) if h.len() as u64 >= n => {
                let s: Status = self.get(&wire::admin_path(wire::ADMIN_STATUS), &[])?;
                s.versions
            }
            _ => h.len() as u64,
        };
        self.print(&h, |h, out| {
            outln!(
                out,
                "{:>7} {:>8} {:>10} {:>9} {:<24} {:<24} {:<24} reason",
                "version",
                "keys",
                "bytes",
                "downloads",
                "created",
                "staged",
                "activated"
            );
            let t = |v: Option<i64>| v.map(format_us).unwrap_or_else(|| "-".into());
            for VersionRow {
                info: v,
                downloads,
                pruned_us,
                pinned,
                ..
            } in h
            {
                // A version whose content retention dropped says so after its reason, and so
                // does one pinned against it.
                let mut pruned = pruned_us
                    .map(|at| format!(" (content dropped {})", format_us(at)))
                    .unwrap_or_default();
                if *pinned {
                    pruned.push_str(" (pinned)");
                }
                outln!(
                    out,
                    "{:>7} {:>8} {:>10} {:>9} {:<24} {:<24} {:<24} {}{}",
                    v.version,
                    v.entries,
                    v.size,
                    downloads,
                    format_us(v.created_us),
                    t(v.staged_us),
                    t(v.activated_us),
                    v.reason,
                    pruned
                );
            }
            if (h.len() as u64) < total {
                outln!(
                    out,
                    "showing the newest {} of {total} versions; --limit N or --all to see more",
                    h.len()
                );
            }
        })
    }

    pub fn diff(&self, a: u64, b: u64) -> CliResult {
        let d: DiffResponse = self.get(
            &wire::admin_path(wire::ADMIN_DIFF),
            &[("a", a.to_string()), ("b", b.to_string())],
        )?;
        self.print(&d, |d, out| {
            write_changes(out, &d.changes);
            if d.changes.is_empty() {
                outln!(out, "versions {} and {} have the same content", d.a, d.b);
            }
        })
    }

    /// Pins `version` (retention keeps its content) or unpins it.
    pub fn pin(&self, version: u64, pinned: bool) -> CliResult {
        let path = wire::admin_path(if pinned {
            wire::ADMIN_PIN
        } else {
            wire::ADMIN_UNPIN
        });
        let request = PinChange {
            version,
            pinned,
            message: String::new(),
        };
        let r: PinChange = self.post(&path, &request)?;
        self.print(&r, |r, out| outln!(out, "{}", r.message))
    }

    /// The newest `limit` activations and their proof: who switched, the spread of the switch
    /// instants, who was late and who is missing.
    pub fn activations(&self, limit: u64) -> CliResult {
        let list: Vec<ActivationProof> = self.get(
            &wire::admin_path(wire::ADMIN_ACTIVATIONS),
            &[("limit", limit.to_string())],
        )?;
        self.print(&list, |list, out| {
            if list.is_empty() {
                outln!(
                    out,
                    "no activation has switched the farm to a new version yet"
                );
            }
            outln!(
                out,
                "{:<24} {:>7} {:>8} {:>5} {:>7} {:>12}",
                "activation",
                "version",
                "switched",
                "late",
                "missing",
                "spread"
            );
            for a in list {
                let spread = match (a.spread_us, a.error_us) {
                    (Some(s), Some(e)) => format!("{}µs ±{}µs", s, e),
                    _ => "-".to_owned(),
                };
                outln!(
                    out,
                    "{:<24} {:>7} {:>8} {:>5} {:>7} {:>12}",
                    format_us(a.activation_time_us),
                    a.version,
                    a.clients_switched,
                    a.clients_late,
                    a.clients_missing,
                    spread
                );
                for s in &a.late {
                    outln!(
                        out,
                        "    late     {}@{} pid {}: switched {:.3}s after",
                        s.name,
                        s.host,
                        s.pid,
                        s.offset_us as f64 / 1e6
                    );
                }
                for m in &a.missing {
                    outln!(
                        out,
                        "    missing  {}@{} pid {}: serves version {}, last seen {}",
                        m.name,
                        m.host,
                        m.pid,
                        m.active,
                        format_us(m.last_checkin_us)
                    );
                }
                for s in &a.mismatched {
                    outln!(
                        out,
                        "    mismatch {}@{} pid {}: serves checksum {} as version {}",
                        s.name,
                        s.host,
                        s.pid,
                        s.checksum,
                        a.version
                    );
                }
            }
        })
    }

    /// The newest `limit` entries of the audit log.
    pub fn audit(&self, limit: u64) -> CliResult {
        let list: Vec<AuditEntry> = self.get(
            &wire::admin_path(wire::ADMIN_AUDIT),
            &[("limit", limit.to_string())],
        )?;
        self.print(&list, |list, out| {
            for e in list {
                outln!(
                    out,
                    "{}  {:<10} {:<16} {:<22} {}",
                    crate::clock::format_us_millis(e.at_us),
                    e.who,
                    e.action,
                    e.peer,
                    e.summary
                );
            }
        })
    }

    /// Rolls back to `version`, listing the production keys that change. Without `yes` it
    /// refuses when that discards production edits, and the server refuses too if production
    /// changes between the preview and the rollback.
    pub fn rollback(&self, version: u64, yes: bool, urgent: bool) -> CliResult {
        let request = |dry_run| RollbackRequest {
            version,
            dry_run,
            discard_edits: yes,
            urgent,
        };
        if !yes {
            let preview: RollbackResponse =
                self.post(&wire::admin_path(wire::ADMIN_ROLLBACK), &request(true))?;
            if !preview.production.is_empty() {
                self.print(&preview, |p, out| {
                    outln!(
                        out,
                        "production would change (+ added, - removed, ~ changed):"
                    );
                    write_changes(out, &p.production);
                })?;
                return Err(CliError(format!(
                    "rolling back to version {version} discards the production edits above \
                     (they stay in history); run again with --yes to roll back anyway"
                )));
            }
        }
        let r: RollbackResponse =
            self.post(&wire::admin_path(wire::ADMIN_ROLLBACK), &request(false))?;
        self.print(&r, |r, out| {
            if !r.production.is_empty() {
                outln!(out, "production changed (+ added, - removed, ~ changed):");
                write_changes(out, &r.production);
            }
            outln!(out, "{}", r.message);
        })
    }
}

/// A host with more processes than this lists only those that need a look (its leader, and
/// stale, lagging or behind ones), this many at most, and counts the others: with a thousand
/// processes on a few hosts the view stays a screen or two.
const LISTED_PER_HOST: usize = 8;

/// Combinations of versions a host's summary names; the rest are counted.
const NAMED_VERSION_SETS: usize = 3;

/// The farm, host by host: each host's leader, how many follow it, what its processes hold,
/// then its processes.
fn write_farm(out: &mut String, farm: &[Member], hosts: &[HostView]) {
    // Every process holding a handle is listed, a pre-fork master that opened one included,
    // so this counts processes, not the ones that serve requests.
    let stale = farm.iter().filter(|m| m.process.stale).count();
    outln!(
        out,
        "farm               {} processes holding a handle on {} {}{}",
        farm.len(),
        hosts.len(),
        if hosts.len() == 1 { "host" } else { "hosts" },
        match stale {
            0 => String::new(),
            n => format!(", {n} of them stale (silent too long; probably gone)"),
        }
    );
    if farm.is_empty() {
        return;
    }
    outln!(
        out,
        "  {:>9}  {:<20} {:<12} {:>7} {:>7} {:>10} {:>8} {:>7}  last seen",
        "pid",
        "name",
        "role",
        "staged",
        "active",
        "offset ms",
        "±ms",
        "lagging"
    );
    let mut rest = farm;
    for host in hosts {
        // The farm comes in host order, as `hosts` does.
        let n = rest
            .iter()
            .take_while(|m| m.process.host == host.host)
            .count();
        let (members, after) = rest.split_at(n);
        rest = after;
        write_host(out, host, members);
    }
}

fn write_host(out: &mut String, host: &HostView, members: &[Member]) {
    let name = if host.host.is_empty() {
        "(no host name given)"
    } else {
        &host.host
    };
    let alone = members
        .iter()
        .filter(|m| m.role == Role::Alone && !m.process.stale)
        .count();
    let mut about = vec![processes(host.processes)];
    if let Some(pid) = host.leader_pid {
        about.push(format!("leader pid {pid}, {} following", host.following));
    }
    if alone > 0 {
        about.push(format!("{alone} on their own"));
    }
    if host.lagging > 0 {
        about.push(format!("{} lagging", host.lagging));
    }
    if host.stale > 0 {
        about.push(format!("{} stale", host.stale));
    }
    outln!(out, "  host {name}: {}", about.join(", "));
    if !host.versions.is_empty() {
        let mut held: Vec<String> = host
            .versions
            .iter()
            .take(NAMED_VERSION_SETS)
            .map(|v| {
                format!(
                    "active {}, staged {}: {}",
                    v.active,
                    v.staged,
                    processes(v.processes)
                )
            })
            .collect();
        if host.versions.len() > NAMED_VERSION_SETS {
            held.push(format!(
                "{} other combinations",
                host.versions.len() - NAMED_VERSION_SETS
            ));
        }
        outln!(out, "    versions     {}", held.join("; "));
    }
    let typical = host.versions.first().map(|v| (v.active, v.staged));
    let needs_a_look = |m: &Member| {
        m.role == Role::Leader
            || m.process.stale
            || m.process.lagging
            || Some((m.process.active, m.process.staged)) != typical
    };
    let listed: Vec<&Member> = if members.len() <= LISTED_PER_HOST {
        members.iter().collect()
    } else {
        members
            .iter()
            .filter(|m| needs_a_look(m))
            .take(LISTED_PER_HOST)
            .collect()
    };
    for m in &listed {
        write_member(out, m);
    }
    let unlisted: Vec<&Member> = members
        .iter()
        .filter(|m| !listed.iter().any(|l| std::ptr::eq(*l, *m)))
        .collect();
    if unlisted.is_empty() {
        return;
    }
    let all = |role| unlisted.iter().all(|m| m.role == role);
    let who = match unlisted.len() {
        n if all(Role::Follower) => format!("{n} more following"),
        n if all(Role::Alone) => format!("{n} more on their own"),
        n => format!("{n} more"),
    };
    match typical {
        Some((active, staged)) if !unlisted.iter().any(|m| needs_a_look(m)) => outln!(
            out,
            "    … and {who}, each live, not lagging, with active {active}, staged {staged}"
        ),
        _ => outln!(
            out,
            "    … and {who}, not listed (lockstep status --json lists every process)"
        ),
    }
}

fn processes(n: u64) -> String {
    match n {
        1 => "1 process".to_owned(),
        n => format!("{n} processes"),
    }
}

fn write_member(out: &mut String, m: &Member) {
    let p = &m.process;
    let role = match (m.role, m.leader_pid) {
        (Role::Leader, _) => "leader".to_owned(),
        (Role::Alone, _) => "alone".to_owned(),
        (Role::Follower, Some(leader)) => format!("follows {leader}"),
        (Role::Follower, None) => "follower".to_owned(),
    };
    outln!(
        out,
        "  {:>9}  {:<20} {:<12} {:>7} {:>7} {:>10.3} {:>8.3} {:>7}  {} ago{}",
        p.pid,
        if p.name.is_empty() { "-" } else { &p.name },
        role,
        p.staged,
        p.active,
        p.offset_us as f64 / 1e3,
        p.error_us as f64 / 1e3,
        if p.lagging { "yes" } else { "no" },
        format_duration_us(p.silent_us),
        if p.stale { ", stale" } else { "" }
    );
}

/// Key changes as `diff` prints them: `+ key<TAB>value`, `- key`, `~ key<TAB>old -> new`.
fn write_changes(out: &mut String, c: &KeyChanges) {
    for e in &c.added {
        outln!(out, "+ {}\t{}", e.key.display(), e.value.display());
    }
    for k in &c.removed {
        outln!(out, "- {}", k.display());
    }
    for e in &c.changed {
        outln!(
            out,
            "~ {}\t{} -> {}",
            e.key.display(),
            e.old.display(),
            e.new.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_reads_json_and_csv() {
        let j = parse_import(r#"{"a": "1", "b": 2}"#).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j[1].value, Blob::Text("2".into()));
        let c = parse_import("key,value\nprice:apple,1.25\n\"with,comma\",x\n").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].key, Blob::Text("with,comma".into()));
        assert!(parse_import("a,b,c\n").is_err());
        assert!(parse_import("{not json").is_err());
    }
}
