//! Runs fio with the same file, size, block size and depth as our run, and reads its JSON.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::latency::RunFigures;

/// One fio job group: `numjobs` jobs, each on its own `region_bytes` slice of the target.
#[derive(Debug, Clone)]
pub struct FioJob {
    pub path: PathBuf,
    /// fio's `--rw`: randread, randwrite, write, read.
    pub rw: String,
    pub bs: usize,
    pub iodepth: usize,
    pub numjobs: usize,
    pub region_bytes: u64,
    pub runtime: Duration,
    /// Extra fio arguments, e.g. `--fdatasync=1`.
    pub extra: Vec<String>,
}

impl FioJob {
    pub fn command_line(&self) -> Vec<String> {
        let mut args = vec![
            "--name=anchor".to_string(),
            format!("--filename={}", self.path.display()),
            "--ioengine=io_uring".into(),
            "--direct=1".into(),
            format!("--rw={}", self.rw),
            format!("--bs={}", self.bs),
            format!("--iodepth={}", self.iodepth),
            format!("--numjobs={}", self.numjobs),
            format!("--size={}", self.region_bytes),
            format!("--offset_increment={}", self.region_bytes),
            "--thread".into(),
            "--lat_percentiles=1".into(),
            "--group_reporting".into(),
            "--output-format=json".into(),
        ];
        // A zero runtime means: move the region's bytes once and stop.
        if !self.runtime.is_zero() {
            args.push(format!("--runtime={}ms", self.runtime.as_millis()));
            args.push("--time_based".into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

fn children_cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs fio and returns its figures, labelled `fio`.
pub fn run_fio(job: &FioJob) -> anyhow::Result<RunFigures> {
    let args = job.command_line();
    let cpu_before = children_cpu_seconds();
    let out = Command::new("fio")
        .args(&args)
        .output()
        .context("running fio (install it with `apt-get install fio`)")?;
    let cpu = children_cpu_seconds() - cpu_before;
    if !out.status.success() {
        bail!(
            "fio {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_fio_json(&String::from_utf8_lossy(&out.stdout), job.bs, cpu)
}

/// Reads the first job group of fio's JSON output.
pub fn parse_fio_json(text: &str, bs: usize, cpu_seconds: f64) -> anyhow::Result<RunFigures> {
    // fio may print warnings before the JSON document.
    let start = text.find('{').context("fio printed no JSON")?;
    let doc: serde_json::Value = serde_json::from_str(&text[start..]).context("parsing fio JSON")?;
    let job = &doc["jobs"][0];
    let side =
        if job["write"]["total_ios"].as_u64().unwrap_or(0) > job["read"]["total_ios"].as_u64().unwrap_or(0) {
            &job["write"]
        } else {
            &job["read"]
        };
    let pct = |q: &str| side["lat_ns"]["percentile"][q].as_f64().unwrap_or(f64::NAN) / 1e3;
    let ops = side["total_ios"].as_u64().unwrap_or(0);
    let seconds = side["runtime"].as_f64().unwrap_or(0.0) / 1e3;
    let iops = side["iops"].as_f64().unwrap_or(0.0);
    Ok(RunFigures {
        label: "fio".into(),
        ops,
        seconds,
        iops,
        mb_per_s: iops * bs as f64 / 1e6,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        p999_us: pct("99.900000"),
        cpu_us_per_op: if ops == 0 {
            0.0
        } else {
            cpu_seconds * 1e6 / ops as f64
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_figures_from_fio_json() {
        let text = r#"note: a warning
{"jobs":[{"read":{"total_ios":1000,"runtime":2000,"iops":500.0,
  "lat_ns":{"percentile":{"50.000000":2000,"99.000000":9000,"99.900000":12000}}},
  "write":{"total_ios":0,"runtime":0,"iops":0.0,"lat_ns":{}}}]}"#;
        let f = parse_fio_json(text, 4096, 0.5).unwrap();
        assert_eq!(f.ops, 1000);
        assert_eq!(f.iops, 500.0);
        assert_eq!((f.p50_us, f.p99_us, f.p999_us), (2.0, 9.0, 12.0));
        assert_eq!(f.cpu_us_per_op, 500.0);
        assert!(parse_fio_json("no json", 4096, 0.0).is_err());
    }
}
