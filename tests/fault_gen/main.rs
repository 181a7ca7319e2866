//! fault-gen: a process whose page faults are known exactly, for testing the tracer.
//!
//! Steps, each on a region of its own anonymous mapping (THP off unless asked):
//! 1. touch all `--pages` pages (one write each)             -> `pages` first touches
//! 2. fork; while the child sleeps, write the first `--cow`  -> `cow` copies in the parent
//! 3. the child exits; write the next `--reuse` pages        -> `reuse` write-protect reuses
//! 4. push the first `--swap` pages out with MADV_PAGEOUT, check with /proc/self/pagemap
//!    that every one is in swap, then read each back        -> `swap` swap-ins
//! 5. with `--thp N`, touch N huge pages of a MADV_HUGEPAGE region
//!
//! It prints `region START END` (hex, end exclusive) before touching anything, then one
//! `step NAME COUNT` line as each step completes, and exits non-zero with a message if a
//! step cannot be done exactly (e.g. no swap).
//!
//! `--loop-seconds S` is a benchmark load instead: for S seconds, in `--workers` processes,
//! either map, touch and unmap the region (`--loop-mode touch`: first touches) or drop the
//! pages and read each back (`--loop-mode zero`: zero-page maps, the cheapest fault the
//! kernel has, classified `other`). It prints `faults N`, one per page accessed.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    ptr,
    time::{Duration, Instant},
};

use clap::Parser;

const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;

