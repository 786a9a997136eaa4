//! `hotshard stats` for a person: two scrapes of every shard's Prometheus text, a second
//! apart, turned into one screen of rates, latencies, cache, space, GC, connections and
//! chains per shard and for the node. Pure: parsing and formatting, no sockets.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One sample of a metric: its name and the labels other than `shard`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    name: String,
    labels: Vec<(String, String)>,
}

/// Every shard's samples at one moment: shard index -> series -> value.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    shards: BTreeMap<usize, BTreeMap<SeriesKey, f64>>,
}

/// A sample's name, its labels (name, value) and its value.
type Sample = (String, Vec<(String, String)>, f64);

/// Splits `name{a="x",b="y"} 12` into its name, labels and value; None for comments,
/// blank lines and anything else that is not a sample.
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            for pair in body.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=')?;
                labels.push((k.to_string(), v.trim_matches('"').to_string()));
            }
            (name, labels)
        }
    };
    Some((name.to_string(), labels, value))
}

impl Snapshot {
    /// Adds one shard's Prometheus text as column `shard` (its own `shard` label is dropped:
    /// in a cluster, every node has a shard 0).
    pub fn add_text(&mut self, shard: usize, text: &str) {
        for (name, mut labels, value) in text.lines().filter_map(parse_sample) {
            labels.retain(|(k, _)| k != "shard");
            labels.sort();
            *self
                .shards
                .entry(shard)
                .or_default()
                .entry(SeriesKey { name, labels })
                .or_default() += value;
        }
    }

    pub fn shard_indexes(&self) -> Vec<usize> {
        self.shards.keys().copied().collect()
    }

    /// The value of `name` with exactly `labels` on `shard` (0 when absent).
    fn get(&self, shard: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = SeriesKey {
            name: name.to_string(),
            labels: {
                let mut l: Vec<(String, String)> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                l.sort();
                l
            },
        };
        self.shards
            .get(&shard)
            .and_then(|m| m.get(&key))
            .copied()
            .unwrap_or(0.0)
    }

    /// The sum of every series named `name` on `shard`, whatever its labels.
    fn sum(&self, shard: usize, name: &str) -> f64 {
        self.shards.get(&shard).map_or(0.0, |m| {
            m.iter().filter(|(k, _)| k.name == name).map(|(_, v)| v).sum()
        })
    }

    /// A latency histogram of `op` on `shard`: (upper bound in seconds, cumulative count).
    fn histogram(&self, shard: usize, op: &str) -> Vec<(f64, f64)> {
        let Some(m) = self.shards.get(&shard) else {
            return Vec::new();
        };
        let mut buckets: Vec<(f64, f64)> = m
            .iter()
            .filter(|(k, _)| k.name == "hotshard_op_latency_seconds_bucket")
            .filter(|(k, _)| k.labels.iter().any(|(n, v)| n == "op" && v == op))
            .filter_map(|(k, v)| {
                let le = &k.labels.iter().find(|(n, _)| n == "le")?.1;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// The operations shown, in the order shown.
const OPS: [&str; 5] = ["put", "get", "delete", "replicate", "pass_down"];

/// A quantile of a cumulative histogram, interpolated linearly inside the bucket it falls
/// in (as Prometheus's `histogram_quantile` does); None without observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// `after - before`, bucket by bucket.
fn histogram_delta(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(bound, count)| {
            let was = before.iter().find(|b| b.0 == bound).map_or(0.0, |b| b.1);
            (bound, (count - was).max(0.0))
        })
        .collect()
}

fn add_histograms(into: &mut Vec<(f64, f64)>, more: &[(f64, f64)]) {
    if into.is_empty() {
        into.extend_from_slice(more);
        return;
    }
    for (bucket, extra) in into.iter_mut().zip(more) {
        bucket.1 += extra.1;
    }
}

/// 1234567 -> "1.23M": a count or rate in three significant digits.
pub fn human_count(v: f64) -> String {
    let (scaled, unit) = match v.abs() {
        x if x >= 1e9 => (v / 1e9, "G"),
        x if x >= 1e6 => (v / 1e6, "M"),
        x if x >= 1e4 => (v / 1e3, "K"),
        _ => (v, ""),
    };
    if unit.is_empty() && (scaled.fract() == 0.0 || scaled.abs() >= 100.0) {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 100.0 {
        format!("{scaled:.0}{unit}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}{unit}")
    } else {
        format!("{scaled:.2}{unit}")
    }
}

/// Bytes in binary units: "512 B", "1.5 KiB", "3.25 GiB".
pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut scaled = v;
    let mut unit = 0;
    while scaled.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{scaled:.0} B")
    } else if scaled >= 100.0 {
        format!("{scaled:.0} {}", UNITS[unit])
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

/// Seconds as the unit that reads best: "85 us", "1.25 ms", "2.1 s".
pub fn human_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.1} s")
    }
}

/// One row of the table: a label and a cell per shard, then the node's.
struct Row {
    label: String,
    cells: Vec<String>,
}

/// What the summary needs to say besides the numbers.
pub struct Heading<'a> {
    /// The address the samples came from.
    pub addr: &'a str,
    /// Seconds between the two snapshots.
    pub seconds: f64,
}

