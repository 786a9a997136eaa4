//! hotshard-reactor: socket readiness for the shards' executors, shared by the node's
//! server and the harness's generator. Its spin and sleep constants are tuned against
//! measurements on the machines we bench on (see `readiness`); the protocol crate does not
//! depend on them.

pub mod readiness;

pub use readiness::{Outstanding, Readiness, ReadyListener, ReadySocket};
