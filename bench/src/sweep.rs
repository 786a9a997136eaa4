//! `sweep` and `tune`: measure a workload over values of one or two knobs. Client knobs
//! (pipeline, connections, value-size, rate, keys, dist, mix) change the generator; server
//! knobs (`shards` or any `section.key` of a profile) restart a node the harness manages.
//! `tune` searches server knobs one at a time for the best throughput under a p99 target
//! and writes the winning profile with the figures that chose it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::load::{run_load, LoadFigures, LoadSpec};
use crate::managed_node::{read_profile, set_knob, ManagedNode};
use crate::plot::{Panel, Series};

/// `name=v1,v2,...`
#[derive(Debug, Clone)]
pub struct Knob {
    pub name: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for Knob {
    type Err = String;
    fn from_str(s: &str) -> Result<Knob, String> {
        let (name, values) = s
            .split_once('=')
            .ok_or_else(|| format!("knob {s:?} must be NAME=V1,V2,..."))?;
        let values: Vec<String> = values
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            return Err(format!("knob {name} has no values"));
        }
        Ok(Knob {
            name: name.trim().to_string(),
            values,
        })
    }
}

impl Knob {
    pub fn is_server(&self) -> bool {
        is_server_knob(&self.name)
    }
}

fn is_server_knob(name: &str) -> bool {
    name == "shards" || name.contains('.')
}

/// Applies a client knob to the workload.
fn set_client_knob(spec: &mut LoadSpec, name: &str, value: &str) -> anyhow::Result<()> {
    let bad = |e: String| anyhow::anyhow!("{name}={value}: {e}");
    match name {
        "pipeline" => spec.pipeline = value.parse().map_err(|_| bad("not a count".into()))?,
        "connections" => spec.connections = value.parse().map_err(|_| bad("not a count".into()))?,
        "keys" => spec.keys = value.parse().map_err(|_| bad("not a count".into()))?,
        "rate" => spec.rate = Some(value.parse().map_err(|_| bad("not a rate".into()))?),
        "value-size" => spec.sizes = value.parse().map_err(bad)?,
        "dist" => spec.dist = value.parse().map_err(bad)?,
        "mix" => spec.mix = value.replace(';', ",").parse().map_err(bad)?,
        other => anyhow::bail!(
            "unknown knob {other:?}: client knobs are pipeline, connections, keys, rate, value-size, dist, mix; \
             server knobs are shards or SECTION.KEY of a profile"
        ),
    }
    Ok(())
}

/// Where server knobs are applied.
pub struct NodeSetup {
    pub profile: toml::Table,
    pub binary: PathBuf,
    pub work_dir: PathBuf,
}

