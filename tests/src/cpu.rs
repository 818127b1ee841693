//! CPU placement and accounting for benchmarks on a shared 2-CPU machine: pinning, and
//! how much CPU a thread or a CPU's softirqs really got (other processes share the CPUs,
//! so a rate per CPU-second is the comparable figure).

/// Pins the calling thread to `cpu`.
///
/// # Panics
/// When the CPU does not exist or `sched_setaffinity` fails.
pub fn pin_current_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .unwrap_or_else(|e| panic!("CPU {cpu} out of range: {e}"));
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("sched_setaffinity to CPU {cpu}: {e}"));
}

/// Thread ids of process `pid` (`/proc/PID/task`).
pub fn threads(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The thread of process `pid` whose name (`comm`, at most 15 bytes) is `name`.
pub fn thread_named(pid: u32, name: &str) -> Option<i32> {
    threads(pid).into_iter().find(|t| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
            .is_ok_and(|c| c.trim_end() == name)
    })
}

/// Time thread `tid` of process `pid` has run on a CPU, in ns (`schedstat`), 0 when the
/// thread is gone.
pub fn thread_cpu_ns(pid: u32, tid: i32) -> u64 {
    schedstat(pid, tid, 0)
}

/// Time thread `tid` of process `pid` has waited on a run queue (runnable, but another
/// task had the CPU), in ns (`schedstat`), 0 when the thread is gone.
pub fn thread_wait_ns(pid: u32, tid: i32) -> u64 {
    schedstat(pid, tid, 1)
}

fn schedstat(pid: u32, tid: i32, field: usize) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(field).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Time accounting of one CPU from `/proc/stat`, in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// Softirq time (where the kernel's receive path runs).
    pub softirq: u64,
    /// All of it.
    pub total: u64,
}

impl CpuTimes {
    /// Reads `cpu`'s line of `/proc/stat` (zeros when missing).
    pub fn read(cpu: usize) -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let key = format!("cpu{cpu} ");
        let v: Vec<u64> = stat
            .lines()
            .find(|l| l.starts_with(&key))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let total: u64 = (0..8).map(at).sum();
        CpuTimes {
            busy: total - at(3) - at(4),
            softirq: at(6),
            total,
        }
    }

    /// Seconds of one clock tick (`1 / sysconf(_SC_CLK_TCK)`).
    pub fn tick() -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        1.0 / if hz > 0 { hz as f64 } else { 100.0 }
    }
}

/// Run and run-queue wait time (ns) of every thread of process `pid`, with its name.
pub fn thread_times(pid: u32) -> Vec<(i32, String, u64, u64)> {
    threads(pid)
        .into_iter()
        .map(|t| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
                .unwrap_or_default()
                .trim_end()
                .to_string();
            (t, name, thread_cpu_ns(pid, t), thread_wait_ns(pid, t))
        })
        .collect()
}

/// What the threads of `pid` did between two [`thread_times`] snapshots taken `secs`
/// apart: `name run R% wait W%` for each thread that ran or waited at least 1%.
pub fn thread_report(
    before: &[(i32, String, u64, u64)],
    after: &[(i32, String, u64, u64)],
    secs: f64,
) -> String {
    let mut out = Vec::new();
    for (t, name, run, wait) in after {
        let (r0, w0) = before
            .iter()
            .find(|b| b.0 == *t)
            .map_or((0, 0), |b| (b.2, b.3));
        let r = (run - r0) as f64 / 1e9 / secs * 100.0;
        let w = (wait - w0) as f64 / 1e9 / secs * 100.0;
        if r >= 1.0 || w >= 1.0 {
            out.push(format!("{name} run {r:.0}% wait {w:.0}%"));
        }
    }
    out.join(", ")
}
