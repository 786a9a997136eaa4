//! A value on its way in: received straight into a DMA buffer of the store's pool, which
//! the batch then writes to the device as its own iovec (no copy of the value), or
//! borrowed bytes that staging copies into the batch.

use hotshard_nvme::DmaBuffer;

/// A value of `len` bytes in a DMA buffer whose length is a whole number of blocks (the
/// tail past `len` is zeroed when it is staged). Get one from `Store::value_buffer`.
pub struct ValueBuf {
    buf: DmaBuffer,
    len: usize,
}

impl ValueBuf {
    /// `buf` must already hold a whole number of blocks, at least `len` bytes.
    pub(crate) fn new(buf: DmaBuffer, len: usize) -> Self {
        debug_assert!(buf.len() >= len);
        ValueBuf { buf, len }
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The buffer as the device writes it: the value, then zeros to the block's end.
    pub(crate) fn into_padded(mut self) -> DmaBuffer {
        let len = self.len;
        self.buf[len..].fill(0);
        self.buf
    }

    /// Bytes the value takes in the log's value area (whole blocks).
    pub(crate) fn padded_len(&self) -> usize {
        self.buf.len()
    }
}

impl AsMut<[u8]> for ValueBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl AsRef<[u8]> for ValueBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// What staging takes a record's value from.
pub(crate) enum StageValue<'a> {
    /// Copied into the batch (inline behind the key, or into a value buffer of the batch).
    Bytes(&'a [u8]),
    /// Handed to the batch as is when the record is staged (`None` afterwards).
    Buf(Option<ValueBuf>),
}

impl StageValue<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            StageValue::Bytes(b) => b,
            StageValue::Buf(Some(v)) => v.as_slice(),
            StageValue::Buf(None) => &[],
        }
    }
}