impl NodeSetup {
    pub fn new(profile: &Path, binary: Option<PathBuf>) -> anyhow::Result<NodeSetup> {
        Ok(NodeSetup {
            profile: read_profile(profile)?,
            binary: binary.unwrap_or_else(crate::managed_node::default_binary),
            work_dir: PathBuf::from("target/bench/managed-node"),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub knobs: Vec<(String, String)>,
    pub figures: LoadFigures,
}

/// Measures one assignment of knob values.
pub fn measure(
    base: &LoadSpec,
    knobs: &[(String, String)],
    node: Option<&NodeSetup>,
    announce: bool,
) -> anyhow::Result<Point> {
    let mut spec = base.clone();
    let mut profile = node.map(|n| n.profile.clone());
    for (name, value) in knobs {
        if is_server_knob(name) {
            let p = profile
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("server knob {name} needs --profile (a hw-configs TOML)"))?;
            set_knob(p, name, value)?;
        } else {
            set_client_knob(&mut spec, name, value)?;
        }
    }
    let _running = match (node, &profile) {
        (Some(n), Some(p)) => {
            let running = ManagedNode::start(&n.binary, p, &n.work_dir)?;
            spec.target = format!("hotshard://{}", running.addr);
            Some(running)
        }
        _ => None,
    };
    if announce {
        let desc: Vec<String> = knobs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("measuring {}", desc.join(" "));
    }
    let figures = run_load(&spec)?;
    Ok(Point {
        knobs: knobs.to_vec(),
        figures,
    })
}

pub fn print_points(points: &[Point]) {
    let names: Vec<&str> = points
        .first()
        .map(|p| p.knobs.iter().map(|k| k.0.as_str()).collect())
        .unwrap_or_default();
    for n in &names {
        print!("{n:>22} ");
    }
    println!(
        "{:>11} {:>8} {:>9} {:>9} {:>9} {:>7}",
        "ops/s", "MB/s", "p50 us", "p99 us", "p99.9 us", "errors"
    );
    for p in points {
        for (_, v) in &p.knobs {
            print!("{v:>22} ");
        }
        let f = &p.figures.figures;
        println!(
            "{:>11.0} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            f.iops,
            f.mb_per_s,
            f.p50_us,
            f.p99_us,
            f.p999_us,
            p.figures.errors.values().sum::<u64>()
        );
    }
}

/// Every combination of one or two knobs.
pub fn sweep(base: &LoadSpec, knobs: &[Knob], node: Option<&NodeSetup>) -> anyhow::Result<Vec<Point>> {
    anyhow::ensure!(
        (1..=2).contains(&knobs.len()),
        "sweep varies one or two knobs (--knob NAME=V1,V2 once or twice)"
    );
    let mut base = base.clone();
    let restarts = knobs.iter().any(Knob::is_server);
    if !restarts && base.preload {
        // Load once; the points then read the same data.
        crate::load::preload_target(&base)?;
        base.preload = false;
    }
    let mut points = Vec::new();
    let second: Vec<Option<&String>> = match knobs.get(1) {
        Some(k) => k.values.iter().map(Some).collect(),
        None => vec![None],
    };
    for b in &second {
        for a in &knobs[0].values {
            let mut assign = vec![(knobs[0].name.clone(), a.clone())];
            if let (Some(k), Some(v)) = (knobs.get(1), b) {
                assign.push((k.name.clone(), (*v).clone()));
            }
            points.push(measure(&base, &assign, node, true)?);
        }
    }
    Ok(points)
}

fn numeric(v: &str, i: usize) -> f64 {
    v.parse().unwrap_or(i as f64)
}

/// Throughput against the first knob (one curve per value of the second), and latency
/// against achieved throughput.
pub fn sweep_plot(points: &[Point], knobs: &[Knob]) -> Vec<Panel> {
    let mut by_second: Vec<(String, Vec<&Point>)> = Vec::new();
    for p in points {
        let name = p
            .knobs
            .get(1)
            .map(|(k, v)| format!("{k}={v}"))
            .unwrap_or_else(|| "ops/s".into());
        match by_second.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(p),
            None => by_second.push((name, vec![p])),
        }
    }
    let x_of = |p: &Point| {
        let v = &p.knobs[0].1;
        numeric(v, knobs[0].values.iter().position(|x| x == v).unwrap_or(0))
    };
    let throughput = Panel {
        title: format!("throughput vs {}", knobs[0].name),
        x_label: knobs[0].name.clone(),
        y_label: "ops/s".into(),
        series: by_second
            .iter()
            .map(|(n, ps)| Series {
                name: n.clone(),
                points: ps.iter().map(|p| (x_of(p), p.figures.figures.iops)).collect(),
            })
            .collect(),
    };
    let mut latency_series = Vec::new();
    for (n, ps) in &by_second {
        for (q, f) in [("p50", 0), ("p99", 1)] {
            latency_series.push(Series {
                name: if by_second.len() > 1 {
                    format!("{q} {n}")
                } else {
                    q.to_string()
                },
                points: ps
                    .iter()
                    .map(|p| {
                        let g = &p.figures.figures;
                        (g.iops, if f == 0 { g.p50_us } else { g.p99_us })
                    })
                    .collect(),
            });
        }
    }
    let latency = Panel {
        title: "latency vs throughput".into(),
        x_label: "achieved ops/s".into(),
        y_label: "latency (us)".into(),
        series: latency_series,
    };
    vec![throughput, latency]
}

/// What `tune` found: the chosen knob values, the best trial and every trial.
pub struct Tuned {
    pub chosen: Vec<(String, String)>,
    pub best: Option<Point>,
    pub trials: Vec<Point>,
}

/// Coordinate search: each knob in turn, the others held at their best so far; the best
/// point is the highest throughput whose p99 is within the target.
pub fn tune(
    base: &LoadSpec,
    knobs: &[Knob],
    node: &NodeSetup,
    p99_us: f64,
    passes: usize,
) -> anyhow::Result<Tuned> {
    anyhow::ensure!(!knobs.is_empty(), "tune needs at least one --knob");
    for k in knobs {
        anyhow::ensure!(
            k.is_server(),
            "tune searches server knobs (SECTION.KEY or shards), not {}",
            k.name
        );
    }
    let mut chosen: Vec<(String, String)> = knobs
        .iter()
        .map(|k| (k.name.clone(), k.values[0].clone()))
        .collect();
    let mut best: Option<Point> = None;
    let mut trials: Vec<Point> = Vec::new();
    let fits = |p: &Point| p.figures.figures.p99_us <= p99_us && p.figures.errors.is_empty();
    for _ in 0..passes.max(1) {
        for (i, k) in knobs.iter().enumerate() {
            for v in &k.values {
                let mut assign = chosen.clone();
                assign[i].1 = v.clone();
                if let Some(t) = trials.iter().find(|t| t.knobs == assign) {
                    let t = t.clone();
                    if fits(&t)
                        && best
                            .as_ref()
                            .is_none_or(|b| t.figures.figures.iops > b.figures.figures.iops)
                    {
                        best = Some(t);
                    }
                    continue;
                }
                let p = measure(base, &assign, Some(node), true)?;
                if fits(&p)
                    && best
                        .as_ref()
                        .is_none_or(|b| p.figures.figures.iops > b.figures.figures.iops)
                {
                    best = Some(p.clone());
                }
                trials.push(p);
            }
            if let Some(b) = &best {
                chosen = b.knobs.clone();
            }
        }
    }
    Ok(Tuned { chosen, best, trials })
}

/// The profile with the chosen knobs, headed by the figures that chose them.
pub fn tuned_profile(
    node: &NodeSetup,
    chosen: &[(String, String)],
    best: Option<&Point>,
    trials: &[Point],
    p99_us: f64,
    workload: &str,
) -> anyhow::Result<String> {
    let mut profile = node.profile.clone();
    for (k, v) in chosen {
        set_knob(&mut profile, k, v)?;
    }
    let mut head = String::new();
    head.push_str("# Written by `hotshard-bench tune`.\n");
    head.push_str(&format!(
        "# Workload: {workload}\n# Goal: most ops/s with p99 <= {p99_us} us.\n"
    ));
    match best {
        Some(b) => head.push_str(&format!(
            "# Chosen: {} -> {:.0} ops/s, p99 {:.1} us\n",
            b.knobs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            b.figures.figures.iops,
            b.figures.figures.p99_us
        )),
        None => head.push_str("# No trial met the p99 target; the first values are kept.\n"),
    }
    head.push_str("# Trials:\n");
    for t in trials {
        head.push_str(&format!(
            "#   {:<60} {:>10.0} ops/s  p99 {:>9.1} us\n",
            t.knobs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            t.figures.figures.iops,
            t.figures.figures.p99_us
        ));
    }
    Ok(format!("{head}\n{}", toml::to_string(&profile)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_parse_and_classify() {
        let k: Knob = "pipeline=1,4,16".parse().unwrap();
        assert_eq!(k.values, vec!["1", "4", "16"]);
        assert!(!k.is_server());
        assert!("queue.entries=64,256".parse::<Knob>().unwrap().is_server());
        assert!("shards=1,2".parse::<Knob>().unwrap().is_server());
        assert!("pipeline".parse::<Knob>().is_err());
        assert!("pipeline=".parse::<Knob>().is_err());
    }
}
