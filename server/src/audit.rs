//! The audit log: every change an admin makes (edits, deletes, imports, schedules, rollbacks,
//! interval changes), who made it (the token's name), when, and from which address.
//!
//! An entry is written in the change's own transaction (see [`crate::store::AuditOf`]): a
//! change and its entry commit together, and when the entry cannot be written the change fails
//! and nothing changes.

use serde::{Deserialize, Serialize};

/// One entry, as `GET /v1/admin/audit` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing; 0 in an entry not written yet.
    pub id: i64,
    /// Data-server clock, µs.
    pub at_us: i64,
    /// The name of the token that authorised the change.
    pub who: String,
    /// `put`, `delete`, `import`, `schedule-put`, `schedule-delete`, `rollback`, `interval`.
    pub action: String,
    /// What changed: keys, counts, versions, settings, in one line.
    pub summary: String,
    /// The peer address the request came from (`ip:port`).
    pub peer: String,
}

/// The longest summary kept, bytes: a key may be a megabyte long.
pub const MAX_SUMMARY_BYTES: usize = 512;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut, with control
/// characters escaped: a key may hold a NUL, which PostgreSQL's text refuses, or a newline,
/// which would forge a log line.
pub fn clip(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_default());
            escaped
                .into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect();
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn clip_keeps_whole_characters_and_escapes_control_ones() {
        assert_eq!(super::clip("abc", 5), "abc");
        assert_eq!(super::clip("ééé", 3), "é…");
        assert_eq!(super::clip("a\u{0}b\nc", 50), "a\\u{0}b\\nc");
    }
}
