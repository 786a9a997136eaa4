//! The live progress line: operations per second and p99 of the last second, on stderr
//! when it is a terminal.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::latency::new_histogram;

pub struct Progress {
    ops: AtomicU64,
    interval: Mutex<Histogram<u64>>,
    done: AtomicBool,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            ops: AtomicU64::new(0),
            interval: Mutex::new(new_histogram()),
            done: AtomicBool::new(false),
        })
    }

    pub fn record(&self, ns: u64) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.interval.lock() {
            h.record(ns).ok();
        }
    }

    /// Prints a line every second until `finish`.
    pub fn start(self: &Arc<Self>, label: String) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut last_ops = 0;
            let mut last = Instant::now();
            while !me.done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() < Duration::from_secs(1) {
                    continue;
                }
                let ops = me.ops.load(Ordering::Relaxed);
                let rate = (ops - last_ops) as f64 / last.elapsed().as_secs_f64();
                let p99 = me
                    .interval
                    .lock()
                    .map(|mut h| {
                        let v = h.value_at_quantile(0.99);
                        h.reset();
                        v
                    })
                    .unwrap_or(0);
                eprint!(
                    "\r{label}  {:>4.0}s  {:>12.0} ops/s  p99 {:>9.1} us   ",
                    started.elapsed().as_secs_f64(),
                    rate,
                    p99 as f64 / 1e3
                );
                std::io::stderr().flush().ok();
                last_ops = ops;
                last = Instant::now();
            }
            eprint!("\r{:80}\r", "");
        })
    }

    pub fn finish(&self, handle: std::thread::JoinHandle<()>) {
        self.done.store(true, Ordering::Relaxed);
        handle.join().ok();
    }
}

/// Whether stderr is a terminal (the progress line is for people, not logs).
pub fn stderr_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
}
