//! What the fallible functions of the kit return. Tests call the panicking forms
//! (`Server::start`, `SwapGuard::ensure`, `Recording::stop` ...); xtask, whose users get
//! an error rather than a panic, calls the `try_` forms.

use std::{path::PathBuf, process::ExitStatus, time::Duration};

/// A failure of the kit, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A command-line tool ran and failed.
    #[error("{command} failed with {status}")]
    Tool { command: String, status: ExitStatus },
    /// The build manifest is missing, unreadable or names something that is not there.
    #[error("build manifest {}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    /// A server binary could not be described (`--version` output).
    #[error("{}: {reason}", server.display())]
    Binary { server: PathBuf, reason: String },
    /// A server did not start; its log is attached.
    #[error("{} {extra:?} did not start: {reason}\n--- server log ---\n{log}", server.display())]
    ServerStart {
        server: PathBuf,
        extra: Vec<String>,
        reason: String,
        log: String,
    },
    /// A Redis command failed or its reply was not what was asked for.
    #[error("{what} on {url}: {source}")]
    Redis {
        what: String,
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// A Redis server answered, but not as expected.
    #[error("{what} on {url}")]
    Unexpected { what: String, url: String },
    /// Something did not happen in time.
    #[error("{what} after {after:?}")]
    Timeout { what: String, after: Duration },
    /// The tracer failed; everything it printed on stderr is attached.
    #[error("{what}: {stderr}")]
    Tracer { what: String, stderr: String },
}

impl Error {
    /// An [`Error::Io`] maker for `map_err`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
