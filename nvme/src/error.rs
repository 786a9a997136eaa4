//! Typed errors of the device layer: every misuse and every device failure has a variant.

use std::io;
use std::path::PathBuf;

/// Result of a device-layer operation.
pub type Result<T> = std::result::Result<T, NvmeError>;

/// What went wrong in the device layer.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("{what} {value} is not a multiple of the required alignment {align}")]
    Misaligned {
        what: &'static str,
        value: u64,
        align: u64,
    },
    #[error("I/O of {len} bytes at offset {offset} reaches past the end of the device ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("I/O of {len} bytes is larger than the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("the ring is full: {in_flight} operations in flight, capacity {capacity}")]
    RingFull { in_flight: usize, capacity: usize },
    #[error("DMA buffer pool exhausted: asked for {requested} bytes, {free} of {capacity} free")]
    PoolExhausted {
        requested: usize,
        free: usize,
        capacity: usize,
    },
    #[error("a queue was used from a thread other than the one that created it")]
    WrongThread,
    #[error("buffer belongs to another queue's pool")]
    ForeignBuffer,
    #[error(
        "{path} is on {fs}, which does not support O_DIRECT; put data on a disk-backed \
         file system (ext4, xfs), a partition or a block device (a loop device works), \
         or allow buffered I/O for development only"
    )]
    NoDirectIo { path: PathBuf, fs: String },
    #[error("{op} on {path}: {source}")]
    Open {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{op} failed: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("{op} transferred {done} of {expected} bytes")]
    ShortTransfer {
        op: &'static str,
        done: usize,
        expected: usize,
    },
    #[error("the device lost power (simulated); recover it before further I/O")]
    PoweredOff,
    #[error("not supported here: {0}")]
    Unsupported(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl NvmeError {
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        NvmeError::Io { op, source }
    }

    /// True for an I/O error the device reported (EIO and friends), as opposed to misuse.
    pub fn is_device_error(&self) -> bool {
        matches!(
            self,
            NvmeError::Io { .. } | NvmeError::ShortTransfer { .. } | NvmeError::PoweredOff
        )
    }
}
