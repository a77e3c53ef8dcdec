//! Thin Linux shims, and loadgen's only `unsafe`: the open-files limit (for --idle), a
//! timerfd (for open-loop pacing), and the thread's timer slack.
//!
//! Why a timerfd: mio's poll timeout has millisecond resolution, so at 20,000 requests/s an
//! open loop paced by it would send bursts of 20 once a millisecond and charge each up to a
//! millisecond of lateness. A timerfd in the same poll wakes the loop to the nanosecond
//! (within the timer slack, which is set to 1 ns for the loop threads) without spinning.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Makes sure `need` file descriptors can be open: raises the soft RLIMIT_NOFILE up to the
/// hard limit if it is lower.
pub fn ensure_nofile(need: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            io::Error::last_os_error()
        ));
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max < need {
        return Err(format!(
            "this run needs about {need} open files but the hard limit is {}; raise it (ulimit -Hn, \
             as root) or use fewer --idle/--connections",
            lim.rlim_max
        ));
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!(
            "cannot raise the open-files limit to {} ({}); run `ulimit -n {}` first",
            lim.rlim_max,
            io::Error::last_os_error(),
            need
        ));
    }
    Ok(())
}

/// Asks for timer wake-ups as precise as the kernel can give (the default slack is 50 µs)
/// for the calling thread. Best effort: pacing is only a little coarser without it.
pub fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// A non-blocking CLOCK_MONOTONIC timerfd.
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes two integers and returns a new descriptor or -1.
        let fd =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(TimerFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once, `after` from now (a zero delay is rounded up to 1 ns: zero would disarm).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: we pass our own descriptor, a valid itimerspec and no old-value pointer.
        let r = unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r != 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Consumes a pending expiry so the (edge-triggered) poll can report the next one.
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a buffer of 8 bytes we own. EAGAIN (nothing
        // pending) is fine and ignored.
        unsafe {
            libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
        }
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn timerfd_fires_after_its_delay() {
        let t = TimerFd::new().expect("timerfd");
        let start = Instant::now();
        t.arm(Duration::from_millis(2)).expect("arm");
        let mut pfd = libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        assert_eq!(n, 1);
        assert!(start.elapsed() >= Duration::from_millis(2));
        t.clear();
    }

    #[test]
    fn nofile_within_the_soft_limit_is_fine() {
        assert_eq!(ensure_nofile(16), Ok(()));
    }
}
