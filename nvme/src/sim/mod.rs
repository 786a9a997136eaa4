//! `SimDevice`: an in-memory device that knows which writes are durable and, driven by a
//! seed, cuts power, fails chosen ranges with EIO and flips bits. Deterministic and fast,
//! for the storage engine's crash tests.

mod rng;
mod sim_device;

pub use rng::SplitMix64;
pub use sim_device::{SimDevice, SimQueue, SimStats};
