//! A value handed back by a read: a slice of the DMA buffer the device filled, or of a
//! cached copy. Either way the bytes are not copied again on the way out.

use std::rc::Rc;

use hotshard_nvme::DmaBuffer;

/// `len` bytes from `start`: the whole value, or the range asked for; `object_len` is the
/// whole value's length either way (a range read needs no second lookup for it).
pub enum Value {
    /// Straight from the device.
    Dma {
        buf: DmaBuffer,
        start: usize,
        len: usize,
        object_len: u32,
        expires_ms: u64,
    },
    /// From the hot-object cache.
    Cached {
        bytes: Rc<[u8]>,
        start: usize,
        len: usize,
        object_len: u32,
        expires_ms: u64,
    },
}

impl Value {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Value::Dma { buf, start, len, .. } => &buf[*start..*start + *len],
            Value::Cached {
                bytes, start, len, ..
            } => &bytes[*start..*start + *len],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Value::Dma { len, .. } | Value::Cached { len, .. } => *len,
        }
    }

    /// Length of the whole value (of which this may be a range).
    pub fn object_len(&self) -> u64 {
        match self {
            Value::Dma { object_len, .. } | Value::Cached { object_len, .. } => u64::from(*object_len),
        }
    }

    /// When the object expires, Unix milliseconds; 0: never.
    pub fn expires_ms(&self) -> u64 {
        match self {
            Value::Dma { expires_ms, .. } | Value::Cached { expires_ms, .. } => *expires_ms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_cache(&self) -> bool {
        matches!(self, Value::Cached { .. })
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Value({} bytes{})",
            self.len(),
            if self.from_cache() { ", cached" } else { "" }
        )
    }
}
