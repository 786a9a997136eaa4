//! `hotshard-bench s3`: load on any S3 endpoint (hotshard's gateway, Garage, ...): PUT, GET
//! or LIST of one bucket, SigV4-signed, over many keep-alive HTTP/1.1 connections with one
//! request in flight each (as S3 clients run), one thread per connection; prints
//! operations and bytes per second and latency percentiles.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use hotshard_nvme::SplitMix64;

use crate::latency::new_histogram;
use crate::sigv4::sign;

#[derive(clap::Args, Clone)]
pub struct S3Args {
    /// http://host:port of the S3 endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    pub endpoint: String,
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// put, get or list (a page of up to 1,000 keys after a random key).
    #[arg(long, default_value = "put")]
    pub op: String,
    /// Object size in bytes (put and get).
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Distinct keys (`obj-%08d`).
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
    #[arg(long, default_value = "10s", value_parser = crate::duration_arg::parse_duration)]
    pub duration: Duration,
    /// First create the bucket (if it is not there) and put every key once.
    #[arg(long)]
    pub prepare: bool,
}

/// Keys from HOTSHARD_S3_ACCESS_KEY / _SECRET_KEY, else AWS_ACCESS_KEY_ID / _SECRET_ACCESS_KEY.
fn credentials() -> anyhow::Result<(String, String)> {
    let env = |a: &str, b: &str| std::env::var(a).or_else(|_| std::env::var(b));
    Ok((
        env("HOTSHARD_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID").context("no access key in the environment")?,
        env("HOTSHARD_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY").context("no secret key in the environment")?,
    ))
}

/// One keep-alive connection to the endpoint.
struct Conn {
    host: String,
    keys: (String, String),
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
}

/// An answer: status and body length (the body itself is read and dropped).
struct Answer {
    status: u16,
    body_len: u64,
}

impl Conn {
    fn connect(host: &str, keys: (String, String)) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            host: host.to_string(),
            keys,
            reader: BufReader::with_capacity(256 << 10, stream.try_clone()?),
            writer: stream,
            line: String::new(),
        })
    }

    /// Sends one signed request and reads its whole answer.
    fn call(&mut self, method: &str, path: &str, query: &str, body: &[u8]) -> anyhow::Result<Answer> {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let signed = sign(method, &self.host, path, query, &self.keys.0, &self.keys.1, unix);
        let target = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in &signed {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        self.read_answer(method == "HEAD")
    }

    fn read_answer(&mut self, head_only: bool) -> anyhow::Result<Answer> {
        self.line.clear();
        self.reader.read_line(&mut self.line)?;
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {:?}", self.line))?;
        let (mut length, mut chunked) = (0u64, false);
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                bail!("the connection closed in the answer's head");
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((name, value)) = l.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse()?;
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
        if head_only {
            return Ok(Answer { status, body_len: 0 });
        }
        let mut body_len = 0;
        if chunked {
            loop {
                self.line.clear();
                self.reader.read_line(&mut self.line)?;
                let n = u64::from_str_radix(self.line.trim().split(';').next().unwrap_or("0"), 16)?;
                if n == 0 {
                    self.line.clear();
                    self.reader.read_line(&mut self.line)?;
                    break;
                }
                body_len += self.skip(n)?;
                self.line.clear();
                self.reader.read_line(&mut self.line)?;
            }
        } else {
            body_len = self.skip(length)?;
        }
        Ok(Answer { status, body_len })
    }

    fn skip(&mut self, n: u64) -> anyhow::Result<u64> {
        let copied = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())?;
        if copied != n {
            bail!("the connection closed in the answer's body");
        }
        Ok(n)
    }
}

fn key_name(i: u64) -> String {
    format!("obj-{i:08}")
}

/// What one connection's thread measured.
struct ThreadResult {
    latency: Histogram<u64>,
    ops: u64,
    bytes: u64,
    errors: u64,
}

