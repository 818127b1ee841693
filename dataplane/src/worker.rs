//! Workers: a graph polled on its own thread, configured by commands between polls.
//!
//! The packet path takes no lock: the worker thread owns the [`Graph`]; other threads send
//! it closures ([`Worker::exec`]) that it runs between two polls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::graph::Graph;

type Command = Box<dyn FnOnce(&mut Graph) + Send>;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Thread name (`"pg-worker-0"` style), shown by `top -H` and in logs.
    pub name: String,
    /// CPU to pin the thread to (`sched_setaffinity`), or `None` to let the kernel choose.
    pub cpu: Option<usize>,
    /// Empty poll rounds spent spinning before the worker starts sleeping.
    pub spin_rounds: u32,
    /// Longest sleep between two empty poll rounds (the sleep doubles from 1 µs up to it).
    /// `Duration::ZERO` makes the worker busy-poll, as DPDK does.
    pub max_idle_sleep: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: "pg-worker".into(),
            cpu: None,
            spin_rounds: 256,
            max_idle_sleep: Duration::from_micros(500),
        }
    }
}

/// Errors of [`Worker`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker thread is gone (it panicked or was stopped).
    #[error("worker '{0}' has stopped")]
    Stopped(String),
    /// The thread could not be created.
    #[error("cannot start worker thread '{name}': {source}")]
    Spawn {
        /// Thread name.
        name: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running worker thread that owns a graph.
pub struct Worker {
    name: String,
    tx: Sender<Command>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Graph>>,
}

impl Worker {
    /// Starts a thread that polls `graph` until [`Worker::stop`].
    ///
    /// # Errors
    /// [`WorkerError::Spawn`] when the thread cannot be created.
    pub fn spawn(graph: Graph, cfg: WorkerConfig) -> Result<Worker, WorkerError> {
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let name = cfg.name.clone();
        let thread = std::thread::Builder::new()
            .name(cfg.name.clone())
            .spawn(move || run(graph, cfg, rx, stop2))
            .map_err(|source| WorkerError::Spawn {
                name: name.clone(),
                source,
            })?;
        Ok(Worker {
            name,
            tx,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the worker's graph between two polls and returns its result.
    /// Blocks until the worker ran it.
    ///
    /// # Errors
    /// [`WorkerError::Stopped`] when the worker thread is gone.
    pub fn exec<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Graph) -> R + Send + 'static,
    ) -> Result<R, WorkerError> {
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        let cmd: Command = Box::new(move |g| {
            let _ = rtx.send(f(g));
        });
        self.tx
            .send(cmd)
            .map_err(|_| WorkerError::Stopped(self.name.clone()))?;
        rrx.recv()
            .map_err(|_| WorkerError::Stopped(self.name.clone()))
    }

    /// Stops the thread and gives the graph back.
    ///
    /// # Errors
    /// [`WorkerError::Stopped`] when the thread panicked.
    pub fn stop(mut self) -> Result<Graph, WorkerError> {
        self.stop.store(true, Ordering::Release);
        let t = self.thread.take().expect("thread present until stop");
        t.join()
            .map_err(|_| WorkerError::Stopped(self.name.clone()))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if let Err(e) = set.set(cpu) {
        tracing::warn!(cpu, "cannot pin worker: {e}");
        return;
    }
    if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        tracing::warn!(cpu, "cannot pin worker: {e}");
    }
}

fn run(mut graph: Graph, cfg: WorkerConfig, rx: Receiver<Command>, stop: Arc<AtomicBool>) -> Graph {
    if let Some(cpu) = cfg.cpu {
        pin(cpu);
    }
    tracing::info!(worker = %cfg.name, graph = graph.name(), cpu = ?cfg.cpu, "worker started");
    let mut idle = 0u32;
    let mut sleep = Duration::from_micros(1);
    let mut last_err: Option<String> = None;
    while !stop.load(Ordering::Acquire) {
        loop {
            match rx.try_recv() {
                Ok(cmd) => cmd(&mut graph),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return graph,
            }
        }
        let n = match graph.poll() {
            Ok(n) => n,
            Err(e) => {
                let msg = e.to_string();
                if last_err.as_deref() != Some(&msg) {
                    tracing::warn!(worker = %cfg.name, "{msg}");
                    last_err = Some(msg);
                }
                1
            }
        };
        if n > 0 {
            idle = 0;
            sleep = Duration::from_micros(1);
        } else if cfg.max_idle_sleep > Duration::ZERO {
            idle += 1;
            if idle > cfg.spin_rounds {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(cfg.max_idle_sleep);
            } else {
                std::hint::spin_loop();
            }
        }
    }
    tracing::info!(worker = %cfg.name, "worker stopped");
    graph
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bricks::{Collect, PacketGen};
    use crate::{Pool, PoolConfig, Side};

    #[test]
    fn worker_runs_commands_between_polls_and_returns_the_graph() {
        let pool = Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .unwrap();
        let mut g = Graph::new("w");
        g.add(
            "gen",
            PacketGen::new(pool.clone(), vec![vec![1u8; 60]], 100),
        )
        .unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link("gen", "sink").unwrap();
        let w = Worker::spawn(
            g,
            WorkerConfig {
                cpu: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        // Wait until all 100 packets went through, reading counters via commands.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = w
                .exec(|g| g.get::<Collect>("sink").unwrap().packets(Side::West))
                .unwrap();
            if n == 100 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {n} packets arrived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A configuration command: give the generator more packets.
        w.exec(|g| g.get_mut::<PacketGen>("gen").unwrap().add_count(28))
            .unwrap();
        let g = w.stop().unwrap();
        // Packets may still be in flight when stop lands: the worker finishes its round.
        let total = g.get::<Collect>("sink").unwrap().packets(Side::West);
        assert!((100..=128).contains(&total), "{total}");
        assert_eq!(g.stats("gen").unwrap().east.tx_packets, total);
    }
}
