//! One `sendmsg` for many slices: responses' headers and their payloads go to the socket
//! together without being copied into one buffer first.

use std::io;
use std::os::unix::io::RawFd;

/// Most slices handed to one `sendmsg` (the kernel's IOV_MAX).
pub const MAX_SLICES: usize = 1024;

/// Sends as much of `slices` as the socket accepts right now, without waiting; returns the
/// bytes sent (0 if the socket would block).
pub fn try_sendmsg(fd: RawFd, slices: &[&[u8]]) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = slices
        .iter()
        .take(MAX_SLICES)
        .map(|s| libc::iovec {
            iov_base: s.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        })
        .collect();
    // SAFETY: `msg` points at `iov`, which points at slices that outlive this call; the
    // kernel only reads them.
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if rc >= 0 {
        return Ok(rc as usize);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Ok(0)
    } else {
        Err(err)
    }
}
