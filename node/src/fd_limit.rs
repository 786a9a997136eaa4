//! The open-files limit: raised at start to the hard limit, and a warning when even that is
//! below what the configured connections could use. Running out is survived (the
//! listeners shed connections they cannot take, `listener.rs`), but it refuses clients.

/// Descriptors a shard uses besides its connections (rings, data file, epoll, pipes, the
/// accept spare), with room to spare.
const PER_SHARD_OVERHEAD: u64 = 32;

/// Raises the soft limit to the hard one; returns a warning when the result is below
/// `shards × (max_connections + overhead)`.
pub fn raise_open_files_limit(shards: usize, max_connections: usize) -> Option<String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let needed = shards as u64 * (max_connections as u64 + PER_SHARD_OVERHEAD);
    (lim.rlim_cur < needed).then(|| {
        format!(
            "open-files limit is {} but {shards} shard(s) x net.max_connections {max_connections} \
             need about {needed}: beyond it, new connections are closed at once. \
             Raise it (`ulimit -n {needed}`, or LimitNOFILE= in a systemd unit) or lower \
             net.max_connections.",
            lim.rlim_cur
        )
    })
}
