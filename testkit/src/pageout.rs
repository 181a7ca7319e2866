//! The one page-out helper: pushes another process's anonymous memory to swap with
//! `process_madvise(MADV_PAGEOUT)` (needs root and some swap: see [`crate::SwapGuard`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::Error;

/// Pages out the anonymous, writable ranges (and the heap) of `pid`; bytes the kernel
/// reports as advised.
pub fn page_out(pid: u32) -> Result<usize, Error> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(Error::io(format!("reading /proc/{pid}/maps")))?;
    let pidfd = pidfd_open(pid)?;
    Ok(anonymous_ranges(&maps)
        .map(|(start, end)| advise_pageout(&pidfd, start, end))
        .sum())
}

/// `(start, end)` of every writable range without a file, or the heap, of a maps text.
fn anonymous_ranges(maps: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    maps.lines().filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let anon = f.len() < 6 || f[5] == "[heap]";
        if !anon || !f.get(1).is_some_and(|p| p.starts_with("rw")) {
            return None;
        }
        let (a, b) = f.first()?.split_once('-')?;
        Some((
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        ))
    })
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, Error> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Error::io(format!("pidfd_open({pid})"))(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a descriptor we just opened and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `process_madvise(MADV_PAGEOUT)` of one range; bytes advised (0 on error: a range can
/// vanish or be unevictable, the others still count).
fn advise_pageout(pidfd: &OwnedFd, start: u64, end: u64) -> usize {
    let iov = libc::iovec {
        iov_base: start as *mut libc::c_void,
        iov_len: (end - start) as usize,
    };
    // SAFETY: one valid iovec, read by the kernel during the call; its address is the
    // target's, which the kernel only uses as a range in that process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            pidfd.as_raw_fd(),
            &iov,
            1,
            libc::MADV_PAGEOUT,
            0,
        )
    };
    usize::try_from(r).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_anonymous_writable_ranges_and_the_heap() {
        let maps = "\
55d0c0000000-55d0c0010000 r--p 00000000 08:01 1234 /usr/bin/redis-check-rdb
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000200000-7f0000300000 rw-p 00001000 08:01 99 /usr/lib/libc.so.6
7f0000400000-7f0000500000 r--p 00000000 00:00 0
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
";
        let ranges: Vec<(u64, u64)> = anonymous_ranges(maps).collect();
        assert_eq!(
            ranges,
            [
                (0x55d0c1000000, 0x55d0c2000000),
                (0x7f0000000000, 0x7f0000100000)
            ]
        );
    }
}
