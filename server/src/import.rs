//! The file `lockstep import` reads: a JSON object or CSV lines. Its own leaf module so that
//! the `import` fuzz target (fuzz/) compiles this very file.

use std::collections::BTreeMap;

use lockstep::wire::{Blob, Entry};

/// An import file: a JSON object `{"key": "value", …}`, or CSV lines `key,value` (an optional
/// `key,value` header line is skipped).
pub fn parse_import(text: &str) -> Result<Vec<Entry>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let map: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object of strings: {e}"))?;
        return map
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                Ok(Entry {
                    key: Blob::Text(k),
                    value: Blob::Text(value),
                })
            })
            .collect();
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(false)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (i, record) in reader.byte_records().enumerate() {
        let record = record.map_err(|e| format!("CSV line {}: {e}", i + 1))?;
        if record.len() != 2 {
            return Err(format!(
                "CSV line {}: expected 'key,value', found {} fields",
                i + 1,
                record.len()
            ));
        }
        if i == 0 && &record[0] == b"key" && &record[1] == b"value" {
            continue;
        }
        out.push(Entry {
            key: Blob::from_bytes(&record[0]),
            value: Blob::from_bytes(&record[1]),
        });
    }
    Ok(out)
}

/// A key and its value, as bytes.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Why the data server refuses an entry; `too_large` makes it a 413 rather than a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub too_large: bool,
    pub message: String,
}

impl Refused {
    fn bad(message: String) -> Refused {
        Refused {
            too_large: false,
            message,
        }
    }
}

/// A key the data server stores: not empty, at most `max_bytes` (--max-key-bytes).
pub fn check_key(key: &[u8], max_bytes: usize) -> Result<(), Refused> {
    if key.is_empty() {
        return Err(Refused::bad("key is empty".to_owned()));
    }
    if key.len() > max_bytes {
        return Err(Refused {
            too_large: true,
            message: format!(
                "key is {} bytes; the limit is {max_bytes} (--max-key-bytes)",
                key.len()
            ),
        });
    }
    Ok(())
}

/// A value the data server stores: at most `max_bytes` (--max-value-bytes).
pub fn check_value(value: &[u8], max_bytes: usize) -> Result<(), Refused> {
    if value.len() > max_bytes {
        return Err(Refused {
            too_large: true,
            message: format!(
                "value is {} bytes; the limit is {max_bytes} (--max-value-bytes)",
                value.len()
            ),
        });
    }
    Ok(())
}

/// The entries of `POST /v1/admin/import` as bytes, each key and value checked, or why the
/// whole import is refused: a key or value that does not decode, a bad key or value, or a
/// key given twice (no one value to import, rather than the last one winning). `shown`
/// renders a key for the message. Here rather than in api.rs so the `import` fuzz target
/// runs the very checks the handler does.
pub fn import_entries(
    entries: Vec<Entry>,
    max_key_bytes: usize,
    max_value_bytes: usize,
    shown: fn(&[u8]) -> String,
) -> Result<Vec<KeyValue>, Refused> {
    let mut out = Vec::with_capacity(entries.len());
    let mut first_at = std::collections::HashMap::new();
    for (i, e) in entries.into_iter().enumerate() {
        let key = e
            .key
            .into_bytes()
            .map_err(|err| Refused::bad(format!("entry {i}: key: {err}")))?;
        if let Some(j) = first_at.insert(key.clone(), i) {
            return Err(Refused::bad(format!(
                "entry {i}: key {} is given twice (entry {j} too)",
                shown(&key)
            )));
        }
        let value = e
            .value
            .into_bytes()
            .map_err(|err| Refused::bad(format!("entry {i}: value: {err}")))?;
        check_key(&key, max_key_bytes)
            .and_then(|_| check_value(&value, max_value_bytes))
            .map_err(|r| Refused {
                message: format!("entry {i}: {}", r.message),
                ..r
            })?;
        out.push((key, value));
    }
    Ok(out)
}
