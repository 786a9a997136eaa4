//! Where a PUT's value is received: straight into a DMA buffer of the owning shard's pool
//! (the batch then writes it from there, no copy), or into an ordinary buffer when another
//! core owns the key (it crosses the peer channel, and the owner copies it once) or the
//! pool has no room right now.

use crate::store::ValueBuf;

pub enum PutPayload {
    /// Bound for this shard's device as is.
    InPlace(ValueBuf),
    /// Copied once more on its way: into the owner's batch, or into a peer message.
    Heap(Vec<u8>),
}

impl PutPayload {
    pub fn len(&self) -> usize {
        match self {
            PutPayload::InPlace(b) => b.len(),
            PutPayload::Heap(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as an ordinary vector, for a peer shard (a copy if they are in place).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            PutPayload::InPlace(b) => b.as_slice().to_vec(),
            PutPayload::Heap(v) => v,
        }
    }
}

impl AsRef<[u8]> for PutPayload {
    fn as_ref(&self) -> &[u8] {
        match self {
            PutPayload::InPlace(b) => b.as_ref(),
            PutPayload::Heap(v) => v,
        }
    }
}

impl AsMut<[u8]> for PutPayload {
    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            PutPayload::InPlace(b) => b.as_mut(),
            PutPayload::Heap(v) => v,
        }
    }
}