/// The one-screen summary: for each shard and for the node, rates over the interval
/// between `before` and `after`, latencies of the requests in it, and the state now.
pub fn summarize(before: &Snapshot, after: &Snapshot, heading: &Heading) -> String {
    let shards = after.shard_indexes();
    let secs = heading.seconds.max(1e-3);
    let rate = |shard: usize, name: &str, labels: &[(&str, &str)]| {
        (after.get(shard, name, labels) - before.get(shard, name, labels)).max(0.0) / secs
    };
    let rate_sum =
        |shard: usize, name: &str| (after.sum(shard, name) - before.sum(shard, name)).max(0.0) / secs;
    let mut rows: Vec<Row> = Vec::new();
    // A row from a value per shard, the node's cell their sum.
    fn summed(rows: &mut Vec<Row>, label: &str, per_shard: Vec<f64>, show: &dyn Fn(f64) -> String) {
        let total: f64 = per_shard.iter().sum();
        let mut cells: Vec<String> = per_shard.iter().map(|v| show(*v)).collect();
        cells.push(show(total));
        rows.push(Row {
            label: label.to_string(),
            cells,
        });
    }
    let count = |v: f64| human_count(v);
    for op in OPS {
        let per: Vec<f64> = shards
            .iter()
            .map(|&s| rate(s, "hotshard_ops_total", &[("op", op)]))
            .collect();
        let never = shards
            .iter()
            .all(|&s| after.get(s, "hotshard_ops_total", &[("op", op)]) == 0.0);
        if (op == "pass_down" || op == "replicate") && never {
            continue; // a node outside a cluster never replicates: no rows for it
        }
        summed(&mut rows, &format!("{op}/s"), per, &count);
    }
    // Latency rows: the quantiles of the interval's requests (of all requests so far when
    // the interval had none, marked with *).
    for op in ["put", "get"] {
        let mut node_window = Vec::new();
        let mut node_all = Vec::new();
        let mut cells = Vec::new();
        for &s in &shards {
            let all = after.histogram(s, op);
            let window = histogram_delta(&all, &before.histogram(s, op));
            add_histograms(&mut node_window, &window);
            add_histograms(&mut node_all, &all);
            cells.push(latency_cell(&window, &all));
        }
        cells.push(latency_cell(&node_window, &node_all));
        rows.push(Row {
            label: format!("{op} p50/p99"),
            cells,
        });
    }
    let per = |f: &dyn Fn(usize) -> f64| -> Vec<f64> { shards.iter().map(|&s| f(s)).collect() };
    summed(
        &mut rows,
        "errors/s",
        per(&|s| rate_sum(s, "hotshard_op_errors_total")),
        &count,
    );
    summed(
        &mut rows,
        "busy/s",
        per(&|s| rate(s, "hotshard_busy_total", &[]) + rate(s, "hotshard_store_busy_total", &[])),
        &count,
    );
    summed(
        &mut rows,
        "fenced/s",
        per(&|s| rate(s, "hotshard_fenced_refusals_total", &[])),
        &count,
    );
    // Cache hit rate over the interval, or over the shard's life when the interval had no
    // lookups.
    let hit_rate = |hits: f64, misses: f64| {
        if hits + misses > 0.0 {
            Some(hits / (hits + misses))
        } else {
            None
        }
    };
    let cache_of = |s: usize| {
        let d = |n: &str| after.get(s, n, &[]) - before.get(s, n, &[]);
        (d("hotshard_cache_hits_total"), d("hotshard_cache_misses_total"))
    };
    let mut cache_cells: Vec<String> = shards
        .iter()
        .map(|&s| {
            let (h, m) = cache_of(s);
            percent(hit_rate(h, m))
        })
        .collect();
    let (hits, misses) = shards
        .iter()
        .map(|&s| cache_of(s))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    cache_cells.push(percent(hit_rate(hits, misses)));
    rows.push(Row {
        label: "cache hits".into(),
        cells: cache_cells,
    });
    let now = |name: &'static str| move |s: usize| after.get(s, name, &[]);
    let bytes = |v: f64| human_bytes(v);
    summed(&mut rows, "cache held", per(&now("hotshard_cache_bytes")), &bytes);
    summed(&mut rows, "objects", per(&now("hotshard_objects")), &count);
    summed(&mut rows, "live data", per(&now("hotshard_live_bytes")), &bytes);
    let space = |s: usize| {
        let seg = after.get(s, "hotshard_segment_bytes", &[]);
        (
            after.get(s, "hotshard_segments_total", &[]) * seg,
            after.get(s, "hotshard_segments_free", &[]) * seg,
        )
    };
    summed(&mut rows, "space", per(&|s| space(s).0), &bytes);
    summed(&mut rows, "free", per(&|s| space(s).1), &bytes);
    summed(
        &mut rows,
        "gc moved/s",
        per(&|s| rate(s, "hotshard_gc_moved_bytes_total", &[])),
        &bytes,
    );
    summed(
        &mut rows,
        "gc freed seg/s",
        per(&|s| rate(s, "hotshard_gc_freed_segments_total", &[])),
        &count,
    );
    summed(
        &mut rows,
        "write stalls",
        per(&now("hotshard_write_stalls_total")),
        &count,
    );
    summed(
        &mut rows,
        "connections",
        per(&|s| {
            after.get(s, "hotshard_connections_open", &[])
                + after.get(s, "hotshard_resp_connections_open", &[])
        }),
        &count,
    );
    let chains = |role: &'static str| move |s: usize| after.get(s, "hotshard_chains", &[("role", role)]);
    let in_cluster = shards
        .iter()
        .any(|&s| after.get(s, "hotshard_lease_age_seconds", &[]) > 0.0)
        || shards.iter().any(|&s| {
            after.get(s, "hotshard_chains", &[("role", "middle")])
                + after.get(s, "hotshard_chains", &[("role", "tail")])
                > 0.0
        });
    summed(&mut rows, "chains head", per(&chains("head")), &count);
    if in_cluster {
        summed(&mut rows, "chains middle", per(&chains("middle")), &count);
        summed(&mut rows, "chains tail", per(&chains("tail")), &count);
        summed(
            &mut rows,
            "chains degraded",
            per(&now("hotshard_chains_degraded")),
            &count,
        );
        summed(&mut rows, "syncing", per(&now("hotshard_syncing_chains")), &count);
        summed(
            &mut rows,
            "syncing to go",
            per(&now("hotshard_sync_chains_to_go")),
            &count,
        );
        summed(
            &mut rows,
            "sync copied/s",
            per(&|s| rate(s, "hotshard_sync_bytes_copied_total", &[])),
            &bytes,
        );
    }

    let mut out = String::new();
    let epoch = shards
        .iter()
        .map(|&s| after.get(s, "hotshard_map_epoch", &[]))
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "hotshard at {}: {} shard{}, map epoch {epoch}; rates over the last {:.1} s",
        heading.addr,
        shards.len(),
        if shards.len() == 1 { "" } else { "s" },
        heading.seconds
    );
    let fenced: Vec<String> = shards
        .iter()
        .filter(|&&s| after.get(s, "hotshard_fenced", &[]) > 0.0)
        .map(|s| s.to_string())
        .collect();
    if !fenced.is_empty() {
        let _ = writeln!(out, "FENCED (lease not confirmed): shard {}", fenced.join(", "));
    }
    let mut header = vec![String::new()];
    header.extend(shards.iter().map(|s| format!("shard {s}")));
    header.push("node".into());
    let label_width = rows.iter().map(|r| r.label.len()).max().unwrap_or(0).max(8);
    let cell_width = rows
        .iter()
        .flat_map(|r| r.cells.iter().map(|c| c.len()))
        .chain(header.iter().map(|h| h.len()))
        .max()
        .unwrap_or(8)
        + 2;
    let _ = write!(out, "{:<label_width$}", "");
    for h in &header[1..] {
        let _ = write!(out, "{h:>cell_width$}");
    }
    out.push('\n');
    for row in &rows {
        let _ = write!(out, "{:<label_width$}", row.label);
        for c in &row.cells {
            let _ = write!(out, "{c:>cell_width$}");
        }
        out.push('\n');
    }
    out
}

