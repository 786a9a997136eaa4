//! Redis's string operations on a value's bytes, as Redis 7 computes them (t_string.c,
//! bitops.c): GETRANGE's range, SETRANGE, SETBIT / GETBIT, BITCOUNT, BITPOS, LCS,
//! INCRBYFLOAT (in C, for its long double) and OBJECT ENCODING. No store, no socket: the
//! RESP front and the key's head call these on values they have read.

use hotshard_net::resp::command::{strict_integer, BitUnit, LcsReply};

/// GETRANGE's `start..=end` (negative: from the end) on a value of `len` bytes, as Redis
/// 7.0's getrangeCommand clamps it; None: the empty string.
pub fn getrange(len: u64, start: i64, end: i64) -> Option<(u64, u64)> {
    let len = len as i64;
    if start < 0 && end < 0 && start > end {
        return None;
    }
    let (start, end) = clamp_ends(len, start, end);
    (len > 0 && start <= end).then_some((start as u64, (end - start + 1) as u64))
}

/// Redis's clamping of an inclusive range on `total` units: negative ends counted from
/// the back, both at least 0, the end at most the last unit (so -1 when `total` is 0).
fn clamp_ends(total: i64, start: i64, end: i64) -> (i64, i64) {
    let from_back = |i: i64| if i < 0 { total.saturating_add(i) } else { i };
    let (start, end) = (from_back(start).max(0), from_back(end).max(0));
    (start, end.min(total - 1))
}

/// The value after SETRANGE: `old` (absent: empty) zero-padded to `offset` and `patch`
/// written there. The caller has checked `offset + patch.len()` against its limit.
pub fn setrange(old: &[u8], offset: usize, patch: &[u8]) -> Vec<u8> {
    let mut v = old.to_vec();
    let end = offset + patch.len();
    if v.len() < end {
        v.resize(end, 0);
    }
    v[offset..end].copy_from_slice(patch);
    v
}

/// Bit `offset` of `v` (bit 0: the first byte's highest); 0 past the end.
pub fn getbit(v: &[u8], offset: u64) -> bool {
    let byte = (offset >> 3) as usize;
    v.get(byte).is_some_and(|b| b & (1 << (7 - (offset & 7))) != 0)
}

/// The value after SETBIT, and the bit's old value.
pub fn setbit(old: &[u8], offset: u64, bit: bool) -> (Vec<u8>, bool) {
    let byte = (offset >> 3) as usize;
    let mut v = old.to_vec();
    if v.len() <= byte {
        v.resize(byte + 1, 0);
    }
    let mask = 1u8 << (7 - (offset & 7));
    let was = v[byte] & mask != 0;
    if bit {
        v[byte] |= mask;
    } else {
        v[byte] &= !mask;
    }
    (v, was)
}

fn popcount(v: &[u8]) -> i64 {
    v.iter().map(|b| b.count_ones() as i64).sum()
}

/// A range of bytes or bits made absolute as bitcountCommand and bitposCommand do:
/// negative ends from the back, clamped; for bits, the byte range and the masks of the bits
/// of its first and last byte that fall outside.
struct BitRange {
    start: i64,
    end: i64,
    first_mask: u8,
    last_mask: u8,
}

fn bit_range(len: usize, start: i64, end: i64, unit: BitUnit) -> BitRange {
    let mut total = len as i64;
    if unit == BitUnit::Bit {
        total <<= 3;
    }
    let (mut start, mut end) = clamp_ends(total, start, end);
    let (mut first_mask, mut last_mask) = (0u8, 0u8);
    if unit == BitUnit::Bit && start <= end {
        first_mask = (!((1u32 << (8 - (start & 7))) - 1) & 0xFF) as u8;
        last_mask = ((1u32 << (7 - (end & 7))) - 1) as u8;
        start >>= 3;
        end >>= 3;
    }
    BitRange {
        start,
        end,
        first_mask,
        last_mask,
    }
}

/// BITCOUNT over `v`, whole or in `range`.
pub fn bitcount(v: &[u8], range: Option<(i64, i64, BitUnit)>) -> i64 {
    let Some((start, end, unit)) = range else {
        return popcount(v);
    };
    if start < 0 && end < 0 && start > end {
        return 0;
    }
    let r = bit_range(v.len(), start, end, unit);
    if r.start > r.end {
        return 0;
    }
    let (s, e) = (r.start as usize, r.end as usize);
    let mut count = popcount(&v[s..=e]);
    if r.first_mask != 0 {
        count -= (v[s] & r.first_mask).count_ones() as i64;
    }
    if r.last_mask != 0 {
        count -= (v[e] & r.last_mask).count_ones() as i64;
    }
    count
}

