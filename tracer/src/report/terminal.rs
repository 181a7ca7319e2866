//! The text report: plain ASCII tables, wrapped findings, and colour only when asked for
//! (the caller passes `color` true only when stdout is a terminal). Every string from
//! the timeline goes through [`printable`], so a hostile key cannot drive the terminal.

use super::{
    findings::{Finding, Severity},
    format::printable,
    model::Model,
    tables::{self, Align, Kind, Pairs, Table},
};

/// Width findings are wrapped to.
const WRAP: usize = 100;

/// Rendering options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colour and bold.
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub(super) fn title(self, text: &str) -> String {
        self.paint("1", text)
    }

    fn severity(self, s: Severity) -> String {
        let code = match s {
            Severity::Critical => "1;31",
            Severity::Warning => "1;33",
            Severity::Info => "1;36",
        };
        self.paint(code, &format!("[{}]", s.tag()))
    }
}

/// The whole text report of `m` (read from `source`), top lists cut to `top` rows.
pub fn render(m: &Model, findings: &[Finding], source: &str, top: usize, style: Style) -> String {
    let mut out = String::new();
    out.push_str(&style.title("redis-memtrace report"));
    out.push('\n');
    pairs(&mut out, &tables::header(m, source));
    out.push('\n');

    out.push_str(&style.title(&format!("Findings ({})", findings.len())));
    out.push('\n');
    if findings.is_empty() {
        out.push_str("  none: no problem found in this timeline\n");
    }
    for f in findings {
        out.push_str(&format!(
            "  {} {}\n",
            style.severity(f.severity),
            printable(&f.title)
        ));
        wrapped(&mut out, "why: ", &printable(&f.reason));
        wrapped(&mut out, "fix: ", &printable(&f.fix));
    }
    out.push('\n');

    let sections = [
        tables::epochs(m),
        tables::activities(m, Kind::Cow, top),
        tables::activities(m, Kind::SwapIn, top),
        tables::keys(&m.attribution.top_keys_cow, Kind::Cow, m.cluster.as_ref()),
        tables::slots(&m.attribution.top_slots_cow, Kind::Cow, m.cluster.as_ref()),
        tables::keys(
            &m.attribution.top_keys_swap_in,
            Kind::SwapIn,
            m.cluster.as_ref(),
        ),
        tables::slots(
            &m.attribution.top_slots_swap_in,
            Kind::SwapIn,
            m.cluster.as_ref(),
        ),
    ];
    for t in &sections {
        out.push_str(&style.title(&t.title));
        out.push('\n');
        table(&mut out, t);
        out.push('\n');
    }

    out.push_str(&style.title("Swap"));
    out.push('\n');
    pairs(&mut out, &tables::swap(m));

    if !m.warnings.is_empty() {
        out.push('\n');
        out.push_str(&style.title("Warnings printed while recording"));
        out.push('\n');
        for w in &m.warnings {
            wrapped(&mut out, "- ", &printable(w));
        }
    }
    out
}

pub(super) fn pairs(out: &mut String, p: &Pairs) {
    let width = p.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in p {
        out.push_str(&format!("  {k:<width$}  {}\n", printable(v)));
    }
}

/// An ASCII table: header, dashes, rows; columns two spaces apart.
pub fn table(out: &mut String, t: &Table) {
    if t.rows.is_empty() {
        out.push_str(&format!("  {}\n", t.empty));
        return;
    }
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let widths: Vec<usize> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([name.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for ((_, align), w) in t.columns.iter().zip(&widths) {
            let c = cells.next().unwrap_or("");
            match align {
                Align::Left => s.push_str(&format!("  {c:<w$}")),
                Align::Right => s.push_str(&format!("  {c:>w$}")),
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    out.push_str(&line(&mut t.columns.iter().map(|c| c.0)));
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&mut dashes.iter().map(String::as_str)));
    for r in &rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    if let Some(n) = t.note {
        wrapped(out, "", n);
    }
}

/// `text` after `label`, wrapped at [`WRAP`] columns under a hanging indent.
fn wrapped(out: &mut String, label: &str, text: &str) {
    let indent = 4 + label.len();
    let mut line = format!("    {label}");
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WRAP {
            out.push_str(&line);
            out.push('\n');
            line = " ".repeat(indent);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        findings::findings,
        fixture::{base, model},
    };
    use serde_json::json;

    fn text(v: serde_json::Value, color: bool) -> String {
        let m = model(v);
        render(&m, &findings(&m), "t.json", 10, Style { color })
    }

    #[test]
    fn sections_and_numbers() {
        let t = text(base(), false);
        for needle in [
            "redis-memtrace report",
            "  target    pid 42 (redis-server), /usr/bin/redis-server",
            "Findings (0)",
            "none: no problem found",
            "Fork epochs",
            "Top commands and activities by copy-on-write (cow_copy)",
            "Top keys by swap-in (swap_in)",
            "no swap-in fault attributed to a command or activity",
            "Swap",
            "/swapfile (file)",
        ] {
            assert!(t.contains(needle), "{needle:?} missing in\n{t}");
        }
        let row = t.lines().find(|l| l.contains("bgsave")).unwrap();
        assert!(row.contains("2026-11-25T09:57:32.654Z"), "{row}");
        assert!(row.contains("21.5 ms") && row.contains("21.9%"), "{row}");
        assert!(!t.contains('\x1b'), "no colour when not asked");
        assert!(t.is_ascii());
    }

    #[test]
    fn columns_line_up() {
        let mut s = String::new();
        let t = Table {
            id: "x",
            title: "x".into(),
            columns: vec![("name", Align::Left), ("n", Align::Right)],
            rows: vec![
                vec!["a".into(), "1".into()],
                vec!["bbbbbb".into(), "100".into()],
            ],
            empty: "none",
            note: None,
        };
        table(&mut s, &t);
        assert_eq!(
            s,
            "  name      n\n  ------  ---\n  a         1\n  bbbbbb  100\n"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let mut v = base();
        v["run"]["host"]["overcommit_memory"] = json!(0);
        let t = text(v, true);
        assert!(t.contains("\x1b[1;33m[WARNING]\x1b[0m vm.overcommit_memory is 0, not 1"));
        assert!(t.contains("    fix: sysctl vm.overcommit_memory=1"));
    }

    #[test]
    fn hostile_key_cannot_drive_the_terminal() {
        let mut v = base();
        v["summary"]["attribution"]["top_keys_cow"][0]["key"] = json!("evil\u{1b}[2J\u{0}\r<b>");
        v["target"]["comm"] = json!("\u{1b}]0;pwned\u{7}");
        let t = text(v, false);
        assert!(!t.contains('\x1b') && !t.contains('\0') && !t.contains('\r'));
        assert!(t.contains("evil\\x1b[2J\\x00\\x0d<b>"));
        assert!(t.contains("\\x1b]0;pwned\\x07"));
    }

    #[test]
    fn findings_wrap() {
        let mut s = String::new();
        wrapped(&mut s, "why: ", &"word ".repeat(60));
        for l in s.lines() {
            assert!(l.len() <= WRAP, "{l}");
        }
        assert!(s.lines().nth(1).unwrap().starts_with("         word"));
    }
}
