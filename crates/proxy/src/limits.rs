//! Limits derived from the process's resources, and how running out of them is recognised.

use rustix::process::{Resource, getrlimit};

/// Whether `error` says the process (EMFILE) or the system (ENFILE) has no file descriptor
/// left: a local shortage, answered 503 and never blamed on a backend.
pub(crate) fn is_descriptor_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(error),
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
}

/// Descriptors kept aside for listeners, the admin listener, logs and the runtime.
const RESERVED_FDS: usize = 64;

/// The connection limit when the configuration sets none: what the open-file limit allows once
/// pipes are accounted for. A proxied connection holds two sockets; pipes (two descriptors each)
/// are capped by `max_pipes` over all tunnels together.
pub fn derived_max_connections(max_pipes: usize) -> usize {
    let nofile = getrlimit(Resource::Nofile)
        .current
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(1024);
    max_connections_for(nofile, max_pipes)
}

fn max_connections_for(nofile: usize, max_pipes: usize) -> usize {
    nofile
        .saturating_sub(RESERVED_FDS)
        .saturating_sub(max_pipes.saturating_mul(2))
        .div_euclid(2)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_room_for_pipes_and_reserve() {
        // 20,000 descriptors, 1,024 pipes: (20000 - 64 - 2048) / 2.
        assert_eq!(max_connections_for(20_000, 1024), 8944);
        // Never zero: a tiny limit still admits someone (and accept backs off on EMFILE).
        assert_eq!(max_connections_for(100, 1024), 1);
    }

    #[test]
    fn descriptor_exhaustion_is_emfile_and_enfile_only() {
        let os = |errno: rustix::io::Errno| std::io::Error::from_raw_os_error(errno.raw_os_error());
        assert!(is_descriptor_exhaustion(&os(rustix::io::Errno::MFILE)));
        assert!(is_descriptor_exhaustion(&os(rustix::io::Errno::NFILE)));
        assert!(!is_descriptor_exhaustion(&os(
            rustix::io::Errno::CONNREFUSED
        )));
        assert!(!is_descriptor_exhaustion(&std::io::Error::other("x")));
    }

    #[test]
    fn derived_limit_is_positive_here() {
        assert!(derived_max_connections(16) > 0);
    }
}