/// Redis's redisBitpos: the first bit equal to `bit` in `v`; -1 if looking for a 1 and
/// there is none, `8 * len` if looking for a 0 and every bit is 1.
fn first_bit(v: &[u8], bit: bool) -> i64 {
    for (i, &b) in v.iter().enumerate() {
        let b = if bit { b } else { !b };
        if b != 0 {
            return i as i64 * 8 + b.leading_zeros() as i64;
        }
    }
    if bit {
        -1
    } else {
        v.len() as i64 * 8
    }
}

/// BITPOS over `v` (the key exists) from `start` to `end` (None: not given).
pub fn bitpos(v: &[u8], bit: bool, start: Option<i64>, end: Option<i64>, unit: BitUnit) -> i64 {
    let end_given = end.is_some();
    let r = match start {
        None => BitRange {
            start: 0,
            end: v.len() as i64 - 1,
            first_mask: 0,
            last_mask: 0,
        },
        Some(s) => {
            let e = end.unwrap_or(match unit {
                BitUnit::Bit => ((v.len() as i64) << 3) + 7,
                BitUnit::Byte => v.len() as i64 - 1,
            });
            bit_range(v.len(), s, e, unit)
        }
    };
    if r.start > r.end {
        return -1;
    }
    let (mut start, end) = (r.start as usize, r.end as usize);
    let mut bytes = end - start + 1;
    let pos = 'found: {
        if r.first_mask != 0 {
            let mut c = if bit {
                v[start] & !r.first_mask
            } else {
                v[start] | r.first_mask
            };
            if r.last_mask != 0 && bytes == 1 {
                c = if bit { c & !r.last_mask } else { c | r.last_mask };
            }
            let pos = first_bit(&[c], bit);
            if bytes == 1 || (pos != -1 && pos != 8) {
                break 'found pos;
            }
            start += 1;
            bytes -= 1;
        }
        let whole = bytes - usize::from(r.last_mask != 0);
        if whole > 0 {
            let pos = first_bit(&v[start..start + whole], bit);
            if bytes == whole || (pos != -1 && pos != (whole as i64) << 3) {
                break 'found pos;
            }
            start += whole;
            bytes -= whole;
        }
        let c = if bit {
            v[end] & !r.last_mask
        } else {
            v[end] | r.last_mask
        };
        first_bit(&[c], bit)
    };
    if end_given && !bit && pos == (bytes as i64) << 3 {
        return -1;
    }
    if pos != -1 {
        pos + ((start as i64) << 3)
    } else {
        pos
    }
}

/// Most cells (4 bytes each) of the table LCS builds: the command runs on the shard's core,
/// so its table and its time are bounded (4 MiB: about 4 ms at most; 4M cells took
/// 17.7 ms here, `lcs` in a release build).
pub const LCS_MAX_CELLS: u64 = 1 << 20;

/// The error for two values whose LCS table would pass `LCS_MAX_CELLS`.
pub fn lcs_too_large() -> String {
    format!(
        "ERR Insufficient memory, transient memory for LCS exceeds this node's limit of {} MiB",
        (LCS_MAX_CELLS * 4) >> 20
    )
}

/// One run LCS IDX reports: its inclusive ranges in each value, and its length.
#[derive(Debug, PartialEq, Eq)]
pub struct LcsMatch {
    pub a: (u64, u64),
    pub b: (u64, u64),
    pub len: u64,
}

/// A reply piece of LCS, for the front to encode.
#[derive(Debug, PartialEq, Eq)]
pub enum LcsAnswer {
    String(Vec<u8>),
    Len(i64),
    /// The matching runs, and the LCS's length.
    Idx(Vec<LcsMatch>, i64),
}

