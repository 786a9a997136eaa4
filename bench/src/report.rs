//! Printing load results: the final table with ratios to the first row, or JSON.

use crate::load::LoadFigures;

/// Error replies (Busy included) in a run, over every operation kind.
pub fn error_replies(r: &LoadFigures) -> u64 {
    r.errors.values().sum()
}

/// Why a ratio between `a` and `b` is not printed, if it is not: a run with error replies
/// is not comparable (errors are not counted as operations, but a target that sheds load
/// still runs lighter than one that serves it all).
pub fn ratio_refused(a: &LoadFigures, b: &LoadFigures, allow_errors: bool) -> Option<String> {
    let (ea, eb) = (error_replies(a), error_replies(b));
    (!allow_errors && ea + eb > 0).then(|| {
        format!(
            "no ratio {} / {}: the runs had {eb} and {ea} error replies (pass --allow-errors to print it anyway)",
            b.target, a.target
        )
    })
}

pub fn print_load(rows: &[LoadFigures], json: bool, allow_errors: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>11} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "target", "ops/s", "MB/s", "p50 us", "p99 us", "p99.9 us", "CPU/op", "errors", "notfound"
    );
    println!("(ops/s and latencies count completed operations only; error replies are counted apart)");
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
            if let Some(why) = ratio_refused(&rows[0], r, allow_errors) {
                println!("{why}");
                continue;
            }
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
