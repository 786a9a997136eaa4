//! The gateway's access key and secret: from the configuration, overridden by
//! `HOTSHARD_S3_ACCESS_KEY` and `HOTSHARD_S3_SECRET_KEY`; with neither, generated once and
//! kept in a file of the data directory (mode 0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file in the data directory holding generated keys.
pub const KEYS_FILE: &str = "s3-credentials.json";

#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Where the keys came from, for the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysFrom {
    Config,
    Environment,
    /// Generated now and written to this file.
    Generated(PathBuf),
    /// Read from the file an earlier start generated.
    File(PathBuf),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeysFile {
    access_key: String,
    secret_key: String,
}

/// The keys to use: the environment's, else the configuration's, else the data
/// directory's file (written now with new keys if there is none).
pub fn resolve(
    configured: Option<(String, String)>,
    env: impl Fn(&str) -> Option<String>,
    data_dir: &Path,
) -> std::io::Result<(Credentials, KeysFrom)> {
    let from_env = (env("HOTSHARD_S3_ACCESS_KEY"), env("HOTSHARD_S3_SECRET_KEY"));
    if let (Some(access_key), Some(secret_key)) = from_env {
        return Ok((
            Credentials {
                access_key,
                secret_key,
            },
            KeysFrom::Environment,
        ));
    }
    if let Some((access_key, secret_key)) = configured {
        return Ok((
            Credentials {
                access_key,
                secret_key,
            },
            KeysFrom::Config,
        ));
    }
    let path = data_dir.join(KEYS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let k: KeysFile = serde_json::from_str(&text).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            let creds = Credentials {
                access_key: k.access_key,
                secret_key: k.secret_key,
            };
            Ok((creds, KeysFrom::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let creds = Credentials {
                access_key: format!("HS{}", random_text(18)),
                secret_key: random_text(40),
            };
            let text = serde_json::to_string_pretty(&KeysFile {
                access_key: creds.access_key.clone(),
                secret_key: creds.secret_key.clone(),
            })
            .unwrap_or_default();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            Ok((creds, KeysFrom::Generated(path)))
        }
        Err(e) => Err(e),
    }
}

/// `n` characters of [A-Z0-9] from the kernel's random source.
fn random_text(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_then_the_config_then_a_generated_file_kept_private() {
        let dir = std::env::temp_dir().join(format!("hotshard-s3-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let none = |_: &str| None;
        let env = |k: &str| Some(format!("env-{k}"));
        let conf = Some(("a".to_string(), "s".to_string()));
        let (c, from) = resolve(conf.clone(), env, &dir).unwrap();
        assert_eq!(
            (c.access_key.as_str(), from),
            ("env-HOTSHARD_S3_ACCESS_KEY", KeysFrom::Environment)
        );
        let (c, from) = resolve(conf, none, &dir).unwrap();
        assert_eq!((c.access_key.as_str(), from), ("a", KeysFrom::Config));
        let (made, from) = resolve(None, none, &dir).unwrap();
        let path = dir.join(KEYS_FILE);
        assert_eq!(from, KeysFrom::Generated(path.clone()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, from) = resolve(None, none, &dir).unwrap();
        assert_eq!(from, KeysFrom::File(path));
        assert_eq!(
            (again.access_key, again.secret_key),
            (made.access_key, made.secret_key)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