fn percent(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.1} %", r * 100.0))
}

/// "p50/p99" of the interval's requests; of all requests so far (with *) when the interval
/// had none; "-" when there were never any.
fn latency_cell(window: &[(f64, f64)], all: &[(f64, f64)]) -> String {
    let show = |b: &[(f64, f64)]| -> Option<String> {
        Some(format!(
            "{}/{}",
            human_seconds(quantile(b, 0.5)?),
            human_seconds(quantile(b, 0.99)?)
        ))
    };
    show(window)
        .or_else(|| show(all).map(|s| format!("{s}*")))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
hotshard_ops_total{shard="0",op="put"} 100
hotshard_ops_total{shard="0",op="get"} 1000
hotshard_op_errors_total{shard="0",op="put"} 0
hotshard_op_latency_seconds_bucket{shard="0",op="get",le="0.0001"} 900
hotshard_op_latency_seconds_bucket{shard="0",op="get",le="0.0002"} 1000
hotshard_op_latency_seconds_bucket{shard="0",op="get",le="+Inf"} 1000
hotshard_cache_hits_total{shard="0"} 10
hotshard_cache_misses_total{shard="0"} 10
hotshard_segments_total{shard="0"} 64
hotshard_segments_free{shard="0"} 60
hotshard_segment_bytes{shard="0"} 16777216
hotshard_chains{shard="0",role="head"} 4096
hotshard_map_epoch{shard="0"} 1
"#;

    fn after() -> String {
        BEFORE
            .replace("op=\"put\"} 100", "op=\"put\"} 300")
            .replace("op=\"get\"} 1000", "op=\"get\"} 3000")
            .replace("le=\"0.0002\"} 1000", "le=\"0.0002\"} 3000")
            .replace("le=\"+Inf\"} 1000", "le=\"+Inf\"} 3000")
            .replace("hits_total{shard=\"0\"} 10", "hits_total{shard=\"0\"} 100")
            .replace(
                "op_errors_total{shard=\"0\",op=\"put\"} 0",
                "op_errors_total{shard=\"0\",op=\"put\"} 4",
            )
    }

    fn snapshot(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.add_text(0, text);
        s
    }

    #[test]
    fn samples_parse_with_and_without_labels() {
        assert_eq!(
            parse_sample(r#"a_b{x="1",le="+Inf"} 2.5"#),
            Some((
                "a_b".into(),
                vec![("x".into(), "1".into()), ("le".into(), "+Inf".into())],
                2.5
            ))
        );
        assert_eq!(parse_sample("plain 7"), Some(("plain".into(), vec![], 7.0)));
        assert_eq!(parse_sample("# HELP x"), None);
        assert_eq!(parse_sample("broken{ 1"), None);
        assert_eq!(parse_sample("no_value x"), None);
    }

    #[test]
    fn rates_quantiles_and_cache_come_from_the_interval() {
        let text = summarize(
            &snapshot(BEFORE),
            &snapshot(&after()),
            &Heading {
                addr: "127.0.0.1:7400",
                seconds: 2.0,
            },
        );
        let row = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no row {label} in\n{text}"))
                .split_whitespace()
                .skip(label.split_whitespace().count())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(row("put/s"), "100 100", "{text}");
        assert_eq!(row("get/s"), "1000 1000", "{text}");
        assert_eq!(row("errors/s"), "2 2", "{text}");
        // The interval's 2000 GETs all fell in (100 us, 200 us]: p50 at 150 us.
        assert_eq!(row("get p50/p99"), "150 us/199 us 150 us/199 us", "{text}");
        // No PUT latency was ever recorded.
        assert_eq!(row("put p50/p99"), "- -", "{text}");
        assert_eq!(row("cache hits"), "100.0 % 100.0 %", "{text}");
        assert_eq!(row("space"), "1.0 GiB 1.0 GiB", "{text}");
        assert_eq!(row("free"), "960 MiB 960 MiB", "{text}");
        assert_eq!(row("chains head"), "4096 4096", "{text}");
        assert!(
            !text.contains("replicate/s"),
            "no replication rows outside a cluster\n{text}"
        );
        assert!(text.lines().count() < 30, "one screen\n{text}");
    }

    #[test]
    fn an_idle_interval_shows_the_lifetime_latency_marked() {
        let s = snapshot(BEFORE);
        let text = summarize(
            &s,
            &s,
            &Heading {
                addr: "x",
                seconds: 1.0,
            },
        );
        let line = text.lines().find(|l| l.starts_with("get p50/p99")).unwrap();
        assert!(line.contains('*'), "{text}");
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let b = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&b, 0.5), Some(0.001));
        assert!((quantile(&b, 0.75).unwrap() - 0.0015).abs() < 1e-12);
        assert_eq!(quantile(&[(0.001, 0.0)], 0.5), None);
        // Past the last finite bound: the bound, not infinity.
        assert_eq!(
            quantile(&[(0.001, 1.0), (f64::INFINITY, 10.0)], 0.99),
            Some(0.001)
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_count(0.0), "0");
        assert_eq!(human_count(12.5), "12.5");
        assert_eq!(human_count(999.0), "999");
        assert_eq!(human_count(12_345.0), "12.3K");
        assert_eq!(human_count(1_234_567.0), "1.23M");
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
        assert_eq!(human_seconds(0.000085), "85 us");
        assert_eq!(human_seconds(0.00125), "1.25 ms");
    }
}
