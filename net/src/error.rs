//! Errors of the wire layer: what can be wrong with bytes from a peer.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a hotshard frame (magic {0:#010x})")]
    BadMagic(u32),
    #[error("protocol version {got} is not supported (this build speaks {supported})")]
    UnsupportedVersion { got: u8, supported: u8 },
    #[error("{what} of {len} bytes is over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("connection closed")]
    Closed,
    /// A read or write on a socket with a timeout ran out of time (the blocking client).
    #[error("no data within the socket timeout")]
    TimedOut,
}

impl From<hotshard_placement::MapError> for WireError {
    fn from(e: hotshard_placement::MapError) -> Self {
        match e {
            hotshard_placement::MapError::TooLarge { len, limit } => WireError::TooLarge {
                what: "shard map",
                len,
                limit,
            },
            hotshard_placement::MapError::Malformed(m) => WireError::Malformed(format!("shard map: {m}")),
        }
    }
}
