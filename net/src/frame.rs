//! The fixed little-endian preamble that starts every frame:
//!
//! ```text
//! 0   u32 magic "HSW1"     8   u32 header length      16  u64 request id
//! 4   u8  protocol version 12  u32 payload length
//! 5   u8  kind (request / response)
//! 6   u16 flags (zero)
//! ```
//!
//! then `header length` bytes of rkyv-archived header, then `payload length` raw bytes.

use crate::error::WireError;
use crate::limits::{MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES, MAX_SHARD_MAP_BYTES};

pub const PREAMBLE_BYTES: usize = 24;
pub const MAGIC: u32 = u32::from_le_bytes(*b"HSW1");
/// 2: node-to-node requests name the node and shard they are for (`Recipient`).
/// 3: a key listing pages within a partition (`ListKeys::from_hash`).
/// 4: `List`, a page of an ordered index (issue 33); every request header 8 bytes longer
/// (rkyv sizes the request by its largest kind).
pub const PROTOCOL_VERSION: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Request = 1,
    Response = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub kind: FrameKind,
    pub header_len: u32,
    pub payload_len: u32,
    pub request_id: u64,
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_BYTES] {
        let mut b = [0u8; PREAMBLE_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = PROTOCOL_VERSION;
        b[5] = self.kind as u8;
        b[8..12].copy_from_slice(&self.header_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.request_id.to_le_bytes());
        b
    }

    /// Checks the preamble and every length in it against the limits.
    pub fn decode(b: &[u8; PREAMBLE_BYTES]) -> Result<Preamble, WireError> {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        if u32_at(0) != MAGIC {
            return Err(WireError::BadMagic(u32_at(0)));
        }
        if b[4] != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion {
                got: b[4],
                supported: PROTOCOL_VERSION,
            });
        }
        let kind = match b[5] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            k => return Err(WireError::Malformed(format!("unknown frame kind {k}"))),
        };
        if b[6] != 0 || b[7] != 0 {
            return Err(WireError::Malformed("flags must be zero".into()));
        }
        let header_len = u32_at(8);
        let payload_len = u32_at(12);
        if header_len == 0 || header_len as usize > MAX_HEADER_BYTES {
            return Err(WireError::TooLarge {
                what: "header",
                len: header_len as usize,
                limit: MAX_HEADER_BYTES,
            });
        }
        let payload_limit = MAX_PAYLOAD_BYTES.max(MAX_SHARD_MAP_BYTES);
        if payload_len as usize > payload_limit {
            return Err(WireError::TooLarge {
                what: "payload",
                len: payload_len as usize,
                limit: payload_limit,
            });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[16..24]);
        Ok(Preamble {
            kind,
            header_len,
            payload_len,
            request_id: u64::from_le_bytes(id),
        })
    }
}
