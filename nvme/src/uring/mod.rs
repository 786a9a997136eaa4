//! The io_uring backend (the default): one ring per shard with registered files and
//! buffers, reaped by polling while I/O is in flight.

mod completion;
mod passthrough;
mod ring_setup;
mod uring_queue;

pub use passthrough::PassthroughQueue;
pub use ring_setup::{RingFeatures, UringOptions};
pub use uring_queue::UringQueue;
