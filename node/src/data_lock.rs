//! One node per data directory: an exclusive `flock` held for the node's lifetime. A second
//! node on the same data is refused instead of corrupting it.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Held while the node runs; released by the kernel when the process exits, however it exits.
pub struct DataLock {
    _file: File,
}

impl DataLock {
    pub fn acquire(dir: &Path) -> Result<DataLock, String> {
        if dir.exists() && !dir.is_dir() {
            return Err(format!("node.data_dir: {} is not a directory", dir.display()));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        // SAFETY: flock on an fd we own; no pointers involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(format!(
                "{} is in use by another hotshard node (lock {} is held); stop it first or use another data_dir",
                dir.display(),
                path.display()
            ));
        }
        Ok(DataLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_that_is_a_file_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = DataLock::acquire(&file).err().unwrap();
        assert!(
            err.contains("node.data_dir") && err.contains("is not a directory"),
            "{err}"
        );
    }

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataLock::acquire(dir.path()).unwrap();
        let err = DataLock::acquire(dir.path()).err().unwrap();
        assert!(err.contains("in use by another hotshard node"), "{err}");
    }
}
