//! A cluster node's id, stored with its data: made at first start (random, never 0) and
//! read back at every later one, so that a restarted node comes back as itself, and a
//! node whose data directory was emptied (a replaced disk) comes back as a new node.

use std::io::Write;
use std::path::Path;

const ID_FILE: &str = "node.id";

/// The id in `data_dir/node.id`, made (and made durable) if the file is missing.
pub fn load_or_create(data_dir: &Path) -> Result<u32, String> {
    let path = data_dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&id| id != 0)
                .ok_or_else(|| format!("{}: not a node id ({:?})", path.display(), text.trim()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    let id = loop {
        let mut b = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .map_err(|e| format!("reading /dev/urandom: {e}"))?;
        let id = u32::from_le_bytes(b);
        if id != 0 {
            break id;
        }
    };
    // Written whole under another name, synced, renamed, and the directory synced: a crash
    // leaves either no id or this one.
    let tmp = data_dir.join(format!("{ID_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{id}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path()).unwrap();
        assert_ne!(id, 0);
        assert_eq!(load_or_create(dir.path()).unwrap(), id);
        std::fs::write(dir.path().join(ID_FILE), "zero\n").unwrap();
        assert!(load_or_create(dir.path()).unwrap_err().contains("not a node id"));
        let empty = tempfile::tempdir().unwrap();
        assert_ne!(
            load_or_create(empty.path()).unwrap(),
            id,
            "an emptied directory is a new node"
        );
    }
}
