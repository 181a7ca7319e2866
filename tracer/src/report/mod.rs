//! `redis-memtrace report`: terminal summary and HTML report of a timeline.
//!
//! [`model`] extracts what the report needs from the timeline JSON (every field
//! optional), [`findings`] turns it into problems with their fixes, [`tables`] lays the
//! numbers out once for both renderers, [`terminal`] and [`html`] draw them; [`rates`]
//! and [`charts`] hold the data the HTML page's script plots.

pub mod charts;
pub mod cluster;
pub mod findings;
#[cfg(test)]
pub(crate) mod fixture;
pub mod format;
pub mod html;
pub mod model;
pub mod rates;
pub mod tables;
pub mod terminal;

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::timeline::read;

/// Prints the report of `timeline` to stdout; writes the HTML report to `html` if given.
pub fn run(timeline: &Path, html: Option<&Path>, top: usize) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    // Colour only for a person at a terminal who has not opted out (no-color.org).
    let color = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let written = report(timeline, html, top, &mut stdout.lock(), color)?;
    if let Some(dest) = written {
        // stderr, so that stdout stays the report alone.
        eprintln!("redis-memtrace: HTML report written to {}", dest.display());
    }
    Ok(())
}

/// [`run`] writing the text report to `out`; returns where the HTML report went.
pub fn report(
    timeline: &Path,
    html: Option<&Path>,
    top: usize,
    out: &mut dyn Write,
    color: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let top = top.max(1);
    let source = timeline.display().to_string();
    let style = terminal::Style { color };
    let t = match read::load_document(timeline)? {
        read::Document::One(t) => t,
        read::Document::Nodes(set) => {
            let view = cluster::ClusterView::build(&set, top);
            let written = match html {
                Some(dest) => Some(write_html(
                    dest,
                    &html::render_cluster(&view, &source, top),
                )?),
                None => None,
            };
            write_text(out, &cluster::render(&view, &source, top, style))?;
            return Ok(written);
        }
    };
    let m = model::Model::build(&t, top);
    let found = findings::findings(&m);
    let text = terminal::render(&m, &found, &source, top, style);
    // The HTML is written first: a failure to write it is the error the user must see,
    // and a closed stdout (`report | head`) must not prevent it.
    let written = match html {
        Some(dest) => Some(write_html(dest, &html::render(&m, &found, &source, top))?),
        None => None,
    };
    write_text(out, &text)?;
    Ok(written)
}

fn write_html(dest: &Path, page: &str) -> anyhow::Result<PathBuf> {
    crate::output_file::write_atomically(dest, page.as_bytes())
        .with_context(|| format!("cannot write the HTML report to {}", dest.display()))
}

fn write_text(out: &mut dyn Write, text: &str) -> anyhow::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A reader that went away (`| head`) is not an error of the report.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write the report to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    #[test]
    fn bad_files_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8], &str); 6] = [
            ("empty.json", b"", "is empty"),
            ("trunc.json", b"{\"schema_version\":1,\"run\":{", "truncated"),
            ("text.json", b"hello", "not a redis-memtrace timeline"),
            (
                "v3.json",
                b"{\"schema_version\":3,\"run\":{},\"target\":{},\"events\":[],\"epochs\":[],\"summary\":{}}",
                "schema_version 3",
            ),
            (
                "v2.json",
                b"{\"schema_version\":2,\"run\":{},\"target\":{},\"events\":[],\"epochs\":[],\"summary\":{}}",
                "a multi-node (schema version 2) file: missing field",
            ),
            ("bin.json", b"\xff\xfe\x00", "not UTF-8"),
        ];
        for (name, bytes, needle) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let e = format!(
                "{:#}",
                report(&p, None, 10, &mut Vec::new(), false).unwrap_err()
            );
            assert!(e.contains(needle), "{name}: {e}");
            assert!(!e.contains('\n'), "{name}: {e}");
        }
        let e = run(&dir.path().join("missing.json"), None, 10).unwrap_err();
        assert!(e.downcast_ref::<read::ReadError>().is_some());
        assert!(format!("{e:#}").starts_with("cannot read "), "{e:#}");
    }

    #[test]
    fn html_is_written_atomically_and_unwritable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tl = dir.path().join("t.json");
        std::fs::write(&tl, fixture::base().to_string()).unwrap();
        let out = dir.path().join("r.html");
        let mut text = Vec::new();
        let written = report(&tl, Some(&out), 5, &mut text, false).unwrap();
        assert_eq!(written.as_deref(), Some(out.as_path()));
        assert!(
            String::from_utf8(text)
                .unwrap()
                .starts_with("redis-memtrace report\n")
        );
        let page = std::fs::read_to_string(&out).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut text = Vec::new();
        let e = report(
            &tl,
            Some(Path::new("/nonexistent/dir/r.html")),
            5,
            &mut text,
            false,
        )
        .unwrap_err();
        assert!(text.is_empty(), "no report when the HTML cannot be written");
        let line = format!("{e:#}");
        assert!(
            line.starts_with("cannot write the HTML report to /nonexistent/dir/r.html: "),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    /// Any JSON value at all.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("cow_copy"),
                Just("swap_in"),
                Just("swap_level"),
                Just("always"),
                Just("parent"),
                Just("exit"),
                Just("trace_end"),
                Just("KEYS")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        "[a-z_]{1,8}",
                        Just("ts_ns".to_string()),
                        Just("kind".to_string()),
                        Just("rss_bytes".to_string()),
                        Just("pages".to_string()),
                        Just("key".to_string()),
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every path of `v` (objects and arrays), for mutation.
    fn paths(v: &Value, here: Vec<Value>, out: &mut Vec<Vec<Value>>) {
        out.push(here.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let mut p = here.clone();
                    p.push(Value::from(k.as_str()));
                    paths(c, p, out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    let mut p = here.clone();
                    p.push(Value::from(i));
                    paths(c, p, out);
                }
            }
            _ => {}
        }
    }

    fn set(v: &mut Value, path: &[Value], new: Value) {
        let mut cur = v;
        for step in path {
            cur = match step {
                Value::String(k) => &mut cur[k.as_str()],
                Value::Number(i) => &mut cur[i.as_u64().unwrap_or(0) as usize],
                _ => return,
            };
        }
        *cur = new;
    }

    fn render_all(v: Value, top: usize) {
        let t = read::Timeline(v);
        let m = model::Model::build(&t, top);
        let f = findings::findings(&m);
        let _ = terminal::render(&m, &f, "p", top, terminal::Style { color: true });
        let h = html::render(&m, &f, "p", top);
        assert_eq!(h.matches("</script>").count(), 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn any_document_renders_without_panic(v in any_json(), top in 0usize..30) {
            render_all(v, top);
        }

        #[test]
        fn mutated_timelines_render_without_panic(
            picks in prop::collection::vec((any::<prop::sample::Index>(), any_json()), 1..6),
            top in 1usize..30,
        ) {
            let mut v = fixture::base();
            for (at, new) in picks {
                let mut all = Vec::new();
                paths(&v, Vec::new(), &mut all);
                let path = at.get(&all).clone();
                set(&mut v, &path, new);
            }
            render_all(v, top);
        }
    }
}
