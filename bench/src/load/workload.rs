//! What a load run asks for: the operation mix, which keys, how large the values are, and
//! the generator that turns those into a stream of operations (pure, no sockets).

use std::str::FromStr;

use hotshard_nvme::SplitMix64;
use serde::Serialize;

use super::zipf::Zipf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Get,
    Put,
    Del,
}

/// Weights of get, put and del, e.g. `get=90,put=10` (or just `get`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mix {
    pub get: u32,
    pub put: u32,
    pub del: u32,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            get: 0,
            put: 0,
            del: 0,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => (
                    n.trim(),
                    w.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("mix weight {w:?} is not a whole number"))?,
                ),
                None => (part.trim(), 1),
            };
            match name {
                "get" => mix.get += weight,
                "put" | "set" => mix.put += weight,
                "del" | "delete" => mix.del += weight,
                other => return Err(format!("unknown operation {other:?} in mix (get, put, del)")),
            }
        }
        if mix.get + mix.put + mix.del == 0 {
            return Err("the mix has no operations (e.g. get=90,put=10)".into());
        }
        Ok(mix)
    }
}

impl Mix {
    pub fn writes(&self) -> bool {
        self.put + self.del > 0
    }

    fn pick(&self, rng: &mut SplitMix64) -> Op {
        let r = rng.below((self.get + self.put + self.del) as u64) as u32;
        if r < self.get {
            Op::Get
        } else if r < self.get + self.put {
            Op::Put
        } else {
            Op::Del
        }
    }
}

/// How keys are chosen: `uniform`, `zipfian` / `zipfian:0.8` (θ, default 0.99), `sequential`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum KeyDist {
    Uniform,
    Zipfian(f64),
    Sequential,
}

impl FromStr for KeyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyDist, String> {
        match s.split_once(':') {
            None if s == "uniform" => Ok(KeyDist::Uniform),
            None if s == "sequential" => Ok(KeyDist::Sequential),
            None if s == "zipfian" => Ok(KeyDist::Zipfian(0.99)),
            Some(("zipfian", t)) => {
                let theta: f64 = t
                    .parse()
                    .map_err(|_| format!("zipfian θ {t:?} is not a number"))?;
                if !(theta > 0.0 && theta < 1.0) {
                    return Err(format!("zipfian θ must be between 0 and 1, got {theta}"));
                }
                Ok(KeyDist::Zipfian(theta))
            }
            _ => Err(format!(
                "unknown key distribution {s:?} (uniform, zipfian[:θ], sequential)"
            )),
        }
    }
}

/// Value sizes: `4096`, a uniform range `1024-8192`, or weighted sizes `512:50,4096:40,65536:10`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ValueSizes {
    Fixed(usize),
    Range(usize, usize),
    Weighted(Vec<(usize, u32)>),
}

impl FromStr for ValueSizes {
    type Err = String;
    fn from_str(s: &str) -> Result<ValueSizes, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("value size {t:?} is not a whole number of bytes"))
        };
        if s.contains(':') {
            let mut v = Vec::new();
            for part in s.split(',') {
                let (size, w) = part
                    .split_once(':')
                    .ok_or_else(|| format!("weighted size {part:?} needs SIZE:WEIGHT"))?;
                let w: u32 = w
                    .trim()
                    .parse()
                    .map_err(|_| format!("weight {w:?} is not a whole number"))?;
                v.push((num(size)?, w));
            }
            if v.iter().map(|x| x.1 as u64).sum::<u64>() == 0 {
                return Err("weighted sizes need a positive weight".into());
            }
            Ok(ValueSizes::Weighted(v))
        } else if let Some((a, b)) = s.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("value size range {a}-{b} is backwards"));
            }
            Ok(ValueSizes::Range(a, b))
        } else {
            Ok(ValueSizes::Fixed(num(s)?))
        }
    }
}

impl ValueSizes {
    pub fn max(&self) -> usize {
        match self {
            ValueSizes::Fixed(n) => *n,
            ValueSizes::Range(_, b) => *b,
            ValueSizes::Weighted(v) => v.iter().map(|x| x.0).max().unwrap_or(0),
        }
    }