fn drive(
    args: &S3Args,
    host: &str,
    keys: (String, String),
    t: usize,
    stop: &AtomicBool,
) -> anyhow::Result<ThreadResult> {
    let mut conn = Conn::connect(host, keys)?;
    let body = vec![0x5au8; if args.op == "put" { args.size } else { 0 }];
    let mut rng = SplitMix64::new(t as u64 * 7919 + 1);
    let mut r = ThreadResult {
        latency: new_histogram(),
        ops: 0,
        bytes: 0,
        errors: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let k = rng.below(args.keys.max(1));
        let started = Instant::now();
        let answer = match args.op.as_str() {
            "put" => conn.call("PUT", &format!("/{}/{}", args.bucket, key_name(k)), "", &body),
            "get" => conn.call("GET", &format!("/{}/{}", args.bucket, key_name(k)), "", &[]),
            "list" => {
                let query = format!("list-type=2&max-keys=1000&start-after={}", key_name(k));
                conn.call("GET", &format!("/{}", args.bucket), &query, &[])
            }
            other => bail!("unknown --op {other}: put, get or list"),
        };
        // A server that answers an error before the body may close the connection: count
        // it and connect again.
        let answer = match answer {
            Ok(a) => a,
            Err(_) => {
                r.errors += 1;
                conn = Conn::connect(host, conn.keys.clone())?;
                continue;
            }
        };
        r.latency.record(started.elapsed().as_micros().max(1) as u64)?;
        if answer.status / 100 == 2 {
            r.ops += 1;
            r.bytes += if args.op == "put" {
                args.size as u64
            } else {
                answer.body_len
            };
        } else {
            r.errors += 1;
        }
    }
    Ok(r)
}

/// Creates the bucket (an existing one is fine) and puts every key once, 8 at a time.
fn prepare(args: &S3Args, host: &str, keys: &(String, String)) -> anyhow::Result<()> {
    let mut c = Conn::connect(host, keys.clone())?;
    let made = c.call("PUT", &format!("/{}", args.bucket), "", &[])?;
    if made.status / 100 != 2 && made.status != 409 {
        bail!("creating bucket {}: HTTP {}", args.bucket, made.status);
    }
    let body = vec![0x5au8; args.size];
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..8u64)
            .map(|w| {
                let body = &body;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut c = Conn::connect(host, keys.clone())?;
                    for k in (w..args.keys).step_by(8) {
                        let a = c.call("PUT", &format!("/{}/{}", args.bucket, key_name(k)), "", body)?;
                        if a.status / 100 != 2 {
                            bail!("preparing {}: HTTP {}", key_name(k), a.status);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a preparing thread panicked"))??;
        }
        Ok(())
    })
}

pub fn s3_command(args: &S3Args) -> anyhow::Result<()> {
    let host = args
        .endpoint
        .strip_prefix("http://")
        .context("--endpoint is http://host:port")?
        .trim_end_matches('/')
        .to_string();
    let keys = credentials()?;
    if args.prepare {
        let started = Instant::now();
        prepare(args, &host, &keys)?;
        eprintln!(
            "prepared {} keys of {} B in {:.1} s",
            args.keys,
            args.size,
            started.elapsed().as_secs_f64()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let results = std::thread::scope(|s| {
        let threads: Vec<_> = (0..args.connections)
            .map(|t| {
                let (host, keys, stop) = (&host, keys.clone(), &stop);
                s.spawn(move || drive(args, host, keys, t, stop))
            })
            .collect();
        std::thread::sleep(args.duration);
        stop.store(true, Ordering::Relaxed);
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let secs = started.elapsed().as_secs_f64();
    let mut all = new_histogram();
    let (mut ops, mut bytes, mut errors) = (0, 0, 0);
    for r in &results {
        all.add(&r.latency)?;
        ops += r.ops;
        bytes += r.bytes;
        errors += r.errors;
    }
    println!(
        "s3 {} {} B x{}: {:.0} ops/s {:.1} MB/s p50 {} us p99 {} us errors {}",
        args.op,
        args.size,
        args.connections,
        ops as f64 / secs,
        bytes as f64 / secs / 1e6,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        errors
    );
    Ok(())
}
