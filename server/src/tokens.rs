//! Named, scoped bearer tokens: the `--tokens` file, the single-token flags, and the lookup
//! every request goes through.
//!
//! The file holds one token a line, `NAME SCOPE SECRET`, where SCOPE is `read` or `admin` and
//! SECRET is the token itself or `sha256:<64 hex digits>` of it. `#` starts a comment line.
//! Several tokens may be valid at once, which is what makes rotation without a restart work:
//! add the new token, reload (SIGHUP), move the clients, remove the old one, reload.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Check-ins, versions, metrics and the admin views.
    Read,
    /// Everything, changes included.
    Admin,
}

/// The name given to the token of `--admin-token-file` / `LOCKSTEP_ADMIN_TOKEN`.
pub const LEGACY_ADMIN_NAME: &str = "admin";
/// The name given to the token of `--read-token-file` / `LOCKSTEP_READ_TOKEN`.
pub const LEGACY_READ_NAME: &str = "read";

/// Longest name; it is shown in the audit log and the logs.
const MAX_NAME_BYTES: usize = 64;

#[derive(Debug, Clone)]
struct Token {
    name: String,
    scope: Scope,
    /// Only the digest is kept, plain secrets included: every comparison is then between 32
    /// bytes, so its time says nothing about a secret's length or content.
    digest: [u8; 32],
}

/// The set of valid tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    // from_str_radix alone would take "+f" as a digit pair.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Parses a tokens file's text; an error names the line and never quotes a secret.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut set = Tokens::default();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, scope, secret] = fields[..] else {
                return Err(format!(
                    "line {n}: expected 'NAME SCOPE SECRET' (3 fields), found {}",
                    fields.len()
                ));
            };
            let scope = match scope {
                "read" => Scope::Read,
                "admin" => Scope::Admin,
                // Not quoted: with the fields in the wrong order this is the secret.
                _ => {
                    return Err(format!(
                        "line {n}: field 2 (scope) is neither 'read' nor 'admin'"
                    ))
                }
            };
            let digest = match secret.strip_prefix("sha256:") {
                Some(hex) => parse_hex32(hex).ok_or_else(|| {
                    format!("line {n}: a hashed secret is 'sha256:' and 64 hex digits")
                })?,
                None => digest(secret.as_bytes()),
            };
            set.add(name, scope, digest)
                .map_err(|e| format!("line {n}: {e}"))?;
        }
        Ok(set)
    }

    /// Reads and parses a tokens file.
    pub fn read(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    fn add(&mut self, name: &str, scope: Scope, digest: [u8; 32]) -> Result<(), String> {
        if name.is_empty()
            || name.len() > MAX_NAME_BYTES
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            // Not quoted: with the fields in the wrong order this is the secret.
            return Err(format!(
                "field 1 (name) must be 1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 - _ . @"
            ));
        }
        if self.tokens.iter().any(|t| t.name == name) {
            // Not quoted either: a secret in the name field is still a valid name.
            return Err("this name is given twice".to_owned());
        }
        if self
            .tokens
            .iter()
            .any(|t| bool::from(t.digest.ct_eq(&digest)))
        {
            return Err("this token has the same secret as another token".to_owned());
        }
        self.tokens.push(Token {
            name: name.to_owned(),
            scope,
            digest,
        });
        Ok(())
    }

    /// Adds a token given as its plain secret (the single-token flags and variables).
    pub fn add_plain(&mut self, name: &str, scope: Scope, secret: &[u8]) -> Result<(), String> {
        self.add(name, scope, digest(secret))
    }

    /// The name and scope of the token `given` is, if any. Every token is compared, so the
    /// time taken does not say which one matched.
    pub fn find(&self, given: &[u8]) -> Option<(&str, Scope)> {
        let given = digest(given);
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(&given)) {
                found = Some((t.name.as_str(), t.scope));
            }
        }
        found
    }

    /// Whether reads need a token: they do once any read token exists.
    pub fn has_read(&self) -> bool {
        self.tokens.iter().any(|t| t.scope == Scope::Read)
    }

    pub fn has_admin(&self) -> bool {
        self.tokens.iter().any(|t| t.scope == Scope::Admin)
    }

    /// The names by scope, for the log line a (re)load writes.
    pub fn summary(&self) -> String {
        let names = |s: Scope| {
            let v: Vec<&str> = self
                .tokens
                .iter()
                .filter(|t| t.scope == s)
                .map(|t| t.name.as_str())
                .collect();
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        format!(
            "admin: {}; read: {}",
            names(Scope::Admin),
            names(Scope::Read)
        )
    }
}

