//! `redis-benchmark://host:port`: runs Redis's own redis-benchmark with the workload's
//! connections, pipeline depth and value size, as the check that our generator is not the
//! bottleneck of a Redis comparison.

use std::process::Command;
use std::time::Instant;

use crate::latency::RunFigures;
use crate::load::workload::{KeyDist, ValueSizes};
use crate::load::{LoadFigures, LoadSpec};

fn host_port(addr: &str) -> anyhow::Result<(&str, &str)> {
    addr.rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("redis-benchmark://{addr} needs host:port"))
}

fn test_name(spec: &LoadSpec) -> anyhow::Result<&'static str> {
    let m = &spec.mix;
    anyhow::ensure!(
        matches!(spec.sizes, ValueSizes::Fixed(_)) && spec.dist == KeyDist::Uniform && spec.rate.is_none(),
        "redis-benchmark runs only closed-loop uniform workloads with a fixed value size"
    );
    match (m.get > 0, m.put > 0, m.del > 0) {
        (true, false, false) => Ok("get"),
        (false, true, false) => Ok("set"),
        _ => anyhow::bail!("redis-benchmark runs only a pure get or a pure put mix"),
    }
}

fn base(spec: &LoadSpec, addr: &str) -> anyhow::Result<Command> {
    let (host, port) = host_port(addr)?;
    let mut c = Command::new("taskset");
    c.arg("-c")
        .arg(
            spec.cores
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("redis-benchmark")
        .args(["-h", host, "-p", port])
        .args(["-c", &spec.connections.to_string()])
        .args(["-P", &spec.pipeline.to_string()])
        .args(["-d", &spec.sizes.max().to_string()])
        .args(["-r", &spec.keys.to_string()])
        .args(["--threads", &spec.cores.len().to_string()]);
    Ok(c)
}

/// Writes the keys redis-benchmark will read (its own key names, `key:__rand_int__`).
pub fn preload(spec: &LoadSpec, addr: &str) -> anyhow::Result<()> {
    let out = base(spec, addr)?
        .args(["-t", "set", "-q", "-n", &(spec.keys * 12).to_string()])
        .output()
        .map_err(|e| anyhow::anyhow!("redis-benchmark: {e} (apt-get install redis-tools)"))?;
    anyhow::ensure!(out.status.success(), "redis-benchmark preload failed");
    Ok(())
}

/// Runs redis-benchmark for about `spec.duration` (`requests` sized from `expected_rate`).
pub fn run(spec: &LoadSpec, addr: &str, expected_rate: f64) -> anyhow::Result<LoadFigures> {
    let test = test_name(spec)?;
    let requests = spec
        .ops
        .unwrap_or((expected_rate * spec.duration.as_secs_f64()).max(10_000.0) as u64);
    let started = Instant::now();
    let out = base(spec, addr)?
        .args(["-t", test, "--csv", "-n", &requests.to_string()])
        .output()
        .map_err(|e| anyhow::anyhow!("redis-benchmark: {e} (apt-get install redis-tools)"))?;
    anyhow::ensure!(
        out.status.success(),
        "redis-benchmark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    parse_csv(&text, test, started.elapsed().as_secs_f64(), addr)
}

/// Parses `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
fn parse_csv(text: &str, test: &str, seconds: f64, addr: &str) -> anyhow::Result<LoadFigures> {
    let mut header: Vec<String> = Vec::new();
    for line in text.lines() {
        let cells: Vec<String> = line.split(',').map(|c| c.trim_matches('"').to_string()).collect();
        if cells.first().map(|c| c == "test").unwrap_or(false) {
            header = cells;
            continue;
        }
        if cells
            .first()
            .map(|c| c.eq_ignore_ascii_case(test))
            .unwrap_or(false)
        {
            let get = |name: &str| -> f64 {
                header
                    .iter()
                    .position(|h| h == name)
                    .or(if name == "rps" { Some(1) } else { None })
                    .and_then(|i| cells.get(i))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            };
            let rps = get("rps");
            anyhow::ensure!(rps > 0.0, "redis-benchmark printed no rate: {line}");
            let figures = RunFigures {
                label: format!("redis-benchmark {test}"),
                ops: (rps * seconds) as u64,
                seconds,
                iops: rps,
                mb_per_s: 0.0,
                p50_us: get("p50_latency_ms") * 1e3,
                p99_us: get("p99_latency_ms") * 1e3,
                // redis-benchmark reports no p99.9 (only the maximum).
                p999_us: f64::NAN,
                cpu_us_per_op: 0.0,
            };
            return Ok(LoadFigures {
                figures,
                target: format!("redis-benchmark://{addr}"),
                by_op: Default::default(),
                not_found: 0,
                errors: Default::default(),
                verified: 0,
                verify_failures: 0,
                first_verify_failures: Vec::new(),
                offered_rate: None,
            });
        }
    }
    anyhow::bail!("no {test} line in redis-benchmark's output:\n{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"GET\",\"390339.00\",\"0.150\",\"0.030\",\"0.143\",\"0.207\",\"0.271\",\"1.103\"\n";
        let f = parse_csv(text, "get", 2.0, "127.0.0.1:6390").unwrap();
        assert_eq!(f.figures.iops, 390339.0);
        assert!((f.figures.p99_us - 271.0).abs() < 1e-6);
        assert!(parse_csv("nothing", "get", 1.0, "x:1").is_err());
    }
}
