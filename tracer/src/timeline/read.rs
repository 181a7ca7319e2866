//! Reading a timeline back (for `report`, `export` and tests): one clear error for a
//! missing, empty, truncated, non-JSON or wrong-version file, never a panic.

use std::{io::Read, path::Path};

use serde_json::Value;

use super::SCHEMA_VERSION;

/// Largest timeline accepted (a guard against reading a disk image by mistake).
const MAX_BYTES: u64 = 8 << 30;

/// Why a timeline could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Cause (in the message, not chained: printed once).
        error: std::io::Error,
    },
    /// Zero bytes.
    #[error("{0} is empty: not a redis-memtrace timeline")]
    Empty(String),
    /// The JSON ends early (a run that was killed before finishing writes to a temp
    /// file, so this is a copy or a foreign file).
    #[error("{path} is truncated at byte {at}: the timeline is incomplete")]
    Truncated {
        /// The file.
        path: String,
        /// Where the text ended.
        at: usize,
    },
    /// Not JSON at all, or JSON of another shape.
    #[error("{path} is not a redis-memtrace timeline: {why}")]
    NotTimeline {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Written by an incompatible version.
    #[error(
        "{path} has schema_version {found}; this redis-memtrace reads versions {SCHEMA_VERSION} (one server) and {v} (several, from merge)", v = super::nodes::NODES_SCHEMA_VERSION
    )]
    Version {
        /// The file.
        path: String,
        /// The version in the file.
        found: String,
    },
    /// A streamed (NDJSON) file whose last line is not the summary.
    #[error("{0} is an NDJSON stream without its final summary line (the run did not finish)")]
    NoTrailer(String),
}

/// A timeline read from disk, checked for the fields every reader relies on.
#[derive(Debug, Clone)]
pub struct Timeline(pub Value);

