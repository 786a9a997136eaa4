//! Latency and throughput figures of one run, from an HDR histogram.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Histogram of latencies in nanoseconds, 1 ns to 100 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static bounds are valid")
}

/// What one side of a comparison achieved.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub label: String,
    pub ops: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// CPU time (user + system) per operation, microseconds.
    pub cpu_us_per_op: f64,
}

impl RunFigures {
    pub fn from_histogram(
        label: &str,
        h: &Histogram<u64>,
        seconds: f64,
        bytes_per_op: usize,
        cpu_seconds: f64,
    ) -> Self {
        let ops = h.len();
        let iops = ops as f64 / seconds;
        RunFigures {
            label: label.to_string(),
            ops,
            seconds,
            iops,
            mb_per_s: iops * bytes_per_op as f64 / 1e6,
            p50_us: h.value_at_quantile(0.50) as f64 / 1e3,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
            cpu_us_per_op: if ops == 0 {
                0.0
            } else {
                cpu_seconds * 1e6 / ops as f64
            },
        }
    }
}

/// CPU seconds (user + system) this process has used so far.
pub fn process_cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Prints figures as a table, with each row's ratio to the first (the anchor) if asked.
pub fn print_table(rows: &[RunFigures], ratio_to_first: bool) {
    println!(
        "{:<28} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "run", "IOPS", "MB/s", "p50 us", "p99 us", "p99.9 us", "CPU us/op"
    );
    for r in rows {
        println!(
            "{:<28} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.2}",
            r.label, r.iops, r.mb_per_s, r.p50_us, r.p99_us, r.p999_us, r.cpu_us_per_op
        );
    }
    if ratio_to_first && rows.len() > 1 {
        let a = &rows[0];
        for r in &rows[1..] {
            println!(
                "ratio {} / {}: IOPS {:.3}, p50 {:.3}, p99 {:.3}, p99.9 {:.3}",
                r.label,
                a.label,
                r.iops / a.iops,
                r.p50_us / a.p50_us,
                r.p99_us / a.p99_us,
                r.p999_us / a.p999_us
            );
        }
    }
}
