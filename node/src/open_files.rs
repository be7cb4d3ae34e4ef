//! The open-files limit. A node holds up to `max_connections` API connections (1024 by default)
//! plus its peers' connections and RocksDB's files, and the usual soft limit is 1024: past it
//! accepts fail with "too many open files". At start the soft limit is raised to the hard limit
//! (capped), as Go's runtime and etcd do; the hard limit stays the operator's (`ulimit -Hn`,
//! systemd's `LimitNOFILE`).

/// Highest soft limit set: a hard limit of "unlimited" cannot be the soft one (the kernel caps
/// it at `fs.nr_open`, 1M by default).
const MAX_OPEN_FILES: u64 = 1 << 20;

/// Raise the soft limit of open files to the hard one (at most `MAX_OPEN_FILES`); returns the
/// soft limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the `rlimit` it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let wanted = limit.rlim_max.min(MAX_OPEN_FILES);
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the `rlimit` it is given, which lives for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let soft = raise_open_files_limit().expect("raise");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, soft);
        assert_eq!(soft, limit.rlim_max.min(MAX_OPEN_FILES));
    }
}
