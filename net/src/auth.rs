//! Challenge-response authentication with a shared secret. The client asks for a
//! challenge; the server answers with a fresh 32-byte nonce (hex, in the response's
//! `reason`); the client proves it knows the secret with HMAC-SHA256(secret, context ||
//! nonce); the server checks it in constant time. The secret never crosses the wire.
//!
//! Two credentials use the same exchange with different contexts, so that a proof of one
//! is never a proof of the other: the clients' secret (`auth.secret`, optional), and the
//! cluster's peer key, which only nodes hold (made with the cluster and kept in etcd). A
//! connection that proved the peer key may send node-to-node requests (`Replicate`,
//! `Reassert`, `SyncManifest`); no other may.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bound into every proof, so that a proof for this protocol means nothing elsewhere.
const CONTEXT: &[u8] = b"hotshard-auth-v1";
/// Bound into a node's proof of the cluster's peer key.
const PEER_CONTEXT: &[u8] = b"hotshard-peer-v1";
pub const NONCE_BYTES: usize = 32;

fn mac(context: &[u8], secret: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(context);
    m.update(nonce);
    m
}

/// The proof a client sends for `nonce`.
pub fn proof(secret: &[u8], nonce: &[u8]) -> Vec<u8> {
    mac(CONTEXT, secret, nonce).finalize().into_bytes().to_vec()
}

/// Whether `proof` answers `nonce` for `secret` (constant time).
pub fn verify(secret: &[u8], nonce: &[u8], proof: &[u8]) -> bool {
    mac(CONTEXT, secret, nonce).verify_slice(proof).is_ok()
}

/// The proof a node sends for `nonce` with the cluster's peer key.
pub fn peer_proof(key: &[u8], nonce: &[u8]) -> Vec<u8> {
    mac(PEER_CONTEXT, key, nonce).finalize().into_bytes().to_vec()
}

/// Whether `proof` answers `nonce` for the peer key `key` (constant time).
pub fn verify_peer(key: &[u8], nonce: &[u8], proof: &[u8]) -> bool {
    mac(PEER_CONTEXT, key, nonce).verify_slice(proof).is_ok()
}

/// Bytes of a cluster's peer key.
pub const PEER_KEY_BYTES: usize = 32;

/// A fresh nonce from the kernel's random source.
pub fn new_nonce() -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    let mut filled = 0;
    while filled < n.len() {
        // SAFETY: getrandom writes at most the length it is given into our buffer.
        let r = unsafe { libc::getrandom(n[filled..].as_mut_ptr().cast(), n.len() - filled, 0) };
        if r > 0 {
            filled += r as usize;
        }
    }
    n
}

/// The variable clients read the node's secret from: an environment variable, never an
/// argument (arguments show in `ps`).
pub const SECRET_ENV: &str = "HOTSHARD_SECRET";

/// The secret from `HOTSHARD_SECRET`, if set (the CLI, the harness and scripts use it).
pub fn secret_from_env() -> Option<Vec<u8>> {
    std::env::var_os(SECRET_ENV).map(|s| s.into_encoded_bytes())
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_proof_is_not_a_client_proof_and_the_other_way_round() {
        let nonce = new_nonce();
        let key = b"the same bytes";
        assert!(verify_peer(key, &nonce, &peer_proof(key, &nonce)));
        assert!(!verify(key, &nonce, &peer_proof(key, &nonce)));
        assert!(!verify_peer(key, &nonce, &proof(key, &nonce)));
    }

    #[test]
    fn proofs_verify_only_with_the_same_secret_and_nonce() {
        let n = new_nonce();
        let p = proof(b"s3cret", &n);
        assert!(verify(b"s3cret", &n, &p));
        assert!(!verify(b"other", &n, &p));
        assert!(!verify(b"s3cret", &new_nonce(), &p));
        assert!(!verify(b"s3cret", &n, &p[..31]));
        assert_ne!(new_nonce(), new_nonce());
        assert_eq!(from_hex(&to_hex(&n)).unwrap(), n);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("abc"), None);
    }
}
