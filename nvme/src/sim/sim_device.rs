//! The simulated device's state (what reads see, what is durable, the write log) and its
//! queue.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;

use super::rng::SplitMix64;
use crate::device::{DeviceInfo, DeviceKind};
use crate::dma_buffer::{BufferPool, DmaBuffer};
use crate::error::{NvmeError, Result};
use crate::limits::SECTOR_SIZE;
use crate::queue::{check_io, check_iov, thread_token, BlockQueue, Durability};

/// What the simulated device has done, for tests to assert on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub power_cuts: u64,
    /// Sectors of non-durable writes that a power cut dropped.
    pub sectors_dropped: u64,
    /// Sectors of non-durable writes that a power cut kept.
    pub sectors_kept: u64,
    pub injected_read_errors: u64,
    pub injected_write_errors: u64,
}

struct LoggedWrite {
    id: u64,
    offset: u64,
    data: Vec<u8>,
    completed: bool,
    durable: bool,
}

struct SimState {
    info: DeviceInfo,
    /// What reads return.
    current: Vec<u8>,
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// Writes not yet folded into `durable`, oldest first.
    log: VecDeque<LoggedWrite>,
    next_write_id: u64,
    powered: bool,
    /// Operations started so far (reads, writes, flushes).
    ops: u64,
    cut_at_op: Option<u64>,
    read_faults: Vec<Range<u64>>,
    write_faults: Vec<Range<u64>>,
    /// Writes overlapping a range take this many more turns of the executor to complete.
    slow_writes: Vec<(Range<u64>, u32)>,
    rng: SplitMix64,
    stats: SimStats,
}

impl SimState {
    /// Counts an operation and cuts power if this is the scheduled moment.
    fn start_op(&mut self) -> Result<()> {
        if !self.powered {
            return Err(NvmeError::PoweredOff);
        }
        self.ops += 1;
        if self.cut_at_op == Some(self.ops) {
            self.cut_power();
            return Err(NvmeError::PoweredOff);
        }
        Ok(())
    }

    fn cut_power(&mut self) {
        self.powered = false;
        self.cut_at_op = None;
        self.stats.power_cuts += 1;
    }

    /// Moves durable writes at the head of the log into the durable image.
    fn fold_durable_prefix(&mut self) {
        while self.log.front().is_some_and(|w| w.durable) {
            let w = self.log.pop_front().expect("front exists");
            let at = w.offset as usize;
            self.durable[at..at + w.data.len()].copy_from_slice(&w.data);
        }
    }

    fn overlaps(ranges: &[Range<u64>], offset: u64, len: usize) -> bool {
        let end = offset + len as u64;
        ranges.iter().any(|r| r.start < end && offset < r.end)
    }
}

/// The simulated hardware. Cheap to clone; every clone is the same device.
#[derive(Clone)]
pub struct SimDevice {
    state: Rc<RefCell<SimState>>,
}

impl SimDevice {
    /// A zeroed device of `size` bytes (a multiple of `logical_block_size`), seeded.
    pub fn new(size: u64, logical_block_size: u32, seed: u64) -> Result<SimDevice> {
        if !(logical_block_size as usize).is_multiple_of(SECTOR_SIZE)
            || !size.is_multiple_of(logical_block_size as u64)
        {
            return Err(NvmeError::Config(format!(
                "sim size {size} and block size {logical_block_size} must be multiples of {SECTOR_SIZE}"
            )));
        }
        let info = DeviceInfo {
            path: PathBuf::from(format!("sim:{seed:#x}")),
            kind: DeviceKind::File,
            size,
            logical_block_size,
            direct_io: true,
            iopoll: false,
            passthrough: false,
            nsid: 0,
        };
        Ok(SimDevice {
            state: Rc::new(RefCell::new(SimState {
                info,
                current: vec![0; size as usize],
                durable: vec![0; size as usize],
                log: VecDeque::new(),
                next_write_id: 0,
                powered: true,
                ops: 0,
                cut_at_op: None,
                read_faults: Vec::new(),
                write_faults: Vec::new(),
                slow_writes: Vec::new(),
                rng: SplitMix64::new(seed),
                stats: SimStats::default(),
            })),
        })
    }

