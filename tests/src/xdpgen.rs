//! The XDP load generator for benchmarks: BPF_PROG_TEST_RUN in live-frames mode of an
//! XDP_TX program ([`butterfly_ebpf::LoadGen`]) on one end of a veth pair, so every
//! repetition pushes a test frame into the peer (ENVIRONMENT.md: ~8–10 Mpps of 64-byte
//! frames on this machine, the only way to offer more than ~0.5 Mpps).
//!
//! The generator runs on its own thread pinned to one CPU, inside a network namespace,
//! and makes long BPF_PROG_TEST_RUN calls (each call costs ~25 ms of setup on 6.18);
//! stopping interrupts the running call with SIGUSR1 (EINTR). veth runs the receiving
//! end's NAPI on the sending CPU, so the peer's XDP program (and, without RPS, the whole
//! receive path behind it) runs on the generator's CPU: say where things run when you
//! report a figure.
//!
//! Paced mode ([`Generator::start_paced`], [`Pace`]): short calls of `frames` frames,
//! each followed by a sleep of `pause`. A busy generator sharing its CPU with another
//! busy thread (a poll-mode consumer) runs in turns of a scheduler tick (4 ms at 250 Hz);
//! the sleeps hand the CPU over at sub-millisecond granularity instead, so both run.
//! Every BPF_PROG_TEST_RUN of an XDP program adds the program to the kernel's XDP
//! dispatcher and removes it at the end, and each change waits for an RCU grace period
//! (`bpf_dispatcher_change_prog` → `synchronize_rcu`: tens of milliseconds on a loaded
//! machine, under a global mutex): short calls would spend most of their time there. The
//! paced generator therefore keeps its program in the dispatcher for its whole life by
//! attaching it in generic (skb) mode to a device of its own, down, that carries no
//! traffic (veth `xgkaTID`–`xgkbTID` in the generator's namespace, deleted when it
//! stops); the
//! dispatcher then only counts users and the calls cost their frames.
//!
//! ```no_run
//! use butterfly_tests::xdpgen::{Generator, install_stop_signal};
//! # let ns = butterfly_tests::Netns::new("doc");
//! install_stop_signal();
//! let frame = vec![0u8; 64]; // a real frame, with the peer's MAC as destination
//! let g = Generator::start(Some(&ns), "gen0", frame, 0);
//! std::thread::sleep(std::time::Duration::from_secs(1));
//! g.stop().expect("the generator ran");
//! ```

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use butterfly_ebpf::{LOADGEN_OBJECT, LoadGen};

use crate::cpu::pin_current_thread;
use crate::netns::Netns;

/// Frames per BPF_PROG_TEST_RUN call (one call lasts seconds; SIGUSR1 ends it early).
const REPEAT: u32 = 200_000_000;
/// Frames per kernel batch (the kernel's maximum).
const BATCH: u32 = 256;

/// The pattern of a paced generator: BPF_PROG_TEST_RUN calls of `frames` frames (in
/// batches of up to 256), each followed by a sleep of `pause` (timer slack 1 ns). The
/// offered rate is at most `frames / (call time + pause)`: measure it at the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Frames per call, 1..=2^32-1 (a few thousand: one call then lasts tens to hundreds
    /// of microseconds).
    pub frames: u32,
    /// Sleep after each call (e.g. 100–500 µs; zero: only yield the CPU).
    pub pause: Duration,
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// Installs a no-op SIGUSR1 handler without SA_RESTART, so that SIGUSR1 interrupts a
/// running BPF_PROG_TEST_RUN with EINTR ([`Generator::stop`] relies on it). Idempotent.
pub fn install_stop_signal() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe); the sigaction
        // struct is fully initialised (zeroed, then the handler and an empty mask).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
    });
}

/// A running load generator; stopped (and its thread joined) on drop.
#[derive(Debug)]
pub struct Generator {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    tid: Arc<AtomicU64>,
    kernel_tid: Arc<AtomicI32>,
    error: Arc<Mutex<Option<String>>>,
    sent: Arc<AtomicU64>,
}

impl Generator {
    /// Starts sending `frame` out of interface `ifname` — in namespace `ns`, or in the
    /// calling thread's namespace when `None` — from a thread pinned to `cpu`, until
    /// stopped. Call [`install_stop_signal`] once before.
    ///
    /// # Panics
    /// When the thread cannot start.
    pub fn start(ns: Option<&Netns>, ifname: &str, frame: Vec<u8>, cpu: usize) -> Generator {
        Generator::start_paced(ns, ifname, frame, cpu, None)
    }

