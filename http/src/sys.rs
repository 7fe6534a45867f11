//! The file-descriptor limit: every syscall of this crate.

use crate::HttpError;

/// Highest soft limit asked for when the hard limit is "unlimited" (the kernel
/// refuses more than `fs.nr_open`, 1,048,576 by default).
const UNLIMITED_CAP: u64 = 1 << 20;

fn get() -> Result<libc::rlimit, HttpError> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(HttpError::FdLimit(std::io::Error::last_os_error()));
    }
    Ok(r)
}

/// The soft RLIMIT_NOFILE of this process: how many descriptors it may hold.
pub fn fd_limit() -> Result<u64, HttpError> {
    Ok(get()?.rlim_cur)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (the default soft limit of 1,024
/// would let a thousand idle connections exhaust a server); returns the new soft limit.
pub fn raise_fd_limit() -> Result<u64, HttpError> {
    let mut r = get()?;
    let want = if r.rlim_max == libc::RLIM_INFINITY {
        UNLIMITED_CAP
    } else {
        r.rlim_max
    };
    if r.rlim_cur >= want {
        return Ok(r.rlim_cur);
    }
    r.rlim_cur = want;
    // SAFETY: setrlimit reads one `rlimit` from the struct we own and pass by pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(HttpError::FdLimit(std::io::Error::last_os_error()));
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_reaches_the_hard_limit() {
        let hard = get().expect("getrlimit").rlim_max;
        let soft = raise_fd_limit().expect("raise");
        assert_eq!(fd_limit().expect("getrlimit"), soft);
        if hard != libc::RLIM_INFINITY {
            assert_eq!(soft, hard);
        }
    }
}