    /// A queue on this device with its own DMA pool.
    pub fn queue(&self, pool_bytes: usize) -> Result<SimQueue> {
        Ok(SimQueue {
            device: self.clone(),
            info: self.state.borrow().info.clone(),
            pool: BufferPool::new(pool_bytes)?,
            owner: thread_token(),
        })
    }

    pub fn info(&self) -> DeviceInfo {
        self.state.borrow().info.clone()
    }

    pub fn stats(&self) -> SimStats {
        self.state.borrow().stats.clone()
    }

    /// Operations started so far.
    pub fn ops(&self) -> u64 {
        self.state.borrow().ops
    }

    pub fn is_powered(&self) -> bool {
        self.state.borrow().powered
    }

    /// Cuts power now: every later operation fails with `PoweredOff` until `recover`.
    pub fn cut_power(&self) {
        self.state.borrow_mut().cut_power();
    }

    /// Cuts power when the `n`-th operation from now starts (that one fails).
    pub fn cut_power_after(&self, n: u64) {
        let mut s = self.state.borrow_mut();
        s.cut_at_op = Some(s.ops + n.max(1));
    }

    /// Powers back on after a cut: every durable write is kept; each sector of every other
    /// write is kept or dropped by the seeded generator (torn at sector granularity).
    pub fn recover(&self) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        if s.powered {
            s.cut_power();
        }
        while let Some(w) = s.log.pop_front() {
            let at = w.offset as usize;
            if w.durable {
                s.durable[at..at + w.data.len()].copy_from_slice(&w.data);
                continue;
            }
            for (i, sector) in w.data.chunks(SECTOR_SIZE).enumerate() {
                if s.rng.chance(1, 2) {
                    let from = at + i * SECTOR_SIZE;
                    s.durable[from..from + sector.len()].copy_from_slice(sector);
                    s.stats.sectors_kept += 1;
                } else {
                    s.stats.sectors_dropped += 1;
                }
            }
        }
        s.current = s.durable.clone();
        s.powered = true;
    }

    /// Writes overlapping `range` complete `turns` turns of the executor later than others,
    /// so that a later write can complete first.
    pub fn slow_writes(&self, range: Range<u64>, turns: u32) {
        self.state.borrow_mut().slow_writes.push((range, turns));
    }

    /// Reads overlapping `range` fail with EIO.
    pub fn fail_reads(&self, range: Range<u64>) {
        self.state.borrow_mut().read_faults.push(range);
    }

    /// Writes overlapping `range` fail with EIO and change nothing.
    pub fn fail_writes(&self, range: Range<u64>) {
        self.state.borrow_mut().write_faults.push(range);
    }

    /// Removes every injected EIO range.
    pub fn clear_faults(&self) {
        let mut s = self.state.borrow_mut();
        s.read_faults.clear();
        s.write_faults.clear();
        s.slow_writes.clear();
    }

    /// Flips one bit of the stored medium (both what reads see and what is durable).
    pub fn flip_bit(&self, byte_offset: u64, bit: u8) {
        let mut s = self.state.borrow_mut();
        let mask = 1u8 << (bit % 8);
        let at = byte_offset as usize;
        if at < s.current.len() {
            s.current[at] ^= mask;
            s.durable[at] ^= mask;
        }
    }

    /// Flips one seeded-random bit inside `range`; returns the byte offset flipped.
    pub fn flip_random_bit(&self, range: Range<u64>) -> u64 {
        let (at, bit) = {
            let mut s = self.state.borrow_mut();
            let at = range.start + s.rng.below(range.end.saturating_sub(range.start).max(1));
            (at, s.rng.below(8) as u8)
        };
        self.flip_bit(at, bit);
        at
    }

    /// A copy of what is durable right now (what a power cut could not take away, before
    /// tearing adds some of the rest).
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.borrow().durable.clone()
    }
}

/// A queue on a [`SimDevice`]. Each operation yields once before completing so that
/// concurrent operations interleave, as they would on hardware.
pub struct SimQueue {
    device: SimDevice,
    info: DeviceInfo,
    pool: BufferPool,
    owner: usize,
}

impl SimQueue {
    pub fn device(&self) -> &SimDevice {
        &self.device
    }