/// Where the tokens come from; [`TokenSources::load`] is run at start and on every SIGHUP.
#[derive(Debug, Clone)]
pub struct TokenSources {
    pub file: Option<PathBuf>,
    pub admin_file: Option<PathBuf>,
    pub read_file: Option<PathBuf>,
}

fn single(file: &Option<PathBuf>, env: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("token file {} is empty", path.display()));
        }
        return Ok(Some(t.as_bytes().to_vec()));
    }
    Ok(std::env::var(env)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .map(String::into_bytes))
}

impl TokenSources {
    /// The whole set: the tokens file's, plus the single admin and read tokens as `admin`
    /// and `read`. At least one admin token is needed.
    pub fn load(&self) -> Result<Tokens, String> {
        let mut set = match &self.file {
            Some(path) => Tokens::read(path)?,
            None => Tokens::default(),
        };
        if let Some(secret) = single(&self.admin_file, "LOCKSTEP_ADMIN_TOKEN")? {
            set.add_plain(LEGACY_ADMIN_NAME, Scope::Admin, &secret)
                .map_err(|e| {
                    format!("the single admin token (named '{LEGACY_ADMIN_NAME}'): {e}")
                })?;
        }
        if let Some(secret) = single(&self.read_file, "LOCKSTEP_READ_TOKEN")? {
            set.add_plain(LEGACY_READ_NAME, Scope::Read, &secret)
                .map_err(|e| format!("the single read token (named '{LEGACY_READ_NAME}'): {e}"))?;
        }
        if !set.has_admin() {
            return Err(
                "no admin token: give --tokens FILE with an admin line, or set \
                 LOCKSTEP_ADMIN_TOKEN or --admin-token-file (the CLI sends the same token)"
                    .to_owned(),
            );
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_hashed_and_comments() {
        let hashed = "sha256:".to_owned()
            + &digest(b"s2")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
        let text = format!("# comment\n\nops admin s1\n  web-1 read {hashed}  \n");
        let set = Tokens::parse(&text).unwrap();
        assert_eq!(set.find(b"s1"), Some(("ops", Scope::Admin)));
        assert_eq!(set.find(b"s2"), Some(("web-1", Scope::Read)));
        assert_eq!(set.find(b"s3"), None);
        assert_eq!(set.find(hashed.as_bytes()), None);
        assert!(set.has_read() && set.has_admin());
    }

    #[test]
    fn hashed_secret_is_exactly_64_hex_digits() {
        let good = "ab".repeat(32);
        assert!(parse_hex32(&good).is_some());
        let plus = "+a".to_owned() + &"ab".repeat(31);
        assert_eq!(plus.len(), 64);
        assert!(parse_hex32(&plus).is_none());
        assert!(parse_hex32(&("ab".repeat(31) + "g0")).is_none());
    }

    #[test]
    fn errors_name_the_line_and_never_the_secret() {
        for (text, line, what) in [
            ("a admin s\nb write hunter2\n", "line 2", "scope"),
            ("a admin hunter2 extra\n", "line 1", "3 fields"),
            ("a admin s\na read hunter2\n", "line 2", "twice"),
            ("a admin hunter2\nb read hunter2\n", "line 2", "same secret"),
            ("hunter2 admin a\nhunter2 read b\n", "line 2", "twice"),
            ("a admin sha256:abc\n", "line 1", "64 hex"),
            ("a/b admin hunter2\n", "line 1", "name"),
            // Fields in the wrong order put the secret where the scope or name belongs.
            ("ops hunter2 admin\n", "line 1", "scope"),
            ("hunter2! admin ops\n", "line 1", "name"),
            ("admin ops hunter2\n", "line 1", "scope"),
        ] {
            let e = Tokens::parse(text).unwrap_err();
            assert!(e.starts_with(line) && e.contains(what), "{text:?}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
