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
