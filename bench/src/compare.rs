//! `compare`: the same workload against several targets, interleaved round by round
//! (A B A B ...) so drift on the machine hits every target alike; prints each figure and
//! the ratio of each target to the first, per round and as the median.

use serde::Serialize;

use crate::load::{self, LoadFigures, LoadSpec};
use crate::redis_benchmark;

#[derive(Serialize)]
pub struct Comparison {
    pub rounds: Vec<Vec<LoadFigures>>,
    /// Median over rounds of ops/s relative to the first target.
    pub median_ratio: Vec<(String, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

pub fn compare(base: &LoadSpec, targets: &[String], rounds: usize) -> anyhow::Result<Comparison> {
    anyhow::ensure!(targets.len() >= 2, "compare needs two or more --target");
    anyhow::ensure!(
        !(base.verify && base.mix.writes()),
        "compare with --verify needs a read-only mix (rounds would start from different data)"
    );
    if base.preload {
        for t in targets {
            let mut spec = base.clone();
            spec.target = t.clone();
            match t.strip_prefix("redis-benchmark://") {
                Some(addr) => redis_benchmark::preload(&spec, addr)?,
                None => load::preload_target(&spec)?,
            }
        }
    }
    let mut all = Vec::new();
    for round in 0..rounds.max(1) {
        let mut row: Vec<LoadFigures> = Vec::new();
        for t in targets {
            let mut spec = base.clone();
            spec.target = t.clone();
            spec.preload = false;
            eprintln!("round {} of {}: {t}", round + 1, rounds.max(1));
            let f = match t.strip_prefix("redis-benchmark://") {
                Some(addr) => {
                    let expect = row.last().map(|r| r.figures.iops).unwrap_or(300_000.0);
                    redis_benchmark::run(&spec, addr, expect)?
                }
                None => load::run_load(&spec)?,
            };
            row.push(f);
        }
        all.push(row);
    }
    let median_ratio = targets
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, t)| {
            let ratios = all
                .iter()
                .map(|r| r[i].figures.iops / r[0].figures.iops)
                .collect();
            (t.clone(), median(ratios))
        })
        .collect();
    Ok(Comparison {
        rounds: all,
        median_ratio,
    })
}

pub fn print(c: &Comparison, allow_errors: bool) {
    println!(
        "{:<6} {:<34} {:>11} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "round", "target", "ops/s", "p50 us", "p99 us", "p99.9 us", "vs first", "errors"
    );
    for (i, row) in c.rounds.iter().enumerate() {
        for r in row {
            let f = &r.figures;
            let vs_first = match crate::report::ratio_refused(&row[0], r, allow_errors) {
                None => format!("{:.3}", f.iops / row[0].figures.iops),
                Some(_) => "-".to_string(),
            };
            println!(
                "{:<6} {:<34} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>7}",
                i + 1,
                r.target,
                f.iops,
                f.p50_us,
                f.p99_us,
                f.p999_us,
                vs_first,
                crate::report::error_replies(r)
            );
        }
    }
    let first = c
        .rounds
        .first()
        .and_then(|r| r.first())
        .map(|r| r.target.clone())
        .unwrap_or_default();
    let errors: u64 = c.rounds.iter().flatten().map(crate::report::error_replies).sum();
    if errors > 0 && !allow_errors {
        println!(
            "no median ratio: the runs had {errors} error replies in all (pass --allow-errors to print it anyway)"
        );
        return;
    }
    for (t, m) in &c.median_ratio {
        println!("median ratio {t} / {first}: ops/s {m:.3}");
    }
}
