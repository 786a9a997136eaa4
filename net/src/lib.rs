//! hotshard-net: the wire protocol (rkyv headers + raw payloads), framing, validation,
//! error codes, placement, and the shard-aware client.

pub mod codec;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod placement;

pub use error::WireError;
pub use message::{ByteRange, Request, Response, Status, Target};
