//! The locked-memory check: glommio pins its ring memory and fails obscurely without it.

/// glommio needs at least this much RLIMIT_MEMLOCK for its rings.
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// Raises the soft RLIMIT_MEMLOCK to the hard limit if that helps, then checks that at
/// least `GLOMMIO_MIN_MEMLOCK` bytes may be locked. The error says what to do.
pub fn ensure_memlock() -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the plain struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
            return Err(format!(
                "getrlimit(RLIMIT_MEMLOCK): {}",
                std::io::Error::last_os_error()
            ));
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur < GLOMMIO_MIN_MEMLOCK {
        return Err(format!(
            "locked-memory limit is {} KiB; glommio needs at least {} KiB. Raise it with \
             `ulimit -l unlimited` (as root) or a memlock line in /etc/security/limits.conf, \
             or LimitMEMLOCK=infinity in a systemd unit",
            lim.rlim_cur / 1024,
            GLOMMIO_MIN_MEMLOCK / 1024
        ));
    }
    Ok(lim.rlim_cur)
}