    fn check_thread(&self) -> Result<()> {
        if thread_token() != self.owner {
            return Err(NvmeError::WrongThread);
        }
        Ok(())
    }

    fn eio(op: &'static str) -> NvmeError {
        NvmeError::io(op, std::io::Error::from_raw_os_error(libc::EIO))
    }

    async fn write_bytes(&self, offset: u64, data: Vec<u8>, durability: Durability) -> Result<()> {
        let len = data.len();
        let (id, turns) = {
            let mut s = self.device.state.borrow_mut();
            s.start_op()?;
            s.stats.writes += 1;
            if SimState::overlaps(&s.write_faults, offset, data.len()) {
                s.stats.injected_write_errors += 1;
                return Err(Self::eio("write"));
            }
            let at = offset as usize;
            s.current[at..at + data.len()].copy_from_slice(&data);
            let id = s.next_write_id;
            s.next_write_id += 1;
            s.log.push_back(LoggedWrite {
                id,
                offset,
                data,
                completed: false,
                durable: false,
            });
            // Writes in flight together complete in any order: each takes 1 to 3 turns,
            // more if it falls in a slow range.
            let slow: u32 = s
                .slow_writes
                .iter()
                .filter(|(r, _)| SimState::overlaps(std::slice::from_ref(r), offset, len))
                .map(|(_, turns)| turns)
                .sum();
            (id, 1 + s.rng.below(3) as u32 + slow)
        };
        for _ in 0..turns {
            futures_lite::future::yield_now().await;
        }
        let mut s = self.device.state.borrow_mut();
        if !s.powered {
            return Err(NvmeError::PoweredOff);
        }
        if let Some(w) = s.log.iter_mut().find(|w| w.id == id) {
            w.completed = true;
            w.durable = durability == Durability::Fua;
        }
        s.fold_durable_prefix();
        Ok(())
    }
}

impl BlockQueue for SimQueue {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn pool(&self) -> &BufferPool {
        &self.pool
    }

    async fn read_at(&self, offset: u64, mut buf: DmaBuffer) -> Result<DmaBuffer> {
        self.check_thread()?;
        check_io(&self.info, offset, buf.len())?;
        {
            let mut s = self.device.state.borrow_mut();
            s.start_op()?;
            s.stats.reads += 1;
        }
        futures_lite::future::yield_now().await;
        let mut s = self.device.state.borrow_mut();
        if !s.powered {
            return Err(NvmeError::PoweredOff);
        }
        if SimState::overlaps(&s.read_faults, offset, buf.len()) {
            s.stats.injected_read_errors += 1;
            return Err(Self::eio("read"));
        }
        let at = offset as usize;
        let len = buf.len();
        buf.copy_from_slice(&s.current[at..at + len]);
        Ok(buf)
    }

    async fn write_at(&self, offset: u64, buf: DmaBuffer, durability: Durability) -> Result<DmaBuffer> {
        self.check_thread()?;
        check_io(&self.info, offset, buf.len())?;
        self.write_bytes(offset, buf.to_vec(), durability).await?;
        Ok(buf)
    }

    async fn writev_at(
        &self,
        offset: u64,
        bufs: Vec<DmaBuffer>,
        durability: Durability,
    ) -> Result<Vec<DmaBuffer>> {
        self.check_thread()?;
        let total = check_iov(&self.info, offset, &bufs)?;
        let mut data = Vec::with_capacity(total);
        for b in &bufs {
            data.extend_from_slice(b);
        }
        self.write_bytes(offset, data, durability).await?;
        Ok(bufs)
    }

    async fn flush(&self) -> Result<()> {
        self.check_thread()?;
        // Only writes completed before the flush starts are covered by it.
        let covered: Vec<u64> = {
            let mut s = self.device.state.borrow_mut();
            s.start_op()?;
            s.stats.flushes += 1;
            s.log.iter().filter(|w| w.completed).map(|w| w.id).collect()
        };
        futures_lite::future::yield_now().await;
        let mut s = self.device.state.borrow_mut();
        if !s.powered {
            return Err(NvmeError::PoweredOff);
        }
        for w in s.log.iter_mut() {
            if covered.binary_search(&w.id).is_ok() {
                w.durable = true;
            }
        }
        s.fold_durable_prefix();
        Ok(())
    }
}