#[derive(Parser, Debug)]
#[command(about = "Generates page faults of exactly known kinds and counts")]
struct Args {
    /// Pages to map and touch.
    #[arg(long, default_value_t = 1024)]
    pages: usize,
    /// Pages the parent writes while the fork child is alive (copy-on-write copies).
    #[arg(long, default_value_t = 0)]
    cow: usize,
    /// Pages the parent writes after the child exited (write-protect reuses).
    #[arg(long, default_value_t = 0)]
    reuse: usize,
    /// Pages pushed to swap and read back (swap-ins).
    #[arg(long, default_value_t = 0)]
    swap: usize,
    /// Huge pages to touch in a separate MADV_HUGEPAGE region.
    #[arg(long, default_value_t = 0)]
    thp: usize,
    /// Print `ready PID`, then wait for SIGUSR1 before step 1 (for attaching with --pid).
    #[arg(long)]
    wait_signal: bool,
    /// After step 1, print `touched` and wait for SIGUSR1 again (a test acts on the
    /// tracer while the faults are known to be done).
    #[arg(long)]
    pause_after_touch: bool,
    /// Skip the fork (steps 2 and 3).
    #[arg(long)]
    no_fork: bool,
    /// Benchmark mode: generate faults on `pages` pages for this many seconds.
    #[arg(long)]
    loop_seconds: Option<f64>,
    /// Benchmark fault kind: `touch` (first touch) or `zero` (zero-page read).
    #[arg(long, default_value = "zero", value_parser = ["touch", "zero"])]
    loop_mode: String,
    /// Benchmark processes.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn die(msg: &str) -> ! {
    eprintln!("fault-gen: {msg}");
    std::process::exit(2)
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: anonymous private mapping, no file, checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        die(&format!(
            "mmap of {len} bytes failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    p.cast()
}

fn advise(p: *mut u8, len: usize, advice: libc::c_int, what: &str) {
    // SAFETY: range inside a mapping we own.
    if unsafe { libc::madvise(p.cast(), len, advice) } != 0 {
        die(&format!(
            "madvise({what}) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
}

fn write_pages(base: *mut u8, from: usize, to: usize, value: u8) {
    for i in from..to {
        // SAFETY: i < pages, inside the mapping; volatile so every write happens.
        unsafe { ptr::write_volatile(base.add(i * PAGE), value) };
    }
}

fn step(name: &str, count: usize) {
    println!("step {name} {count}");
    let _ = std::io::stdout().flush();
}

/// Pages of [base, base+n pages) that /proc/self/pagemap shows as swapped (bit 62).
fn swapped_pages(pagemap: &File, base: *mut u8, n: usize) -> usize {
    let mut buf = vec![0u8; n * 8];
    let off = (base as usize / PAGE * 8) as u64;
    if pagemap.read_exact_at(&mut buf, off).is_err() {
        die("cannot read /proc/self/pagemap");
    }
    buf.chunks_exact(8)
        .filter(|c| u64::from_le_bytes((*c).try_into().unwrap_or([0; 8])) & (1 << 62) != 0)
        .count()
}

fn swap_total_kb() -> u64 {
    let mut s = String::new();
    let _ = File::open("/proc/meminfo").and_then(|mut f| f.read_to_string(&mut s));
    s.lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn bench_worker(args: &Args, seconds: f64) -> u64 {
    let len = args.pages * PAGE;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut faults = 0u64;
    if args.loop_mode == "touch" {
        while Instant::now() < deadline {
            let base = map(len);
            advise(base, len, libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE");
            write_pages(base, 0, args.pages, 1);
            faults += args.pages as u64;
            // SAFETY: unmapping exactly what we mapped.
            unsafe { libc::munmap(base.cast(), len) };
        }
        return faults;
    }
    let base = map(len);
    advise(base, len, libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE");
    let mut sum = 0u64;
    while Instant::now() < deadline {
        // Dropping the pages and reading each one back: every read maps the shared zero
        // page, the cheapest fault there is (no allocation, no zeroing, no copy).
        advise(base, len, libc::MADV_DONTNEED, "MADV_DONTNEED");
        for i in 0..args.pages {
            // SAFETY: inside the mapping; volatile so each page is really read.
            sum += u64::from(unsafe { ptr::read_volatile(base.add(i * PAGE)) });
        }
        faults += args.pages as u64;
    }
    std::hint::black_box(sum);
    faults
}

fn bench(args: &Args, seconds: f64) {
    let mut pipes = Vec::new();
    for _ in 1..args.workers.max(1) {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid 2-int array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            die("pipe failed");
        }
        // SAFETY: single-threaded at this point; the child runs the loop and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            die("fork failed");
        }
        if pid == 0 {
            let n = bench_worker(args, seconds);
            // SAFETY: valid fd and buffer.
            unsafe {
                libc::write(fds[1], n.to_le_bytes().as_ptr().cast(), 8);
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        pipes.push((pid, fds[0]));
    }
    let mut faults = bench_worker(args, seconds);
    for (pid, fd) in pipes {
        let mut b = [0u8; 8];
        // SAFETY: valid fd and buffer; then reap the worker.
        unsafe {
            libc::read(fd, b.as_mut_ptr().cast(), 8);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        faults += u64::from_le_bytes(b);
    }
    println!("faults {faults}");
}

fn wait_for_usr1() {
    // SAFETY: plain signal-mask manipulation on this single thread, then sigwait.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, ptr::null_mut());
        println!("ready {}", libc::getpid());
        let _ = std::io::stdout().flush();
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

fn main() {
    let args = Args::parse();
    if let Some(s) = args.loop_seconds {
        bench(&args, s);
        return;
    }
    if args.cow + args.reuse > args.pages || args.swap > args.pages {
        die("--cow + --reuse and --swap must not exceed --pages");
    }
    println!(
        "plan pages={} cow={} reuse={} swap={} thp={} fork={}",
        args.pages, args.cow, args.reuse, args.swap, args.thp, !args.no_fork
    );
    if args.wait_signal {
        wait_for_usr1();
    }
    let len = args.pages * PAGE;
    let base = map(len);
    // Keep every fault 4 KiB so counts are exact.
    advise(base, len, libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE");
    println!("region {:#x} {:#x}", base as usize, base as usize + len);
    let _ = std::io::stdout().flush();

    write_pages(base, 0, args.pages, 1);
    step("first_touch", args.pages);
    if args.pause_after_touch {
        println!("touched");
        wait_for_usr1();
    }

    if !args.no_fork {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid 2-int array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            die("pipe failed");
        }
        // SAFETY: single-threaded; the child only calls read and _exit.
        let child = unsafe { libc::fork() };
        if child < 0 {
            die("fork failed");
        }
        if child == 0 {
            let mut b = [0u8; 1];
            // SAFETY: valid fd and buffer; async-signal-safe calls only.
            unsafe {
                libc::close(fds[1]);
                libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        println!("child {child}");
        write_pages(base, 0, args.cow, 2);
        step("cow_copy", args.cow);
        // SAFETY: closing our write end wakes the child with EOF; then reap it.
        unsafe {
            libc::close(fds[1]);
            libc::close(fds[0]);
            let mut status = 0;
            libc::waitpid(child, &mut status, 0);
        }
        write_pages(base, args.cow, args.cow + args.reuse, 3);
        step("wp_reuse", args.reuse);
    }

    if args.swap > 0 {
        if swap_total_kb() == 0 {
            die("--swap needs swap space and this machine has none (swapon a file first)");
        }
        let mut pagemap =
            File::open("/proc/self/pagemap").unwrap_or_else(|_| die("cannot open pagemap"));
        let _ = pagemap.seek(SeekFrom::Start(0));
        let swap_len = args.swap * PAGE;
        let mut swapped = 0;
        for _ in 0..20 {
            advise(base, swap_len, libc::MADV_PAGEOUT, "MADV_PAGEOUT");
            swapped = swapped_pages(&pagemap, base, args.swap);
            if swapped == args.swap {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if swapped != args.swap {
            die(&format!(
                "only {swapped} of {} pages reached swap",
                args.swap
            ));
        }
        println!("swapped {swapped}");
        let mut sum = 0u64;
        for i in 0..args.swap {
            // SAFETY: inside the mapping; volatile so each page is really read.
            sum += u64::from(unsafe { ptr::read_volatile(base.add(i * PAGE)) });
        }
        step("swap_in", args.swap);
        println!("checksum {sum}");
    }

    if args.thp > 0 {
        let len = (args.thp + 1) * HUGE;
        let raw = map(len);
        let aligned = ((raw as usize + HUGE - 1) & !(HUGE - 1)) as *mut u8;
        advise(
            aligned,
            args.thp * HUGE,
            libc::MADV_HUGEPAGE,
            "MADV_HUGEPAGE",
        );
        println!(
            "thp_region {:#x} {:#x}",
            aligned as usize,
            aligned as usize + args.thp * HUGE
        );
        for i in 0..args.thp {
            // SAFETY: inside the aligned part of the mapping.
            unsafe { ptr::write_volatile(aligned.add(i * HUGE), 1) };
        }
        step("thp", args.thp);
    }
    println!("done");
}
