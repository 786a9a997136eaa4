//! The glommio DmaFile backend passes the same checks as io_uring.

mod common;

use common::*;
use hotshard_nvme::{BlockQueue, Device, DeviceOptions, DmaFileQueue};

#[test]
fn conformance_and_concurrency_on_dma_file() {
    on_glommio(|| async {
        let dir = test_dir();
        let dev = Device::open(&DeviceOptions::new(dir.path().join("dev.img")).file_size(8 << 20)).unwrap();
        let q = DmaFileQueue::open(dev.info().clone(), 4 << 20).await.unwrap();
        conformance(&q).await;
        concurrent_io(&q, 100).await;
        assert_eq!(q.pool().free_bytes(), 4 << 20);
    });
}