/// LCS of `a` and `b` as Redis 7.0's lcsCommand computes it (the same table, the same walk
/// back, so the same string and the same ranges when several are equally long). Err when
/// its table would pass `LCS_MAX_CELLS`.
pub fn lcs(a: &[u8], b: &[u8], reply: LcsReply) -> Result<LcsAnswer, String> {
    let (alen, blen) = (a.len(), b.len());
    let cells = (alen as u64 + 1) * (blen as u64 + 1);
    if cells > LCS_MAX_CELLS {
        return Err(lcs_too_large());
    }
    let w = blen + 1;
    let mut t = vec![0u32; cells as usize];
    for i in 1..=alen {
        for j in 1..=blen {
            t[i * w + j] = if a[i - 1] == b[j - 1] {
                t[(i - 1) * w + j - 1] + 1
            } else {
                t[(i - 1) * w + j].max(t[i * w + j - 1])
            };
        }
    }
    let total = t[alen * w + blen];
    let (idx_mode, min_len) = match reply {
        LcsReply::Len => return Ok(LcsAnswer::Len(total as i64)),
        LcsReply::String => (false, 0),
        LcsReply::Idx { min_match_len, .. } => (true, min_match_len),
    };
    let mut result = vec![0u8; total as usize];
    let mut idx = total as usize;
    let mut matches = Vec::new();
    let unset = alen;
    let (mut a_start, mut a_end, mut b_start, mut b_end) = (unset, 0usize, 0usize, 0usize);
    let (mut i, mut j) = (alen, blen);
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            result[idx - 1] = a[i - 1];
            if a_start == unset {
                a_start = i - 1;
                a_end = i - 1;
                b_start = j - 1;
                b_end = j - 1;
            } else if a_start == i && b_start == j {
                a_start -= 1;
                b_start -= 1;
            } else {
                emit = true;
            }
            if a_start == 0 || b_start == 0 {
                emit = true;
            }
            idx -= 1;
            i -= 1;
            j -= 1;
        } else {
            if t[(i - 1) * w + j] > t[i * w + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            if a_start != unset {
                emit = true;
            }
        }
        let match_len = (a_end as i64 - a_start as i64 + 1) as u64;
        if emit {
            if idx_mode && (min_len == 0 || match_len >= min_len) {
                matches.push(LcsMatch {
                    a: (a_start as u64, a_end as u64),
                    b: (b_start as u64, b_end as u64),
                    len: match_len,
                });
            }
            a_start = unset;
        }
    }
    Ok(if idx_mode {
        LcsAnswer::Idx(matches, total as i64)
    } else {
        LcsAnswer::String(result)
    })
}

extern "C" {
    fn hotshard_incrbyfloat(
        old: *const u8,
        old_len: usize,
        has_old: i32,
        incr: *const u8,
        incr_len: usize,
        out: *mut u8,
        out_len: usize,
    ) -> std::os::raw::c_long;
}

/// Bytes INCRBYFLOAT's result may take (Redis's MAX_LONG_DOUBLE_CHARS).
const LONG_DOUBLE_CHARS: usize = 5 * 1024;

