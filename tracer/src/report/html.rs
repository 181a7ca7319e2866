//! The HTML report: one self-contained file. Text, tables and findings are rendered here
//! (escaped); the charts are drawn by an inline script (`chart.js`) from a JSON block.
//! A Content-Security-Policy forbids every network fetch, so the page works offline and
//! a hostile timeline cannot make it load anything.

use serde_json::Value;

use super::{
    charts,
    findings::{Finding, Severity},
    model::Model,
    tables::{self, Align, Kind, Pairs, Table},
};

/// The chart-drawing script, inlined into every report.
const CHART_JS: &str = include_str!("chart.js");

const CSS: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;\
max-width:1160px;padding:0 16px;color:#1d1d1f;background:#fff;line-height:1.4}\
h1{font-size:24px;margin:0 0 12px}h2{font-size:18px;margin:28px 0 8px;\
border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:0 0 4px}\
table{border-collapse:collapse;font-size:13px;margin:4px 0}\
th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}\
th{background:#f5f5f7}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
table.kv th{background:none;color:#555;font-weight:600;white-space:nowrap}\
td.key{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}\
.finding{border-left:4px solid #888;background:#fafafa;padding:8px 12px;margin:8px 0}\
.finding p{margin:4px 0}.sev-critical{border-color:#c62828}.sev-warning{border-color:#ef8f00}\
.sev-info{border-color:#1e88e5}.tag{font-size:11px;font-weight:700;padding:1px 6px;\
border-radius:3px;color:#fff;margin-right:6px}.sev-critical .tag{background:#c62828}\
.sev-warning .tag{background:#ef8f00}.sev-info .tag{background:#1e88e5}\
.fix{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}\
.empty{color:#777;font-style:italic}.note{color:#555;font-size:12px;margin:2px 0}figure.chart{margin:12px 0}\
figure.chart svg{max-width:100%;height:auto;font-size:12px}\
.chart-title{font-weight:600;font-size:14px}.axis{fill:#555;font-size:11px}\
.grid{stroke:#eee}.plot{fill:none;stroke:#ccc}.line{fill:none;stroke-width:1.8}\
.epoch{fill:#f4a261;fill-opacity:.22}.epoch-label{fill:#9c4a0c;font-size:11px}\
.legend{font-size:12px}.bar{fill:#4c78a8}.bar-label{font-family:ui-monospace,Menlo,\
Consolas,monospace;font-size:12px}.bar-value{font-size:11px;fill:#333}\
.chart-error{color:#c62828}footer{margin-top:32px;color:#777;font-size:12px}";

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // NUL and other C0 controls are invalid in HTML text: show them.
            c if c.is_control() && !matches!(c, '\n' | '\t') => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// JSON for a `<script type="application/json">` block: `<`, `>` and `&` (which occur
/// only inside strings in JSON) become `\u003c` / `\u003e` / `\u0026`, so no string can
/// close the block or open a comment; U+2028/2029 are escaped for old parsers.
pub fn script_json(v: &Value) -> String {
    let raw = v.to_string();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page for `m` (read from `source`), top lists cut to `top` rows.
pub fn render(m: &Model, findings: &[Finding], source: &str, top: usize) -> String {
    let charts = charts::build(m);
    let target = m.header.comm.as_deref().unwrap_or("unknown target");
    let mut h = head(target, charts.count);
    h.push_str("<h1>redis-memtrace report</h1>\n");
    server(&mut h, "", m, findings, source, top, true);
    foot(&mut h);
    h.push_str("<script type=\"application/json\" id=\"report-data\">");
    h.push_str(&script_json(&charts.data));
    h.push_str("</script>\n<script>\n");
    h.push_str(CHART_JS);
    h.push_str("</script>\n</body>\n</html>\n");
    h
}

/// The page of a multi-node file: the cluster view's tables, then each node's sections
/// (ids prefixed `node-I-`) without charts, which are drawn for one server's timeline.
pub fn render_cluster(v: &super::cluster::ClusterView, source: &str, top: usize) -> String {
    use super::cluster;
    let mut h = head("cluster", 0);
    h.push_str("<h1>redis-memtrace cluster report</h1>\n");
    kv(&mut h, "summary", &cluster::header(v, source));
    for t in [
        cluster::nodes(v),
        cluster::hot_slots(v, top),
        cluster::overlaps(v, top),
        cluster::cow_over_time(v),
    ] {
        table(&mut h, "", &t);
    }
    for (i, n) in v.nodes.iter().enumerate() {
        let found = super::findings::findings(&n.model);
        let label = format!("{source}, node {}", n.node.name);
        h.push_str(&format!(
            "<section class=\"node\" id=\"node-{i}\">\n<h2>Node {}</h2>\n",
            escape(&n.node.name)
        ));
        server(
            &mut h,
            &format!("node-{i}-"),
            &n.model,
            &found,
            &label,
            top,
            false,
        );
        h.push_str("</section>\n");
    }
    foot(&mut h);
    h.push_str("</body>\n</html>\n");
    h
}

/// The document up to `<body>`, and the script that records errors of those below.
fn head(title: &str, charts: usize) -> String {
    let mut h = String::with_capacity(64 << 10);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // No fetch of any kind: scripts and styles only inline, images only data: URIs.
    h.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; \
         base-uri 'none'; form-action 'none'\">\n",
    );
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str(&format!(
        "<title>redis-memtrace report: {}</title>\n<style>{CSS}</style>\n</head>\n",
        escape(title)
    ));
    h.push_str(&format!("<body data-charts=\"{charts}\">\n"));
    // First, so that it also sees errors of the scripts below (even syntax errors).
    h.push_str(
        "<script>window.onerror=function(m,s,l){document.body.dataset.error=\
         String(m)+(l?' (line '+l+')':'');};</script>\n",
    );
    h
}

fn foot(h: &mut String) {
    h.push_str(
        "<footer>Written by redis-memtrace report. Self-contained: no part of this page \
         is loaded from the network.</footer>\n",
    );
}

/// One server's sections, their ids prefixed with `id`.
fn server(
    h: &mut String,
    id: &str,
    m: &Model,
    findings: &[Finding],
    source: &str,
    top: usize,
    charts: bool,
) {
    kv(h, &format!("{id}summary"), &tables::header(m, source));
    h.push_str(&format!(
        "<section id=\"{id}findings\">\n<h2>Findings ({})</h2>\n",
        findings.len()
    ));
    if findings.is_empty() {
        h.push_str("<p class=\"empty\">None: no problem found in this timeline.</p>\n");
    }
    for f in findings {
        finding(h, id, f);
    }
    h.push_str("</section>\n");
    if charts {
        h.push_str(
            "<section id=\"charts\">\n<h2>Charts</h2>\n<div id=\"chart-area\"></div>\n\
             <noscript><p class=\"empty\">The charts need JavaScript.</p></noscript>\n</section>\n",
        );
    }
    let map = m.cluster.as_ref();
    for t in [
        tables::epochs(m),
        tables::activities(m, Kind::Cow, top),
        tables::activities(m, Kind::SwapIn, top),
        tables::keys(&m.attribution.top_keys_cow, Kind::Cow, map),
        tables::slots(&m.attribution.top_slots_cow, Kind::Cow, map),
        tables::keys(&m.attribution.top_keys_swap_in, Kind::SwapIn, map),
        tables::slots(&m.attribution.top_slots_swap_in, Kind::SwapIn, map),
    ] {
        table(h, id, &t);
    }
    h.push_str(&format!("<section id=\"{id}swap\">\n<h2>Swap</h2>\n"));
    kv(h, &format!("{id}swap-state"), &tables::swap(m));
    h.push_str("</section>\n");
    if !m.warnings.is_empty() {
        h.push_str(&format!(
            "<section id=\"{id}warnings\">\n<h2>Warnings printed while recording</h2>\n<ul>\n"
        ));
        for w in &m.warnings {
            h.push_str(&format!("<li>{}</li>\n", escape(w)));
        }
        h.push_str("</ul>\n</section>\n");
    }
}

fn kv(h: &mut String, id: &str, pairs: &Pairs) {
    h.push_str(&format!("<table class=\"kv\" id=\"{id}\">\n"));
    for (k, v) in pairs {
        h.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            escape(k),
            escape(v)
        ));
    }
    h.push_str("</table>\n");
}

fn finding(h: &mut String, id: &str, f: &Finding) {
    let class = match f.severity {
        Severity::Critical => "sev-critical",
        Severity::Warning => "sev-warning",
        Severity::Info => "sev-info",
    };
    h.push_str(&format!(
        "<div class=\"finding {class}\" id=\"{id}finding-{}\">\n<h3><span class=\"tag\">{}</span>{}</h3>\n\
         <p><b>Why:</b> {}</p>\n<p><b>Fix:</b> <span class=\"fix\">{}</span></p>\n</div>\n",
        f.id,
        f.severity.tag(),
        escape(&f.title),
        escape(&f.reason),
        escape(&f.fix)
    ));
}

fn table(h: &mut String, id: &str, t: &Table) {
    h.push_str(&format!(
        "<section id=\"{id}{}\">\n<h2>{}</h2>\n",
        t.id,
        escape(&t.title)
    ));
    if t.rows.is_empty() {
        h.push_str(&format!(
            "<p class=\"empty\">{}</p>\n</section>\n",
            escape(t.empty)
        ));
        return;
    }
    let class = |a: Align, name: &str| match (a, name) {
        (_, "key") => " class=\"key\"",
        (Align::Right, _) => " class=\"num\"",
        (Align::Left, _) => "",
    };
    h.push_str("<table>\n<tr>");
    for (name, align) in &t.columns {
        h.push_str(&format!("<th{}>{}</th>", class(*align, ""), escape(name)));
    }
    h.push_str("</tr>\n");
    for row in &t.rows {
        h.push_str("<tr>");
        for ((name, align), cell) in t.columns.iter().zip(row) {
            h.push_str(&format!("<td{}>{}</td>", class(*align, name), escape(cell)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    if let Some(n) = t.note {
        h.push_str(&format!("<p class=\"note\">{}</p>\n", escape(n)));
    }
    h.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        findings::findings,
        fixture::{base, model},
    };
    use serde_json::json;

    fn page(v: Value) -> String {
        let m = model(v);
        render(&m, &findings(&m), "t.json", 10)
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(escape("a\0b"), "a\\x00b");
        let j = script_json(&json!({"k": "</script><!--&\u{2028}"}));
        assert_eq!(j, r#"{"k":"\u003c/script\u003e\u003c!--\u0026\u2028"}"#);
        let back: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["k"], "</script><!--&\u{2028}");
    }

    #[test]
    fn hostile_keys_stay_text() {
        let evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>\"'\u{0}";
        let mut v = base();
        v["summary"]["attribution"]["top_keys_cow"][0]["key"] = json!(evil);
        v["summary"]["attribution"]["top_keys_swap_in"] =
            json!([{"key": evil, "pages": 3, "slot": 9}]);
        v["summary"]["attribution"]["by_activity"][0]["activity"] = json!("<b>SET</b>");
        v["target"]["comm"] = json!("<title>x");
        v["warnings"] = json!(["<i>warn</i>"]);
        let h = page(v);
        // Exactly our three script elements, and our one <img>-free, <b>-free markup.
        assert_eq!(h.matches("<script").count(), 3, "{h}");
        assert_eq!(h.matches("</script>").count(), 3);
        assert!(!h.contains("<img") && !h.contains("<b>SET") && !h.contains("<i>warn"));
        assert!(h.contains("&lt;/script&gt;&lt;script&gt;alert(1)"));
        assert!(h.contains("&lt;b&gt;SET&lt;/b&gt;"));
        assert!(h.contains("\\u003c/script\\u003e\\u003cscript\\u003ealert(1)"));
        assert!(!h.contains('\0'));
        // The embedded JSON still decodes to the real key.
        let start = h.find("id=\"report-data\">").unwrap() + "id=\"report-data\">".len();
        let end = start + h[start..].find("</script>").unwrap();
        let data: Value = serde_json::from_str(&h[start..end]).unwrap();
        assert_eq!(data["bars"][0]["rows"][0]["label"], evil);
    }

    #[test]
    fn self_contained() {
        let h = page(base());
        // The only URL is the SVG namespace the script passes to createElementNS.
        let urls: Vec<&str> = h
            .match_indices("://")
            .map(|(i, _)| &h[i.saturating_sub(4)..i + 22])
            .collect();
        assert_eq!(urls, ["http://www.w3.org/2000/svg"], "{urls:?}");
        for banned in [
            " src=",
            "href=",
            "@import",
            "url(",
            "<link",
            "fetch(",
            "XMLHttpRequest",
        ] {
            assert!(!h.contains(banned), "{banned} in page");
        }
        assert!(h.contains("Content-Security-Policy\" content=\"default-src 'none'"));
        assert!(h.contains("<body data-charts=\"4\">"));
        assert!(h.contains("window.onerror"));
        assert!(h.contains("dataset.rendered"));
    }

    #[test]
    fn same_content_as_the_terminal() {
        let mut v = base();
        v["run"]["host"]["overcommit_memory"] = json!(2);
        let h = page(v);
        assert!(h.contains("id=\"finding-overcommit\""));
        assert!(h.contains("<span class=\"tag\">WARNING</span>vm.overcommit_memory is 2, not 1"));
        assert!(h.contains("<td>bgsave</td>"));
        assert!(h.contains("<td class=\"num\">21.9%</td>"));
        assert!(h.contains("<td class=\"key\">k1</td>"));
        assert!(h.contains("no swap-in fault attributed to a command or activity"));
    }
}
