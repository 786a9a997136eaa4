//! Errors of the storage engine; each maps to one error code clients see.

use hotshard_nvme::NvmeError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("version mismatch: current version is {current}")]
    VersionMismatch { current: u64 },
    #[error("{what} of {len} bytes is over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("no space left on the device")]
    NoSpace,
    #[error("checksum failed: {0}")]
    Corrupt(String),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("device error: {0}")]
    Device(#[from] NvmeError),
    #[error("busy: {0}; try again")]
    Busy(&'static str),
    #[error("the write failed and was not acknowledged: {0}")]
    WriteFailed(String),
    #[error("cannot open the store: {0}")]
    Open(String),
}

pub type StoreResult<T> = Result<T, StoreError>;