/// INCRBYFLOAT: `old` (None: absent, read as 0) plus `incr`, as Redis 7 prints it; the
/// error reply's text otherwise.
pub fn incrbyfloat(old: Option<&[u8]>, incr: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = vec![0u8; LONG_DOUBLE_CHARS];
    let (old_ptr, old_len) = old.map_or((std::ptr::null(), 0), |o| (o.as_ptr(), o.len()));
    // SAFETY: every pointer is valid for the length given with it, and `out` for its own;
    // the C function reads and writes only within them (it copies each input into a
    // buffer of its own after checking its length, and writes at most `out_len` bytes).
    let n = unsafe {
        hotshard_incrbyfloat(
            old_ptr,
            old_len,
            i32::from(old.is_some()),
            incr.as_ptr(),
            incr.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    };
    match n {
        -2 => Err("increment would produce NaN or Infinity"),
        n if n < 0 => Err("value is not a valid float"),
        n => {
            out.truncate(n as usize);
            Ok(out)
        }
    }
}

/// OBJECT ENCODING for a string value as Redis encodes one that SET stored: `int` for an
/// integer Redis reads as one, `embstr` up to 44 bytes, `raw` past.
pub fn object_encoding(v: &[u8]) -> &'static str {
    if v.len() <= 20 && strict_integer(v).is_some() {
        "int"
    } else if v.len() <= 44 {
        "embstr"
    } else {
        "raw"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_clamps_as_redis() {
        assert_eq!(getrange(16, 0, 3), Some((0, 4)));
        assert_eq!(getrange(16, -3, -1), Some((13, 3)));
        assert_eq!(getrange(16, -100, -50), Some((0, 1)));
        assert_eq!(getrange(16, -1, -5), None);
        assert_eq!(getrange(16, 16, 20), None);
        assert_eq!(getrange(16, 3, -100), None);
        assert_eq!(getrange(0, 0, -1), None);
        assert_eq!(getrange(16, i64::MIN, i64::MAX), Some((0, 16)));
    }

    #[test]
    fn bits_count_and_are_found_as_redis_finds_them() {
        assert_eq!(bitcount(b"foobar", None), 26);
        assert_eq!(bitcount(b"foobar", Some((1, 1, BitUnit::Byte))), 6);
        assert_eq!(bitcount(b"foobar", Some((5, 30, BitUnit::Bit))), 17);
        assert_eq!(bitcount(b"foobar", Some((-100, -50, BitUnit::Byte))), 4);
        assert_eq!(bitcount(b"", Some((0, -1, BitUnit::Bit))), 0);
        assert_eq!(bitpos(b"\xff\xf0\x00", false, None, None, BitUnit::Byte), 12);
        assert_eq!(bitpos(b"\x00\xff\xf0", true, Some(7), Some(15), BitUnit::Bit), 8);
        assert_eq!(
            bitpos(b"\x00\xff\xf0", false, Some(8), Some(-1), BitUnit::Bit),
            20
        );
        assert_eq!(bitpos(b"\xff\xff", false, None, None, BitUnit::Byte), 16);
        assert_eq!(bitpos(b"\xff\xff", false, Some(0), Some(-1), BitUnit::Byte), -1);
        assert_eq!(bitpos(b"", true, Some(0), None, BitUnit::Byte), -1);
        let (v, was) = setbit(b"", 100, true);
        assert_eq!(
            (v.len(), was, getbit(&v, 100), getbit(&v, 99)),
            (13, false, true, false)
        );
    }

    #[test]
    fn lcs_walks_back_as_redis() {
        assert_eq!(
            lcs(b"ohmytext", b"mynewtext", LcsReply::String),
            Ok(LcsAnswer::String(b"mytext".to_vec()))
        );
        assert_eq!(
            lcs(
                b"ohmytext",
                b"mynewtext",
                LcsReply::Idx {
                    min_match_len: 0,
                    with_match_len: true
                }
            ),
            Ok(LcsAnswer::Idx(
                vec![
                    LcsMatch {
                        a: (4, 7),
                        b: (5, 8),
                        len: 4
                    },
                    LcsMatch {
                        a: (2, 3),
                        b: (0, 1),
                        len: 2
                    }
                ],
                6
            ))
        );
        assert!(lcs(&[0; 1024], &[0; 1024], LcsReply::Len).is_err());
        assert!(lcs(&[0; 1000], &[0; 1000], LcsReply::Len).is_ok());
    }

    #[test]
    fn incrbyfloat_prints_as_redis() {
        let f = |old: Option<&str>, by: &str| {
            incrbyfloat(old.map(str::as_bytes), by.as_bytes()).map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(f(None, "10.5"), Ok("10.5".into()));
        assert_eq!(f(Some("0.1"), "0.2"), Ok("0.3".into()));
        assert_eq!(f(Some("10.5"), "0.1"), Ok("10.6".into()));
        assert_eq!(f(Some("10.6"), "-5.0e3"), Ok("-4989.39999999999999991".into()));
        assert_eq!(f(None, "0x10"), Ok("16".into()));
        assert_eq!(f(Some("3"), "-3"), Ok("0".into()));
        assert_eq!(f(None, "inf"), Err("increment would produce NaN or Infinity"));
        assert_eq!(f(None, "nan"), Err("value is not a valid float"));
        assert_eq!(f(None, " 1"), Err("value is not a valid float"));
        assert_eq!(f(None, ""), Err("value is not a valid float"));
        assert_eq!(f(Some("abc"), "1"), Err("value is not a valid float"));
        assert_eq!(f(None, &"1".repeat(6000)), Err("value is not a valid float"));
    }

    #[test]
    fn encodings_follow_the_value() {
        assert_eq!(object_encoding(b"12345"), "int");
        assert_eq!(object_encoding(b"007"), "embstr");
        assert_eq!(object_encoding(&[b'x'; 44]), "embstr");
        assert_eq!(object_encoding(&[b'x'; 45]), "raw");
    }
}
