//! Named limits of the device layer, each with the reason for its value.

/// Alignment of every DMA buffer and the smallest unit of I/O we issue. 4 KiB matches
/// Advanced Format disks and the page size, so O_DIRECT works on every device we target.
pub const IO_ALIGN: usize = 4096;

/// Atomic unit of a device write. Power loss can tear a multi-sector write at any sector
/// boundary, but never inside one sector (the NVMe/SCSI atomic write guarantee).
pub const SECTOR_SIZE: usize = 512;

/// Largest single read or write a queue accepts. Values are at most 8 MiB; a record adds a
/// header and alignment, so 16 MiB leaves room while keeping one I/O bounded.
pub const MAX_IO_BYTES: usize = 16 << 20;

/// Largest number of buffers in one vectored write. Linux caps an iovec array at 1024
/// (UIO_MAXIOV); a group-commit batch never needs more.
pub const MAX_IOVECS: usize = 1024;

/// Default submission ring size. Deep enough for QD 128 per shard; every ring slot is
/// backed by a completion slot, so this also bounds the requests in flight per queue.
pub const DEFAULT_RING_ENTRIES: u32 = 256;

/// Largest ring we build: the kernel's own cap on SQ entries is 32768.
pub const MAX_RING_ENTRIES: u32 = 32768;

/// Default DMA memory per queue. 64 MiB holds 16 K pages of 4 KiB: QD 256 of 8 MiB-class
/// writes would not fit, so big writers wait for buffers instead of growing memory.
pub const DEFAULT_POOL_BYTES: usize = 64 << 20;

/// Largest DMA pool per queue: io_uring registers one buffer of at most 1 GiB.
pub const MAX_POOL_BYTES: usize = 1 << 30;
