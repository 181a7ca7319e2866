//! Chrome Trace Event JSON for Perfetto UI and chrome://tracing.

use std::path::Path;

/// Converts the timeline at `timeline` and writes the trace to `output`.
pub fn export(timeline: &Path, output: &Path) -> anyhow::Result<()> {
    let _ = (timeline, output);
    anyhow::bail!("export is being written")
}

/// Placeholder until the converter lands (replaced by the real module).
pub fn to_chrome_trace(t: &crate::timeline::read::Timeline) -> serde_json::Value {
    let _ = t;
    serde_json::json!({"traceEvents": []})
}
