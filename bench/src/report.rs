//! Printing load results: the final table with ratios to the first row, or JSON.

use crate::load::LoadFigures;

pub fn print_load(rows: &[LoadFigures], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>11} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "target", "ops/s", "MB/s", "p50 us", "p99 us", "p99.9 us", "CPU/op", "errors", "notfound"
    );
    for r in rows {
        let f = &r.figures;
        println!(
            "{:<24} {:>11.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.2} {:>8} {:>8}",
            r.target,
            f.iops,
            f.mb_per_s,
            f.p50_us,
            f.p99_us,
            f.p999_us,
            f.cpu_us_per_op,
            r.errors.values().sum::<u64>(),
            r.not_found
        );
    }
    if let Some(first) = rows.first() {
        println!("workload: {}", first.figures.label);
        for (k, v) in &first.errors {
            println!("  {}: error {k}: {v}", first.target);
        }
    }
    for r in rows.iter().skip(1) {
        for (k, v) in &r.errors {
            println!("  {}: error {k}: {v}", r.target);
        }
    }
    for r in rows {
        if r.verified > 0 || r.verify_failures > 0 {
            println!(
                "verify {}: {} GETs checked, {} wrong",
                r.target, r.verified, r.verify_failures
            );
            for f in &r.first_verify_failures {
                println!("  {f}");
            }
        }
    }
    if rows.len() > 1 {
        let a = &rows[0].figures;
        for r in &rows[1..] {
            let f = &r.figures;
            println!(
                "ratio {} / {}: ops/s {:.3}, p50 {:.3}, p99 {:.3}, p99.9 {:.3}",
                r.target,
                rows[0].target,
                f.iops / a.iops,
                f.p50_us / a.p50_us,
                f.p99_us / a.p99_us,
                f.p999_us / a.p999_us
            );
        }
    }
    Ok(())
}

/// A verify run that saw a wrong value fails the command.
pub fn fail_on_verify(rows: &[LoadFigures]) -> anyhow::Result<()> {
    let bad: u64 = rows.iter().map(|r| r.verify_failures).sum();
    anyhow::ensure!(
        bad == 0,
        "verify: {bad} GETs returned bytes that were never acknowledged for their key"
    );
    Ok(())
}
