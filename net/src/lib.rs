//! hotshard-net: the wire protocol (rkyv headers + raw payloads), framing, validation,
//! error codes, and the shard-aware client. Placement and the shard map are
//! `hotshard-placement` (re-exported here as `placement` and `shard_map`). The server
//! driver needs glommio and reads through the readiness reactor (`hotshard-reactor`), both
//! behind the feature `glommio` (on by default); the wire format and the client do not
//! (the client runs on tokio with `default-features = false, features = ["tokio"]`).

pub mod auth;
pub mod blocking;
pub mod client;
pub mod codec;
pub mod connection;
pub mod error;
pub mod expiry;
pub mod frame;
pub mod frame_io;
pub mod limits;
pub mod listing;
pub mod message;
#[cfg(feature = "glommio")]
pub mod ready_stream;
pub mod resp;
pub mod runtime;
#[cfg(feature = "glommio")]
pub mod server;
pub mod stop;
pub mod vectored;

pub use error::WireError;
pub use hotshard_placement::{partition as placement, shard_map};
pub use message::{ByteRange, ListStart, Recipient, Request, Response, Status, Target, UpdateOp};