    /// [`Generator::start`], paced by `pace` when `Some` (see [`Pace`]), as fast as it
    /// goes when `None`.
    ///
    /// # Panics
    /// When the thread cannot start.
    pub fn start_paced(
        ns: Option<&Netns>,
        ifname: &str,
        frame: Vec<u8>,
        cpu: usize,
        pace: Option<Pace>,
    ) -> Generator {
        install_stop_signal();
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU64::new(0));
        let kernel_tid = Arc::new(AtomicI32::new(0));
        let error = Arc::new(Mutex::new(None));
        let sent = Arc::new(AtomicU64::new(0));
        let (s2, t2, k2, e2) = (stop.clone(), tid.clone(), kernel_tid.clone(), error.clone());
        let n2 = sent.clone();
        let ns_name = ns.map(|n| n.name().to_string());
        let ifname = ifname.to_string();
        let thread = std::thread::Builder::new()
            .name("xdpgen".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                k2.store(unsafe { libc::gettid() }, Ordering::Release);
                // SAFETY: pthread_self has no preconditions.
                t2.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
                let fail = |m: String| {
                    *e2.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
                };
                if let Some(ns) = &ns_name {
                    let f = match std::fs::File::open(format!("/run/netns/{ns}")) {
                        Ok(f) => f,
                        Err(e) => return fail(format!("netns {ns}: {e}")),
                    };
                    if let Err(e) = nix::sched::setns(
                        std::os::fd::AsFd::as_fd(&f),
                        nix::sched::CloneFlags::CLONE_NEWNET,
                    ) {
                        return fail(format!("setns {ns}: {e}"));
                    }
                }
                pin_current_thread(cpu);
                let idx = match butterfly_ebpf::ifindex(&ifname) {
                    Ok(i) => i,
                    Err(e) => return fail(e.to_string()),
                };
                let result = match pace {
                    None => unpaced(idx, &frame, &s2, &n2),
                    Some(p) => paced(idx, &frame, p, &s2, &n2),
                };
                if let Err(e) = result {
                    fail(e);
                }
            })
            .expect("spawning the generator thread");
        while tid.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        Generator {
            stop,
            thread: Some(thread),
            tid,
            kernel_tid,
            error,
            sent,
        }
    }

    /// Frames of the calls that completed so far (a call in progress is not counted;
    /// frames the receiver dropped are): with [`Pace`] (short calls), divide by the
    /// elapsed time for the rate the generator offered.
    pub fn frames_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The generator thread's id (Linux tid).
    pub fn tid(&self) -> i32 {
        self.kernel_tid.load(Ordering::Acquire)
    }

    /// The error that ended the generator early, if any (bad interface, BPF refused).
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops and joins the thread; returns the error that stopped it early, if any.
    ///
    /// # Errors
    /// The generator's error message.
    pub fn stop(mut self) -> Result<(), String> {
        self.halt();
        match self.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                // SAFETY: the thread is alive (not finished), so its pthread_t is valid;
                // SIGUSR1 has a no-op handler (install_stop_signal).
                unsafe {
                    libc::pthread_kill(
                        self.tid.load(Ordering::Acquire) as libc::pthread_t,
                        libc::SIGUSR1,
                    )
                };
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}

/// The generator's loop without pace: long calls until stopped.
fn unpaced(idx: u32, frame: &[u8], stop: &AtomicBool, sent: &AtomicU64) -> Result<(), String> {
    let lg = LoadGen::load().map_err(|e| e.to_string())?;
    while !stop.load(Ordering::Acquire) {
        match lg.run(idx, frame, REPEAT, BATCH) {
            Ok(_) => {
                sent.fetch_add(u64::from(REPEAT), Ordering::Relaxed);
            }
            // EINTR: stop() interrupted the call. Anything else is a failure.
            Err(_) if stop.load(Ordering::Acquire) => {}
            Err(e) if e.to_string().contains("Interrupted") => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// A veth pair (down, no traffic: this kernel may have no `dummy` driver) in the calling
/// thread's namespace; deleted on drop.
struct KeepAliveDev(String);

impl KeepAliveDev {
    fn new() -> Result<KeepAliveDev, String> {
        // SAFETY: gettid has no preconditions.
        let name = format!("xgka{}", unsafe { libc::gettid() });
        // A child forked from this thread starts in this thread's network namespace.
        let out = std::process::Command::new("ip")
            .args(["link", "add", &name, "type", "veth", "peer", "name"])
            .arg(name.replace("xgka", "xgkb"))
            .output()
            .map_err(|e| format!("ip link add {name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip link add {name} type veth: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(KeepAliveDev(name))
    }
}

impl Drop for KeepAliveDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

/// The paced loop: its own copy of the generator program, kept in the XDP dispatcher by
/// a generic-mode attachment to an idle veth (see the module doc), then calls of
/// `pace.frames` frames separated by `pace.pause`.
fn paced(
    idx: u32,
    frame: &[u8],
    pace: Pace,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<(), String> {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long (1 ns) and affects only this
    // thread's timers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut ebpf = aya::Ebpf::load(LOADGEN_OBJECT).map_err(|e| format!("loading: {e}"))?;
    let prog: &mut Xdp = ebpf
        .program_mut("butterfly_loadgen")
        .ok_or("no program butterfly_loadgen")?
        .try_into()
        .map_err(|e| format!("butterfly_loadgen: {e}"))?;
    prog.load().map_err(|e| format!("loading: {e:?}"))?;
    let dev = KeepAliveDev::new()?;
    let dev_idx = butterfly_ebpf::ifindex(&dev.0).map_err(|e| e.to_string())?;
    let link = prog
        .attach_to_if_index(dev_idx, XdpMode::Skb)
        .map_err(|e| format!("attaching to {} (generic mode): {e}", dev.0))?;
    let repeat = pace.frames.max(1);
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex (u32 each); data_end is the frame length.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&idx.to_ne_bytes());
    let mut result = Ok(());
    while !stop.load(Ordering::Acquire) {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(BATCH.min(repeat)),
            ..TestRunOptions::new()
        });
        match r {
            Ok(_) => {
                sent.fetch_add(u64::from(repeat), Ordering::Relaxed);
            }
            Err(_) if stop.load(Ordering::Acquire) => {}
            Err(e) => {
                result = Err(format!("BPF_PROG_TEST_RUN live frames: {e:?}"));
                break;
            }
        }
        if pace.pause.is_zero() {
            std::thread::yield_now();
        } else {
            std::thread::sleep(pace.pause);
        }
    }
    let _ = prog.detach(link);
    drop(dev);
    result
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.halt();
    }
}
