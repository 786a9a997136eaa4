//! Why a shard map was refused.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("shard map of {len} bytes is over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("invalid shard map: {0}")]
    Malformed(String),
}
