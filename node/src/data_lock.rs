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
