//! Opening a device (a preallocated file, a partition, a raw block device or an NVMe
//! namespace char device) and probing what it supports.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{NvmeError, Result};
use crate::limits::IO_ALIGN;

/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes (not exported by libc).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO('N', 0x40)`: namespace id of an NVMe namespace device.
const NVME_IOCTL_ID: libc::c_ulong = 0x4e40;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// What kind of thing a device path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A regular file on a file system.
    File,
    /// A block device: a whole disk, a partition or a loop device.
    BlockDevice,
    /// An NVMe namespace char device (`/dev/ngXnY`), driven by passthrough commands.
    NvmeCharDevice,
}

/// How to open a device.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub path: PathBuf,
    /// For a regular file: create it if missing and preallocate it to this many bytes.
    pub file_size: Option<u64>,
    /// Development only: accept a file system without durable direct I/O (tmpfs), using
    /// buffered I/O. Acknowledged writes are then not crash-safe.
    pub allow_buffered: bool,
    /// For a new regular file: write zeros over all of it, so that every extent is a
    /// written one. Reads then reach the device (an unwritten extent reads as zeros
    /// without I/O) and durable writes need no extent conversion in the file system journal.
    pub zero_fill: bool,
}

impl DeviceOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeviceOptions {
            path: path.into(),
            file_size: None,
            allow_buffered: false,
            zero_fill: false,
        }
    }

    pub fn file_size(mut self, bytes: u64) -> Self {
        self.file_size = Some(bytes);
        self
    }

    pub fn zero_fill(mut self, zero_fill: bool) -> Self {
        self.zero_fill = zero_fill;
        self
    }

    pub fn allow_buffered(mut self, allow: bool) -> Self {
        self.allow_buffered = allow;
        self
    }
}

/// What a device is and what it supports.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub kind: DeviceKind,
    /// Usable bytes.
    pub size: u64,
    /// Smallest unit of direct I/O the device accepts.
    pub logical_block_size: u32,
    /// Data is read and written with O_DIRECT (false only when buffered I/O was allowed).
    pub direct_io: bool,
    /// The block layer offers polled completions (IORING_SETUP_IOPOLL) for this device.
    pub iopoll: bool,
    /// NVMe passthrough (io_uring URING_CMD) is how this device is driven.
    pub passthrough: bool,
    /// NVMe namespace id, for passthrough.
    pub nsid: u32,
}

/// An open device. `Send`, so it can be opened once and handed to each shard, which
/// clones the file for its own queue.
#[derive(Debug)]
pub struct Device {
    file: File,
    info: DeviceInfo,
}

impl Device {
    /// Opens (and for a file, creates and preallocates) the device and probes it.
    pub fn open(opts: &DeviceOptions) -> Result<Device> {
        let path = &opts.path;
        let open_err = |op: &'static str| {
            move |source: std::io::Error| NvmeError::Open {
                op,
                path: path.clone(),
                source,
            }
        };
        if let Some(size) = opts.file_size {
            prepare_file(path, size, opts.zero_fill)?;
        }
        let meta = std::fs::metadata(path).map_err(open_err("stat"))?;
        let ft = meta.file_type();
        let kind = if ft.is_block_device() {
            DeviceKind::BlockDevice
        } else if ft.is_char_device() && is_nvme_generic(path) {
            DeviceKind::NvmeCharDevice
        } else if ft.is_file() {
            DeviceKind::File
        } else {
            return Err(NvmeError::Unsupported(format!(
                "{} is neither a regular file, a block device nor an NVMe char device",
                path.display()
            )));
        };

        let mut direct_io = kind != DeviceKind::NvmeCharDevice;
        if kind == DeviceKind::File {
            if let Some(fs) = volatile_fs_name(path)? {
                if !opts.allow_buffered {
                    return Err(NvmeError::NoDirectIo {
                        path: path.clone(),
                        fs,
                    });
                }
                direct_io = false;
            }
        }
        let mut oo = OpenOptions::new();
        oo.read(true).write(true);
        if direct_io {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = match oo.open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && direct_io => {
                let fs = fs_name(path).unwrap_or_else(|| "an unknown file system".into());
                if !opts.allow_buffered {
                    return Err(NvmeError::NoDirectIo {
                        path: path.clone(),
                        fs,
                    });
                }
                direct_io = false;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(open_err("open"))?
            }
            Err(e) => return Err(open_err("open")(e)),
        };

        let (size, logical_block_size, iopoll, nsid) = match kind {
            DeviceKind::File => (meta.len(), IO_ALIGN as u32, false, 0),
            DeviceKind::BlockDevice => {
                let size = ioctl_u64(&file, BLKGETSIZE64).map_err(open_err("BLKGETSIZE64"))?;
                let lbs =
                    ioctl_int(&file, libc::BLKSSZGET as libc::c_ulong).map_err(open_err("BLKSSZGET"))?;
                (size, lbs as u32, block_queue_flag(&meta, "io_poll"), 0)
            }
            DeviceKind::NvmeCharDevice => {
                let nsid = ioctl_ret(&file, NVME_IOCTL_ID).map_err(open_err("NVME_IOCTL_ID"))?;
                let (size, lbs) = nvme_namespace_geometry(path)?;
                (size, lbs, false, nsid as u32)
            }
        };
        if logical_block_size as usize > IO_ALIGN || logical_block_size == 0 {
            return Err(NvmeError::Unsupported(format!(
                "logical block size {logical_block_size} of {} (at most {IO_ALIGN} supported)",
                path.display()
            )));
        }
        let size = size / IO_ALIGN as u64 * IO_ALIGN as u64;
        Ok(Device {
            file,
            info: DeviceInfo {
                path: path.clone(),
                kind,
                size,
                logical_block_size,
                direct_io,
                iopoll,
                passthrough: kind == DeviceKind::NvmeCharDevice,
                nsid,
            },
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// A second handle on the same device, for another shard's queue.
    pub fn try_clone(&self) -> Result<Device> {
        let file = self.file.try_clone().map_err(|e| NvmeError::io("dup", e))?;
        Ok(Device {
            file,
            info: self.info.clone(),
        })
    }
}

fn prepare_file(path: &Path, size: u64, zero_fill: bool) -> Result<()> {
    if size == 0 || !size.is_multiple_of(IO_ALIGN as u64) {
        return Err(NvmeError::Misaligned {
            what: "file size",
            value: size,
            align: IO_ALIGN as u64,
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| NvmeError::Open {
            op: "create",
            path: path.to_path_buf(),
            source,
        })?;
    let len = file.metadata().map_err(|e| NvmeError::io("stat", e))?.len();
    if len < size {
        // SAFETY: plain syscall on an fd we own; no pointers involved.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // Some file systems lack fallocate; extending the length still reserves the range.
            if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(NvmeError::Open {
                    op: "fallocate",
                    path: path.to_path_buf(),
                    source: err,
                });
            }
            file.set_len(size).map_err(|e| NvmeError::io("set_len", e))?;
        }
        // At least the first block is written, so that a probe read of it (glommio's
        // IOPOLL probe reads block 0) reaches the device instead of returning zeros.
        let fill_to = if zero_fill { size } else { IO_ALIGN as u64 };
        let zeros = vec![0u8; 1 << 20];
        let mut at = len.min(fill_to) / IO_ALIGN as u64 * IO_ALIGN as u64;
        while at < fill_to {
            let n = (fill_to - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)
                .map_err(|e| NvmeError::io("zero fill", e))?;
            at += n as u64;
        }
        file.sync_all().map_err(|e| NvmeError::io("fsync", e))?;
    }
    Ok(())
}

fn statfs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `st` is plain old data that statfs fills; `c` is a valid NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) == 0 {
            Some(st.f_type as i64)
        } else {
            None
        }
    }
}

/// The name of the file system under `path` if it keeps data only in memory.
fn volatile_fs_name(path: &Path) -> Result<Option<String>> {
    Ok(match statfs_magic(path) {
        Some(TMPFS_MAGIC) => Some("tmpfs (memory only: nothing survives a power cut)".into()),
        Some(RAMFS_MAGIC) => Some("ramfs (memory only: nothing survives a power cut)".into()),
        _ => None,
    })
}

fn fs_name(path: &Path) -> Option<String> {
    statfs_magic(path).map(|m| format!("a file system with magic {m:#x}"))
}

fn is_nvme_generic(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("ng") && n[2..].contains('n'))
}

/// Size and logical block size of the block device that shares a namespace with `/dev/ngXnY`.
fn nvme_namespace_geometry(path: &Path) -> Result<(u64, u32)> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let block = format!("nvme{}", &name[2..]);
    let read = |file: &str| -> Result<u64> {
        let p = format!("/sys/block/{block}/{file}");
        std::fs::read_to_string(&p)
            .map_err(|source| NvmeError::Open {
                op: "read sysfs",
                path: p.clone().into(),
                source,
            })?
            .trim()
            .parse()
            .map_err(|_| NvmeError::Unsupported(format!("unreadable {p}")))
    };
    let sectors = read("size")?;
    let lbs = read("queue/logical_block_size")?;
    Ok((sectors * 512, lbs as u32))
}

/// Reads a flag from the block queue's sysfs directory (the parent's for a partition).
fn block_queue_flag(meta: &std::fs::Metadata, flag: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let dev_dir = format!("/sys/dev/block/{major}:{minor}");
    for dir in [format!("{dev_dir}/queue"), format!("{dev_dir}/../queue")] {
        if let Ok(v) = std::fs::read_to_string(format!("{dir}/{flag}")) {
            return v.trim() == "1";
        }
    }
    false
}

fn ioctl_u64(file: &File, req: libc::c_ulong) -> std::io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: the request writes one u64 through the pointer, which is valid and aligned.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut u64) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_int(file: &File, req: libc::c_ulong) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int through the pointer, which is valid and aligned.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_ret(file: &File, req: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: the request takes no argument and returns its answer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), req as _) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_created_preallocated_and_probed() {
        let dir = crate::test_dir();
        let path = dir.path().join("dev.img");
        let dev = Device::open(&DeviceOptions::new(&path).file_size(1 << 20)).unwrap();
        let info = dev.info();
        assert_eq!(info.kind, DeviceKind::File);
        assert_eq!(info.size, 1 << 20);
        assert!(info.direct_io);
        assert_eq!(info.logical_block_size as usize, IO_ALIGN);
        assert!(!info.passthrough);
    }

    #[test]
    fn tmpfs_is_refused_with_the_file_system_named() {
        if statfs_magic(Path::new("/dev/shm")) != Some(TMPFS_MAGIC) {
            eprintln!("skipped: /dev/shm is not tmpfs here");
            return;
        }
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("dev.img");
        let err = Device::open(&DeviceOptions::new(&path).file_size(1 << 20)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, NvmeError::NoDirectIo { .. }), "{msg}");
        assert!(msg.contains("tmpfs") && msg.contains("buffered"), "{msg}");
        // Development escape hatch.
        let dev = Device::open(&DeviceOptions::new(&path).file_size(1 << 20).allow_buffered(true)).unwrap();
        assert!(!dev.info().direct_io);
    }

    #[test]
    fn a_misaligned_file_size_is_refused() {
        let dir = crate::test_dir();
        let err = Device::open(&DeviceOptions::new(dir.path().join("x")).file_size(1000)).unwrap_err();
        assert!(matches!(err, NvmeError::Misaligned { .. }));
    }
}