impl Timeline {
    /// The whole document.
    pub fn value(&self) -> &Value {
        &self.0
    }
    /// The `events` array (empty if absent).
    pub fn events(&self) -> &[Value] {
        self.0["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    /// The `epochs` array (empty if absent).
    pub fn epochs(&self) -> &[Value] {
        self.0["epochs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    /// The `samples` array (empty if absent).
    pub fn samples(&self) -> &[Value] {
        self.0["samples"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    /// CLOCK_MONOTONIC at the start of the run, ns.
    pub fn monotonic_start_ns(&self) -> u64 {
        self.0["run"]["monotonic_start_ns"].as_u64().unwrap_or(0)
    }
    /// Wall clock (ns since the Unix epoch) of a monotonic `ts_ns` of this run.
    pub fn wall_ns(&self, ts_ns: u64) -> Option<u128> {
        let anchor = self.0["run"]["wall_start_unix_ns"].as_u64()? as i128;
        let mono = self.monotonic_start_ns() as i128;
        u128::try_from(anchor + (ts_ns as i128 - mono)).ok()
    }
}

/// A file of either schema: one server's timeline, or several nodes (`merge`).
#[derive(Debug, Clone)]
pub enum Document {
    /// Schema version 1.
    One(Timeline),
    /// Schema version 2.
    Nodes(super::nodes::NodeSet),
}

/// [`load`] that also takes a multi-node (version 2) file.
pub fn load_document(path: &Path) -> Result<Document, ReadError> {
    let name = path.display().to_string();
    let text = read_text(path, &name)?;
    parse_document(&name, &text)
}

/// [`load_document`] on text already read.
pub fn parse_document(name: &str, text: &str) -> Result<Document, ReadError> {
    match parse(name, text) {
        Ok(t) => Ok(Document::One(t)),
        Err(ReadError::Version { found, .. }) if found == NODES_VERSION => {
            let v: Value = serde_json::from_str(text).map_err(|e| ReadError::NotTimeline {
                path: name.to_string(),
                why: e.to_string(),
            })?;
            nodes(name, v).map(Document::Nodes)
        }
        Err(e) => Err(e),
    }
}

const NODES_VERSION: &str = "2";

/// A version 2 document, each node's timeline checked like a version 1 file.
fn nodes(name: &str, v: Value) -> Result<super::nodes::NodeSet, ReadError> {
    let set: super::nodes::NodeSet =
        serde_json::from_value(v).map_err(|e| ReadError::NotTimeline {
            path: name.to_string(),
            why: format!("a multi-node (schema version 2) file: {e}"),
        })?;
    for n in &set.nodes {
        check(&format!("{name} (node {})", n.name), n.timeline.clone())?;
    }
    Ok(set)
}

/// Reads and checks a timeline file: a JSON document (`record -o`), or an NDJSON
/// stream (`record --format ndjson`) which is reassembled into the same shape.
pub fn load(path: &Path) -> Result<Timeline, ReadError> {
    let name = path.display().to_string();
    let text = read_text(path, &name)?;
    parse(&name, &text)
}

fn read_text(path: &Path, name: &str) -> Result<String, ReadError> {
    let io = |error| ReadError::Io {
        path: name.to_string(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => ReadError::NotTimeline {
                path: name.to_string(),
                why: "not UTF-8 text".into(),
            },
            _ => io(e),
        })?;
    Ok(text)
}

/// [`load`] on text already read; `name` is used in errors.
pub fn parse(name: &str, text: &str) -> Result<Timeline, ReadError> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(ReadError::Empty(name.to_string()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => check(name, v),
        Err(e) if e.is_eof() => Err(ReadError::Truncated {
            path: name.to_string(),
            at: text.len(),
        }),
        // Several documents, one per line: an NDJSON stream.
        Err(e) if e.is_syntax() && trimmed.starts_with('{') && e.line() > 1 => {
            parse_ndjson(name, text)
        }
        Err(e) => Err(ReadError::NotTimeline {
            path: name.to_string(),
            why: e.to_string(),
        }),
    }
}

fn check(name: &str, v: Value) -> Result<Timeline, ReadError> {
    let not = |why: &str| ReadError::NotTimeline {
        path: name.to_string(),
        why: why.to_string(),
    };
    let obj = v
        .as_object()
        .ok_or_else(|| not("the top level is not an object"))?;
    match obj.get("schema_version") {
        None => return Err(not("no schema_version")),
        Some(Value::Number(n)) if n.as_u64() == Some(SCHEMA_VERSION as u64) => {}
        Some(other) => {
            return Err(ReadError::Version {
                path: name.to_string(),
                found: other.to_string(),
            });
        }
    }
    for (field, is_ok) in [
        ("run", obj.get("run").is_some_and(Value::is_object)),
        ("target", obj.get("target").is_some_and(Value::is_object)),
        ("events", obj.get("events").is_some_and(Value::is_array)),
        ("epochs", obj.get("epochs").is_some_and(Value::is_array)),
        ("summary", obj.get("summary").is_some_and(Value::is_object)),
    ] {
        if !is_ok {
            return Err(not(&format!("`{field}` is missing or has the wrong type")));
        }
    }
    Ok(Timeline(v))
}

/// An NDJSON stream: a header line, record lines, and a final trailer line (see
/// `docs/timeline.md`), reassembled into the document `record -o` writes.
fn parse_ndjson(name: &str, text: &str) -> Result<Timeline, ReadError> {
    let mut doc = serde_json::Map::new();
    let mut events = Vec::new();
    let mut saw_trailer = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| ReadError::NotTimeline {
            path: name.to_string(),
            why: format!("line {}: {e}", i + 1),
        })?;
        match v.get("type").and_then(Value::as_str) {
            Some("header") | Some("trailer") => {
                saw_trailer |= v["type"] == "trailer";
                if let Value::Object(m) = v {
                    for (k, val) in m {
                        if k != "type" {
                            doc.insert(k, val);
                        }
                    }
                }
            }
            _ => events.push(v),
        }
    }
    if !doc.contains_key("schema_version") {
        return Err(ReadError::NotTimeline {
            path: name.to_string(),
            why: "no header line with schema_version".into(),
        });
    }
    if !saw_trailer {
        return Err(ReadError::NoTrailer(name.to_string()));
    }
    doc.insert("events".into(), Value::Array(events));
    check(name, Value::Object(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"schema_version":1,"run":{"monotonic_start_ns":100,"wall_start_unix_ns":1000},"target":{"pid":1},"events":[{"ts_ns":150}],"epochs":[],"summary":{}}"#;

    #[test]
    fn good_file() {
        let t = parse("t", GOOD).unwrap();
        assert_eq!(t.events().len(), 1);
        assert_eq!(t.wall_ns(150), Some(1050));
    }

    #[test]
    fn each_bad_input_has_its_own_error() {
        assert!(matches!(parse("t", ""), Err(ReadError::Empty(_))));
        assert!(matches!(parse("t", " \n"), Err(ReadError::Empty(_))));
        assert!(matches!(
            parse("t", &GOOD[..GOOD.len() / 2]),
            Err(ReadError::Truncated { .. })
        ));
        assert!(matches!(
            parse("t", "hello"),
            Err(ReadError::NotTimeline { .. })
        ));
        assert!(matches!(
            parse("t", "[1,2]"),
            Err(ReadError::NotTimeline { .. })
        ));
        assert!(matches!(
            parse("t", "{}"),
            Err(ReadError::NotTimeline { .. })
        ));
        let v2 = GOOD.replace("\"schema_version\":1", "\"schema_version\":2");
        let e = parse("t", &v2).unwrap_err();
        assert!(matches!(e, ReadError::Version { .. }));
        assert!(e.to_string().contains("schema_version 2"), "{e}");
        let s = GOOD.replace("\"schema_version\":1", "\"schema_version\":\"1\"");
        assert!(matches!(parse("t", &s), Err(ReadError::Version { .. })));
        let no_events = GOOD.replace("\"events\":[{\"ts_ns\":150}],", "");
        assert!(matches!(
            parse("t", &no_events),
            Err(ReadError::NotTimeline { .. })
        ));
    }

    #[test]
    fn ndjson_stream_is_reassembled() {
        let text = "{\"type\":\"header\",\"schema_version\":1,\"run\":{},\"target\":{}}\n\
                    {\"ts_ns\":5,\"kind\":\"cow_copy\"}\n\
                    {\"ts_ns\":6,\"kind\":\"fork\"}\n\
                    {\"type\":\"trailer\",\"epochs\":[],\"summary\":{}}\n";
        let t = parse("t", text).unwrap();
        assert_eq!(t.events().len(), 2);
        let cut = text.rsplit_once("{\"type\":\"trailer\"").unwrap().0;
        assert!(matches!(parse("t", cut), Err(ReadError::NoTrailer(_))));
    }

    #[test]
    fn missing_file_is_io() {
        let e = load(Path::new("/nonexistent/t.json")).unwrap_err();
        assert!(matches!(e, ReadError::Io { .. }));
        assert!(e.to_string().starts_with("cannot read /nonexistent/t.json"));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse("t", &s);
        }

        #[test]
        fn never_panics_on_cut_or_mutated_timelines(cut in 0..GOOD.len(), b in any::<u8>(), at in 0..GOOD.len()) {
            let _ = parse("t", &GOOD[..cut]);
            let mut bytes = GOOD.as_bytes().to_vec();
            bytes[at] = b;
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse("t", s);
            }
        }
    }
}
