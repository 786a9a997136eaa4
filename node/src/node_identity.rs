//! A cluster node's id, stored with its data: made at first start (random, never 0) and
//! read back at every later one, so that a restarted node comes back as itself, and a
//! node whose data directory was emptied (a replaced disk) comes back as a new node.

use std::io::Write;
use std::path::Path;

const ID_FILE: &str = "node.id";
const CLUSTER_FILE: &str = "cluster.id";

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
    write_durably(data_dir, ID_FILE, &format!("{id}\n"))?;
    Ok(id)
}

/// Checks the cluster `data_dir` belongs to: the first cluster id seen is kept with the
/// data; a node whose data belongs to another cluster is refused (its objects are not
/// this cluster's, and its id could collide with one of this cluster's nodes).
pub fn check_cluster(data_dir: &Path, cluster_id: &str) -> Result<(), String> {
    let path = data_dir.join(CLUSTER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(kept) if kept.trim() == cluster_id => Ok(()),
        Ok(kept) => Err(format!(
            "the data in {} belongs to cluster {}, and etcd holds cluster {cluster_id}: refusing to serve \
             (give this node an empty data directory to join as a new node)",
            data_dir.display(),
            kept.trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_durably(data_dir, CLUSTER_FILE, &format!("{cluster_id}\n"))
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Writes `name` in `dir` whole under another name, syncs it, renames it, and syncs the
/// directory: a crash leaves either no file or this one.
fn write_durably(dir: &Path, name: &str, contents: &str) -> Result<(), String> {
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(name));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))
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

    #[test]
    fn data_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_cluster(dir.path(), "aa").unwrap();
        check_cluster(dir.path(), "aa").unwrap();
        let err = check_cluster(dir.path(), "bb").unwrap_err();
        assert!(err.contains("belongs to cluster aa"), "{err}");
    }
}
