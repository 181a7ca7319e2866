//! tracefs: finding (or mounting) it, and reading tracepoint `format` files so field
//! offsets are taken from the running kernel rather than compiled in.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

/// Where tracefs lives on current kernels, and the legacy debugfs location.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors finding tracefs or reading a tracepoint description.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// tracefs is absent and mounting it failed.
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); run: mount -t tracefs tracefs /sys/kernel/tracing"
    )]
    NotMounted(String),
    /// The tracepoint does not exist on this kernel.
    #[error("tracepoint {0} is not available on this kernel (no {1})")]
    MissingTracepoint(String, PathBuf),
    /// The tracepoint exists but lacks a field the tracer reads.
    #[error("tracepoint {tracepoint} has no field `{field}` on this kernel")]
    MissingField {
        /// `category:name`
        tracepoint: String,
        /// field name
        field: String,
    },
    /// A format file could not be parsed.
    #[error("cannot parse {0}: {1}")]
    BadFormat(PathBuf, String),
}

/// Environment variable naming another tracefs root to read formats from (used by tests
/// to stand in for a kernel that lacks a tracepoint).
pub const ROOT_OVERRIDE: &str = "MEMTRACE_TRACEFS";

/// Returns the tracefs root, mounting it at `/sys/kernel/tracing` when no mount is found.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(root) = std::env::var_os(ROOT_OVERRIDE) {
        return Ok(PathBuf::from(root));
    }
    if let Some(found) = find_mounted() {
        return Ok(found);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::NotMounted(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    find_mounted().ok_or_else(|| TracefsError::NotMounted("mounted but events/ is missing".into()))
}

/// The tracefs root if one is mounted (no side effects).
pub fn find_mounted() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// The fields of one tracepoint, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Format {
    /// `category:name`, for messages.
    pub name: String,
    /// Field name to layout.
    pub fields: HashMap<String, Field>,
}

impl Format {
    /// Offset of a field the tracer cannot do without.
    pub fn require(&self, field: &str) -> Result<u32, TracefsError> {
        self.fields
            .get(field)
            .map(|f| f.offset)
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.name.clone(),
                field: field.to_string(),
            })
    }

    /// Offset of a field that only some kernels have.
    pub fn optional(&self, field: &str) -> Option<u32> {
        self.fields.get(field).map(|f| f.offset)
    }
}

/// Reads `events/<category>/<name>/format` under `root`.
pub fn read_format(root: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = fs::read_to_string(&path)
        .map_err(|_| TracefsError::MissingTracepoint(format!("{category}:{name}"), path.clone()))?;
    parse_format(&format!("{category}:{name}"), &text)
        .map_err(|why| TracefsError::BadFormat(path, why))
}

/// Whether a tracepoint exists.
pub fn exists(root: &Path, category: &str, name: &str) -> bool {
    root.join("events").join(category).join(name).is_dir()
}

/// Parses the text of a tracepoint `format` file. Only `field:` lines are read; the
/// declaration's last word (minus any array suffix) is the field name.
pub fn parse_format(name: &str, text: &str) -> Result<Format, String> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = Some(
                    v.trim()
                        .parse::<u32>()
                        .map_err(|e| format!("{line}: {e}"))?,
                );
            } else if let Some(v) = part.strip_prefix("size:") {
                size = Some(
                    v.trim()
                        .parse::<u32>()
                        .map_err(|e| format!("{line}: {e}"))?,
                );
            } else if decl.is_none() && !part.is_empty() && !part.starts_with("signed:") {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            return Err(format!("incomplete field line: {line}"));
        };
        let ident = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or(decl);
        let ident = ident.split('[').next().unwrap_or(ident);
        if ident.is_empty() {
            return Err(format!("no field name in: {line}"));
        }
        fields.insert(ident.to_string(), Field { offset, size });
    }
    if fields.is_empty() {
        return Err("no fields".into());
    }
    Ok(Format {
        name: name.to_string(),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text, including cut and mutated real formats: an error or a format, never
        /// a panic.
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse_format("x", &s);
        }

        #[test]
        fn cut_or_mutated_formats_never_panic(cut in 0usize..2000, at in 0usize..2000, c in any::<char>()) {
            let text = FORK_618;
            let cut = cut.min(text.len());
            if text.is_char_boundary(cut) {
                let _ = parse_format("x", &text[..cut]);
            }
            let mut chars: Vec<char> = text.chars().collect();
            let at = at % chars.len();
            chars[at] = c;
            let _ = parse_format("x", &chars.into_iter().collect::<String>());
        }
    }

    const FORK_618: &str = "name: sched_process_fork
ID: 300
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d child_comm=%s child_pid=%d\"
";

    const FORK_OLD: &str = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;";

    #[test]
    fn parses_data_loc_and_array_layouts() {
        let new = parse_format("sched:sched_process_fork", FORK_618).unwrap();
        assert_eq!(new.require("child_pid").unwrap(), 20);
        assert_eq!(new.require("parent_comm").unwrap(), 8);
        let old = parse_format("sched:sched_process_fork", FORK_OLD).unwrap();
        assert_eq!(old.require("child_pid").unwrap(), 44);
        assert_eq!(old.fields["parent_comm"].size, 16);
    }

    #[test]
    fn pointer_fields_and_missing_fields() {
        let f = parse_format(
            "syscalls:sys_enter_clone3",
            "\tfield:struct clone_args * uargs;\toffset:16;\tsize:8;\tsigned:0;",
        )
        .unwrap();
        assert_eq!(f.require("uargs").unwrap(), 16);
        let err = f.require("size").unwrap_err().to_string();
        assert!(
            err.contains("syscalls:sys_enter_clone3") && err.contains("size"),
            "{err}"
        );
        assert_eq!(f.optional("group_dead"), None);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            "",
            "field:int x;",
            "field:int x;\toffset:abc;\tsize:4;",
            "field:;\toffset:1;\tsize:4;",
            "garbage\n\n\u{0}",
        ] {
            assert!(parse_format("t", bad).is_err(), "accepted {bad:?}");
        }
    }
}
