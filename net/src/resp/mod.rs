//! RESP2, the Redis protocol (issue 21), without sockets or disks: parsing a command from
//! the front of a buffer (`frame`), reading its arguments into what it asks (`command`)
//! and writing replies (`reply`). The node's RESP front builds on these.

pub mod command;
pub mod frame;
pub mod glob;
pub mod redis_docs;
pub mod reply;
#[cfg(feature = "glommio")]
pub mod server;

pub use frame::{parse_command, Arg, Command, Parsed, RespLimits};