    pub fn min(&self) -> usize {
        match self {
            ValueSizes::Fixed(n) => *n,
            ValueSizes::Range(a, _) => *a,
            ValueSizes::Weighted(v) => v.iter().map(|x| x.0).min().unwrap_or(0),
        }
    }

    fn pick(&self, rng: &mut SplitMix64) -> usize {
        match self {
            ValueSizes::Fixed(n) => *n,
            ValueSizes::Range(a, b) => a + rng.below((b - a + 1) as u64) as usize,
            ValueSizes::Weighted(v) => {
                let total: u64 = v.iter().map(|x| x.1 as u64).sum();
                let mut r = rng.below(total);
                for (size, w) in v {
                    if r < *w as u64 {
                        return *size;
                    }
                    r -= *w as u64;
                }
                v[v.len() - 1].0
            }
        }
    }
}

/// One operation to send: which op, which entry of the connection's key list, value size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextOp {
    pub op: Op,
    pub slot: usize,
    pub value_len: usize,
}

enum Picker {
    Uniform,
    Zipfian(Zipf),
    Sequential(usize),
}

/// Turns a workload into operations over a list of `len` keys.
pub struct OpGen {
    mix: Mix,
    picker: Picker,
    sizes: ValueSizes,
    len: usize,
    rng: SplitMix64,
}

impl OpGen {
    /// `zipf` is shared by connections of one generator thread (building it costs O(keys)).
    pub fn new(
        mix: &Mix,
        dist: &KeyDist,
        zipf: Option<&Zipf>,
        sizes: &ValueSizes,
        len: usize,
        seed: u64,
    ) -> OpGen {
        let picker = match dist {
            KeyDist::Uniform => Picker::Uniform,
            KeyDist::Sequential => Picker::Sequential(0),
            KeyDist::Zipfian(_) => match zipf {
                Some(z) => Picker::Zipfian(z.clone()),
                None => Picker::Uniform,
            },
        };
        OpGen {
            mix: mix.clone(),
            picker,
            sizes: sizes.clone(),
            len: len.max(1),
            rng: SplitMix64::new(seed),
        }
    }

    /// A sequential walk starts at `slot` instead of 0, so that connections sharing one
    /// key list walk apart (each key written once until the walks meet).
    pub fn start_walk_at(&mut self, slot: usize) {
        if let Picker::Sequential(next) = &mut self.picker {
            *next = slot % self.len;
        }
    }

    pub fn next(&mut self) -> NextOp {
        let op = self.mix.pick(&mut self.rng);
        let slot = match &mut self.picker {
            Picker::Uniform => self.rng.below(self.len as u64) as usize,
            // A zipfian rank over the whole key space folds onto this list; rank 0 stays
            // the hottest entry of every list.
            Picker::Zipfian(z) => (z.sample(&mut self.rng) % self.len as u64) as usize,
            Picker::Sequential(next) => {
                let s = *next;
                *next = (s + 1) % self.len;
                s
            }
        };
        let value_len = if op == Op::Put {
            self.sizes.pick(&mut self.rng)
        } else {
            0
        };
        NextOp { op, slot, value_len }
    }

    /// Another entry of the key list, for when the chosen key is busy.
    pub fn other_slot(&mut self) -> usize {
        self.rng.below(self.len as u64) as usize
    }
}

/// Bytes in front of a verified value: key number and write number.
pub const TAG_BYTES: usize = 16;

