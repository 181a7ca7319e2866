//! Output files written safely: created under a temporary name in the destination
//! folder (mode 0600, `O_CREAT|O_EXCL`, so never through an existing file or symlink),
//! then synced and renamed into place. The destination never holds a partial file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// A file being written under a temporary name; [`AtomicFile::commit`] moves it into
/// place, dropping it uncommitted removes it.
pub struct AtomicFile {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
}

/// Temporary path used while `dest` is written.
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    dest.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

impl AtomicFile {
    /// Creates the temporary file next to `dest`. Fails early when the folder is not
    /// writable, or when the temporary name already exists (a link planted there).
    pub fn create(dest: &Path) -> io::Result<AtomicFile> {
        let tmp = temp_path(dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(AtomicFile {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// The buffered writer of the temporary file.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.out
            .as_mut()
            .expect("AtomicFile writer used after commit")
    }

    /// Flushes, syncs and renames the file into place; returns the destination.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        let out = self.out.take().expect("AtomicFile committed twice");
        let file = out.into_inner().map_err(|e| e.into_error())?;
        let done = file
            .sync_all()
            .and_then(|()| fs::rename(&self.tmp, &self.dest));
        if let Err(e) = done {
            let _ = fs::remove_file(&self.tmp);
            return Err(e);
        }
        Ok(self.dest.clone())
    }

    /// Removes the temporary file.
    pub fn abandon(self) {}
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dest` atomically (temporary file, sync, rename; mode 0600).
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let mut f = AtomicFile::create(dest)?;
    f.writer().write_all(bytes)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_whole_with_0600_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.json");
        write_atomically(&dest, b"{}").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"{}");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_uncommitted_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.json");
        let mut f = AtomicFile::create(&dest).unwrap();
        f.writer().write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_a_planted_temp_link_and_unwritable_folder() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.json");
        std::os::unix::fs::symlink("/etc/passwd", temp_path(&dest)).unwrap();
        assert!(AtomicFile::create(&dest).is_err());
        assert!(AtomicFile::create(Path::new("/nonexistent/dir/out.json")).is_err());
    }
}
