//! hotshard-nvme: devices and per-core queues. io_uring is the default backend, glommio's
//! DmaFile the second, SPDK a feature; `SimDevice` simulates power loss and media faults.

pub mod any_queue;
pub mod device;
pub mod dma_buffer;
pub mod dma_file_queue;
pub mod error;
pub mod limits;
pub mod memlock;
pub mod queue;
pub mod sim;
#[cfg(feature = "spdk")]
pub mod spdk;
pub mod uring;

pub use any_queue::AnyQueue;
pub use device::{Device, DeviceInfo, DeviceKind, DeviceOptions};
pub use dma_buffer::{BufferPool, DmaBuffer};
pub use dma_file_queue::DmaFileQueue;
pub use error::{NvmeError, Result};
pub use queue::{BlockQueue, Durability};
pub use sim::{SimDevice, SimQueue, SplitMix64};
pub use uring::{RingFeatures, UringOptions, UringQueue};

/// A scratch directory on a real file system (not tmpfs), under the target directory.
#[cfg(test)]
pub(crate) fn test_dir() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-data");
    std::fs::create_dir_all(&base).expect("create target/test-data");
    tempfile::tempdir_in(base).expect("tempdir")
}
