//! A hotshard node the harness starts itself from a profile with some keys changed, for
//! sweeps and tuning over server-side knobs. Stopped (SIGTERM, then SIGKILL) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sets `section.key = value` in a profile. `shards = N` is shorthand for the first N cores.
pub fn set_knob(profile: &mut toml::Table, knob: &str, value: &str) -> anyhow::Result<()> {
    if knob == "shards" {
        let n: usize = value
            .parse()
            .map_err(|_| anyhow::anyhow!("shards={value} is not a count"))?;
        let cores = (0..n as i64).map(toml::Value::Integer).collect();
        return set_knob_value(profile, "node.cores", toml::Value::Array(cores));
    }
    let v = if let Ok(i) = value.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = value.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_string())
    };
    set_knob_value(profile, knob, v)
}

fn set_knob_value(profile: &mut toml::Table, knob: &str, v: toml::Value) -> anyhow::Result<()> {
    let (section, key) = knob.split_once('.').ok_or_else(|| {
        anyhow::anyhow!("server knob {knob:?} must be SECTION.KEY (e.g. queue.entries) or shards")
    })?;
    let table = profile
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| anyhow::anyhow!("[{section}] in the profile is not a table"))?;
    table.insert(key.to_string(), v);
    Ok(())
}

pub fn read_profile(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The `hotshard` binary next to this one (cargo puts both in the same target directory).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("hotshard")))
        .unwrap_or_else(|| PathBuf::from("hotshard"))
}

pub struct ManagedNode {
    child: Child,
    pub addr: String,
}

impl ManagedNode {
    /// Starts a node on a fresh copy of `data_dir` and waits until it answers.
    pub fn start(binary: &Path, profile: &toml::Table, work_dir: &Path) -> anyhow::Result<ManagedNode> {
        let mut profile = profile.clone();
        let data_dir = work_dir.join("data");
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)?;
        }
        std::fs::create_dir_all(work_dir)?;
        set_knob_value(
            &mut profile,
            "node.data_dir",
            toml::Value::String(data_dir.display().to_string()),
        )?;
        // A node measured by the harness serves no S3: the embedded default's gateway port
        // would collide with a node already running from it (the S3 benchmarks configure
        // their own).
        set_knob_value(&mut profile, "s3.listen", toml::Value::String(String::new()))?;
        let node = profile.get("node").and_then(|n| n.as_table());
        let listen = node
            .and_then(|n| n.get("listen"))
            .and_then(|v| v.as_str())
            .unwrap_or("127.0.0.1")
            .to_string();
        let port = node
            .and_then(|n| n.get("base_port"))
            .and_then(|v| v.as_integer())
            .unwrap_or(7400);
        let config = work_dir.join("node.toml");
        std::fs::write(&config, toml::to_string(&profile)?)?;
        let log = std::fs::File::create(work_dir.join("node.log"))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?;
        let mut node = ManagedNode {
            child,
            addr: format!("{listen}:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = node.child.try_wait()? {
                let log = std::fs::read_to_string(work_dir.join("node.log")).unwrap_or_default();
                anyhow::bail!("the node exited ({status}) before serving:\n{log}");
            }
            let secret = hotshard_net::auth::secret_from_env();
            if hotshard_net::blocking::BlockingClient::connect_with_secret(
                &node.addr,
                Duration::from_secs(1),
                secret,
            )
            .is_ok()
            {
                return Ok(node);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the node did not answer on {} within 60 s",
                node.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ManagedNode {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_edit_the_profile() {
        let mut p: toml::Table = "[node]\ncores = []\n[queue]\nentries = 256\n".parse().unwrap();
        set_knob(&mut p, "queue.entries", "64").unwrap();
        set_knob(&mut p, "shards", "2").unwrap();
        set_knob(&mut p, "store.durability", "fua").unwrap();
        set_knob(&mut p, "queue.iopoll", "true").unwrap();
        let text = toml::to_string(&p).unwrap();
        assert!(text.contains("entries = 64"), "{text}");
        assert!(text.contains("cores = [0, 1]"), "{text}");
        assert!(text.contains("durability = \"fua\""), "{text}");
        assert!(text.contains("iopoll = true"), "{text}");
        assert!(set_knob(&mut p, "entries", "1").is_err());
        assert!(set_knob(&mut p, "shards", "x").is_err());
    }
}