/// Fills `buf` with the value of write `write` to key `key`: a tag, then bytes derived from
/// both, so that a value can be traced to the exact write that made it.
pub fn fill_value(key: u64, write: u32, buf: &mut [u8]) {
    let mut rng = value_rng(key, write);
    let tag_len = buf.len().min(TAG_BYTES);
    let mut tag = [0u8; TAG_BYTES];
    tag[..8].copy_from_slice(&key.to_le_bytes());
    tag[8..].copy_from_slice(&(write as u64).to_le_bytes());
    buf[..tag_len].copy_from_slice(&tag[..tag_len]);
    for chunk in buf[tag_len..].chunks_mut(8) {
        let r = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
}

fn value_rng(key: u64, write: u32) -> SplitMix64 {
    SplitMix64::new(key.rotate_left(32) ^ write as u64 ^ 0x5eed)
}

/// Which write made `value`, if its bytes are exactly what `fill_value` made (compared as
/// they are generated: no copy of the value per GET).
pub fn read_tag(value: &[u8]) -> Option<(u64, u32)> {
    if value.len() < TAG_BYTES {
        return None;
    }
    let key = u64::from_le_bytes(value[..8].try_into().ok()?);
    let write = u64::from_le_bytes(value[8..16].try_into().ok()?);
    let write = u32::try_from(write).ok()?;
    let mut rng = value_rng(key, write);
    let body_matches = value[TAG_BYTES..]
        .chunks(8)
        .all(|chunk| chunk == &rng.next_u64().to_le_bytes()[..chunk.len()]);
    body_matches.then_some((key, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixes_distributions_and_sizes() {
        assert_eq!(
            "get=90,put=9,del=1".parse::<Mix>().unwrap(),
            Mix {
                get: 90,
                put: 9,
                del: 1
            }
        );
        assert_eq!(
            "put".parse::<Mix>().unwrap(),
            Mix {
                get: 0,
                put: 1,
                del: 0
            }
        );
        assert!("get=x".parse::<Mix>().unwrap_err().contains("whole number"));
        assert!("scan=1".parse::<Mix>().unwrap_err().contains("scan"));
        assert!("get=0".parse::<Mix>().is_err());
        assert_eq!("zipfian:0.8".parse::<KeyDist>().unwrap(), KeyDist::Zipfian(0.8));
        assert_eq!("zipfian".parse::<KeyDist>().unwrap(), KeyDist::Zipfian(0.99));
        assert!("zipfian:1.5".parse::<KeyDist>().is_err());
        assert!("gaussian".parse::<KeyDist>().is_err());
        assert_eq!("4096".parse::<ValueSizes>().unwrap(), ValueSizes::Fixed(4096));
        assert_eq!("10-20".parse::<ValueSizes>().unwrap(), ValueSizes::Range(10, 20));
        assert_eq!(
            "512:3,4096:1".parse::<ValueSizes>().unwrap(),
            ValueSizes::Weighted(vec![(512, 3), (4096, 1)])
        );
        assert!("20-10".parse::<ValueSizes>().is_err());
        assert!("1k".parse::<ValueSizes>().is_err());
    }

    #[test]
    fn generator_follows_the_mix_and_sizes() {
        let mix: Mix = "get=70,put=20,del=10".parse().unwrap();
        let sizes: ValueSizes = "100-200".parse().unwrap();
        let mut g = OpGen::new(&mix, &KeyDist::Uniform, None, &sizes, 50, 3);
        let (mut get, mut put, mut del) = (0, 0, 0);
        for _ in 0..100_000 {
            let n = g.next();
            assert!(n.slot < 50);
            match n.op {
                Op::Get => get += 1,
                Op::Put => {
                    put += 1;
                    assert!((100..=200).contains(&n.value_len));
                }
                Op::Del => del += 1,
            }
        }
        assert!((69_000..71_000).contains(&get), "{get}");
        assert!((19_000..21_000).contains(&put), "{put}");
        assert!((9_000..11_000).contains(&del), "{del}");
    }

    #[test]
    fn sequential_walks_the_list_in_order() {
        let mix: Mix = "get".parse().unwrap();
        let mut g = OpGen::new(&mix, &KeyDist::Sequential, None, &ValueSizes::Fixed(1), 3, 1);
        let slots: Vec<usize> = (0..7).map(|_| g.next().slot).collect();
        assert_eq!(slots, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn weighted_sizes_follow_their_weights() {
        let sizes: ValueSizes = "1:3,2:1".parse().unwrap();
        let mut rng = SplitMix64::new(9);
        let ones = (0..40_000).filter(|_| sizes.pick(&mut rng) == 1).count();
        assert!((29_000..31_000).contains(&ones), "{ones}");
    }

    #[test]
    fn tagged_values_name_their_write_and_reject_any_change() {
        let mut v = vec![0u8; 300];
        fill_value(42, 7, &mut v);
        assert_eq!(read_tag(&v), Some((42, 7)));
        let mut w = v.clone();
        w[200] ^= 1;
        assert_eq!(read_tag(&w), None);
        fill_value(42, 8, &mut w);
        assert_ne!(v, w);
        assert_eq!(read_tag(&v[..10]), None);
    }
}
