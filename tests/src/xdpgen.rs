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

use butterfly_ebpf::LoadGen;

use crate::cpu::pin_current_thread;
use crate::netns::Netns;

/// Frames per BPF_PROG_TEST_RUN call (one call lasts seconds; SIGUSR1 ends it early).
const REPEAT: u32 = 200_000_000;
/// Frames per kernel batch (the kernel's maximum).
const BATCH: u32 = 256;

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
}

impl Generator {
    /// Starts sending `frame` out of interface `ifname` — in namespace `ns`, or in the
    /// calling thread's namespace when `None` — from a thread pinned to `cpu`, until
    /// stopped. Call [`install_stop_signal`] once before.
    ///
    /// # Panics
    /// When the thread cannot start.
    pub fn start(ns: Option<&Netns>, ifname: &str, frame: Vec<u8>, cpu: usize) -> Generator {
        install_stop_signal();
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU64::new(0));
        let kernel_tid = Arc::new(AtomicI32::new(0));
        let error = Arc::new(Mutex::new(None));
        let (s2, t2, k2, e2) = (stop.clone(), tid.clone(), kernel_tid.clone(), error.clone());
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
                let lg = match LoadGen::load() {
                    Ok(l) => l,
                    Err(e) => return fail(e.to_string()),
                };
                while !s2.load(Ordering::Acquire) {
                    match lg.run(idx, &frame, REPEAT, BATCH) {
                        Ok(_) => {}
                        // EINTR: stop() interrupted the call. Anything else is a failure.
                        Err(_) if s2.load(Ordering::Acquire) => {}
                        Err(e) if e.to_string().contains("Interrupted") => {}
                        Err(e) => return fail(e.to_string()),
                    }
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
        }
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

impl Drop for Generator {
    fn drop(&mut self) {
        self.halt();
    }
}
