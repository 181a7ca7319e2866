//! `redis-memtrace merge`: timelines of several servers (several tracers, perhaps
//! several hosts) into one multi-node file on one time axis. The alignment is the pure
//! [`crate::timeline::nodes::merge`]; this reads the inputs and writes the result.

use std::path::Path;

use anyhow::Context;

use crate::timeline::{
    nodes::{self, Input, NodeSet},
    read::{self, Document},
};

/// Merges the timelines at `paths` into `output`; returns the set written.
pub fn run(paths: &[std::path::PathBuf], output: &Path) -> anyhow::Result<NodeSet> {
    if output.is_dir() {
        anyhow::bail!("cannot write {}: it is a directory", output.display());
    }
    let mut inputs = Vec::new();
    for p in paths {
        // The reader's errors name the file and their cause in one line.
        match read::load_document(p).map_err(|e| anyhow::anyhow!("{e}"))? {
            Document::One(timeline) => inputs.push(Input {
                source: p.display().to_string(),
                timeline,
            }),
            // A merged file's nodes are merged again, each from its own anchors.
            Document::Nodes(set) => inputs.extend(set.nodes.into_iter().map(|n| Input {
                source: format!("{} (node {})", p.display(), n.name),
                timeline: read::Timeline(n.timeline),
            })),
        }
    }
    let set = nodes::merge(inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = serde_json::to_vec(&set).context("cannot encode the merged timeline")?;
    crate::output_file::write_atomically(output, &bytes)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(set)
}
