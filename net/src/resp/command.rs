//! A RESP command's arguments read into what it asks (issue 21), with Redis's own error
//! texts for a wrong argument count, a syntax error, a bad integer or an unknown command.
//! Keys and values stay slices of the buffer they arrived in. No socket, no store.

/// When a key expires, as a command states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Seconds from now (EX).
    In(u64),
    /// Milliseconds from now (PX).
    InMillis(u64),
    /// Unix seconds (EXAT).
    At(u64),
    /// Unix milliseconds (PXAT).
    AtMillis(u64),
}

/// SET's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetIf {
    Always,
    /// NX: only if the key is absent.
    Absent,
    /// XX: only if it is present.
    Present,
}

/// EXPIRE's condition (Redis 7): NX alone, or XX with or without one of GT and LT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireIf {
    Always,
    /// NX.
    NoExpiry,
    /// XX.
    HasExpiry,
    /// GT (with or without XX: GT needs an expiry anyway).
    Later,
    /// LT.
    Sooner,
    /// XX LT.
    HasExpirySooner,
}

/// What LCS answers: the string, its length, or the matching ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LcsReply {
    String,
    Len,
    Idx {
        min_match_len: u64,
        with_match_len: bool,
    },
}

/// A bit range's unit (BITCOUNT, BITPOS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitUnit {
    Byte,
    Bit,
}

/// What GETEX does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetExpiry {
    Keep,
    Set(Expiry),
    Persist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespCommand<'a> {
    Ping(Option<&'a [u8]>),
    Echo(&'a [u8]),
    Hello {
        protover: Option<i64>,
        auth: Option<(&'a [u8], &'a [u8])>,
    },
    Auth {
        user: Option<&'a [u8]>,
        password: &'a [u8],
    },
    Select(i64),
    Quit,
    ClientSetName(&'a [u8]),
    ClientGetName,
    ClientSetInfo,
    ClientId,
    /// COMMAND and its subcommand and arguments.
    Command(Vec<&'a [u8]>),
    Info(Option<&'a [u8]>),
    DbSize,
    Get(&'a [u8]),
    Set {
        key: &'a [u8],
        value: &'a [u8],
        cond: SetIf,
        expiry: Option<Expiry>,
        keep_ttl: bool,
        get: bool,
    },
    GetDel(&'a [u8]),
    GetEx(&'a [u8], GetExpiry),
    GetRange(&'a [u8], i64, i64),
    StrLen(&'a [u8]),
    Append(&'a [u8], &'a [u8]),
    IncrBy(&'a [u8], i64),
    Del(Vec<&'a [u8]>),
    Exists(Vec<&'a [u8]>),
    MGet(Vec<&'a [u8]>),
    MSet(Vec<(&'a [u8], &'a [u8])>),
    /// EXPIRE, PEXPIRE, EXPIREAT or PEXPIREAT (named, lower-case, for its errors).
    Expire(&'a [u8], Expiry, ExpireIf, &'static str),
    Ttl(&'a [u8], bool),
    Persist(&'a [u8]),
    Type(&'a [u8]),
    Scan {
        cursor: u64,
        pattern: Option<&'a [u8]>,
        count: Option<u64>,
    },
    Keys(&'a [u8]),
    /// FLUSHALL (false) or FLUSHDB (true).
    FlushAll(bool),
    /// SETNX: SET NX answered 1 or 0.
    SetNx(&'a [u8], &'a [u8]),
    /// MSETNX.
    MSetNx(Vec<(&'a [u8], &'a [u8])>),
    SetRange(&'a [u8], u64, &'a [u8]),
    IncrByFloat(&'a [u8], &'a [u8]),
    Lcs(&'a [u8], &'a [u8], LcsReply),
    GetBit(&'a [u8], u64),
    SetBit(&'a [u8], u64, bool),
    BitCount(&'a [u8], Option<(i64, i64, BitUnit)>),
    /// BITPOS key bit, and the range's arguments as given: Redis reads them only once it
    /// has found the key.
    BitPos(&'a [u8], bool, Vec<&'a [u8]>),
    /// EXPIRETIME (false) or PEXPIRETIME (true).
    ExpireTime(&'a [u8], bool),
    Time,
    RandomKey,
    /// RENAME (false) or RENAMENX (true).
    Rename(&'a [u8], &'a [u8], bool),
    /// COPY source destination, with REPLACE.
    Copy(&'a [u8], &'a [u8], bool),
    Touch(Vec<&'a [u8]>),
    ObjectEncoding(&'a [u8]),
    ConfigGet(Vec<&'a [u8]>),
    ConfigSet(Vec<(&'a [u8], &'a [u8])>),
    Wait(i64, i64),
}

/// The command's name as the table spells it, or None for one it does not hold: a
/// case-insensitive comparison, no allocation (what the metrics count by).
pub fn table_name(name: &[u8]) -> Option<&'static str> {
    TABLE
        .iter()
        .find(|(n, ..)| n.as_bytes().eq_ignore_ascii_case(name))
        .map(|(n, ..)| *n)
}

/// Every command this front answers, as COMMAND lists it: name, Redis's arity (negative:
/// at least that many), whether it writes, first and last key position (0: no key; -1:
/// the last argument).
pub const TABLE: &[(&str, i64, bool, i64, i64)] = &[
    ("PING", -1, false, 0, 0),
    ("ECHO", 2, false, 0, 0),
    ("HELLO", -1, false, 0, 0),
    ("AUTH", -2, false, 0, 0),
    ("SELECT", 2, false, 0, 0),
    ("QUIT", -1, false, 0, 0),
    ("CLIENT", -2, false, 0, 0),
    ("COMMAND", -1, false, 0, 0),
    ("INFO", -1, false, 0, 0),
    ("DBSIZE", 1, false, 0, 0),
    ("GET", 2, false, 1, 1),
    ("SET", -3, true, 1, 1),
    ("SETNX", 3, true, 1, 1),
    ("SETEX", 4, true, 1, 1),
    ("PSETEX", 4, true, 1, 1),
    ("GETDEL", 2, true, 1, 1),
    ("GETEX", -2, true, 1, 1),
    ("GETRANGE", 4, false, 1, 1),
    ("STRLEN", 2, false, 1, 1),
    ("APPEND", 3, true, 1, 1),
    ("INCR", 2, true, 1, 1),
    ("DECR", 2, true, 1, 1),
    ("INCRBY", 3, true, 1, 1),
    ("DECRBY", 3, true, 1, 1),
    ("DEL", -2, true, 1, -1),
    ("UNLINK", -2, true, 1, -1),
    ("EXISTS", -2, false, 1, -1),
    ("MGET", -2, false, 1, -1),
    ("MSET", -3, true, 1, -1),
    ("EXPIRE", -3, true, 1, 1),
    ("PEXPIRE", -3, true, 1, 1),
    ("EXPIREAT", -3, true, 1, 1),
    ("PEXPIREAT", -3, true, 1, 1),
    ("TTL", 2, false, 1, 1),
    ("PTTL", 2, false, 1, 1),
    ("PERSIST", 2, true, 1, 1),
    ("TYPE", 2, false, 1, 1),
    ("SCAN", -2, false, 0, 0),
    ("KEYS", 2, false, 0, 0),
    ("FLUSHALL", -1, true, 0, 0),
    ("FLUSHDB", -1, true, 0, 0),
    ("GETSET", 3, true, 1, 1),
    ("MSETNX", -3, true, 1, -1),
    ("SETRANGE", 4, true, 1, 1),
    ("SUBSTR", 4, false, 1, 1),
    ("INCRBYFLOAT", 3, true, 1, 1),
    ("LCS", -3, false, 1, 2),
    ("GETBIT", 3, false, 1, 1),
    ("SETBIT", 4, true, 1, 1),
    ("BITCOUNT", -2, false, 1, 1),
    ("BITPOS", -3, false, 1, 1),
    ("EXPIRETIME", 2, false, 1, 1),
    ("PEXPIRETIME", 2, false, 1, 1),
    ("TIME", 1, false, 0, 0),
    ("RANDOMKEY", 1, false, 0, 0),
    ("RENAME", 3, true, 1, 2),
    ("RENAMENX", 3, true, 1, 2),
    ("COPY", -3, true, 1, 2),
    ("TOUCH", -2, false, 1, -1),
    ("OBJECT", -2, false, 0, 0),
    ("CONFIG", -2, false, 0, 0),
    ("WAIT", 3, false, 0, 0),
];

impl RespCommand<'_> {
    /// The keys the command names, or None when it reads or changes the whole keyspace.
    pub fn keys(&self) -> Option<Vec<&[u8]>> {
        use RespCommand as C;
        Some(match self {
            C::Get(k)
            | C::Set { key: k, .. }
            | C::GetDel(k)
            | C::GetEx(k, _)
            | C::GetRange(k, _, _)
            | C::StrLen(k)
            | C::Append(k, _)
            | C::IncrBy(k, _)
            | C::Expire(k, ..)
            | C::Ttl(k, _)
            | C::Persist(k)
            | C::Type(k)
            | C::SetNx(k, _)
            | C::SetRange(k, _, _)
            | C::IncrByFloat(k, _)
            | C::GetBit(k, _)
            | C::SetBit(k, _, _)
            | C::BitCount(k, _)
            | C::BitPos(k, _, _)
            | C::ExpireTime(k, _)
            | C::ObjectEncoding(k) => vec![*k],
            C::Lcs(a, b, _) | C::Rename(a, b, _) | C::Copy(a, b, _) => vec![*a, *b],
            C::Del(ks) | C::Exists(ks) | C::MGet(ks) | C::Touch(ks) => ks.clone(),
            C::MSet(pairs) | C::MSetNx(pairs) => pairs.iter().map(|(k, _)| *k).collect(),
            C::Scan { .. }
            | C::Keys(_)
            | C::DbSize
            | C::FlushAll(_)
            | C::Info(_)
            | C::RandomKey
            | C::Wait(..) => return None,
            _ => Vec::new(),
        })
    }
}

fn wrong_args(name: &str) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )
}

const SYNTAX: &str = "ERR syntax error";
const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

fn int(a: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(a)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| NOT_INTEGER.to_string())
}

fn invalid_expire(command: &str) -> String {
    format!("ERR invalid expire time in '{command}' command")
}

/// The latest expiry a record holds: Unix milliseconds fit in 48 bits (the year 10889).
pub const MAX_EXPIRY_MS: i64 = (1 << 48) - 1;

/// A positive expiry time of SET, SETEX, PSETEX or GETEX, refused as Redis refuses it
/// (not positive, or overflowing an i64 once made milliseconds and absolute), and past
/// what a record holds with the same text.
fn positive(a: &[u8], command: &str, seconds: bool, relative: bool) -> Result<u64, String> {
    let n = int(a)?;
    let ms = match n {
        n if n <= 0 => None,
        n if seconds => n.checked_mul(1000),
        n => Some(n),
    };
    let at = ms.and_then(|ms| {
        if relative {
            ms.checked_add(now_ms() as i64)
        } else {
            Some(ms)
        }
    });
    match at {
        Some(at) if at <= MAX_EXPIRY_MS => Ok(n as u64),
        _ => Err(invalid_expire(command)),
    }
}

/// Redis's `string2ll`: a decimal i64 with no sign but '-', no leading zero, no space.
pub fn strict_integer(v: &[u8]) -> Option<i64> {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    let ok = match digits {
        [b'0'] => v.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !ok || v.len() > 20 {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse::<i64>().ok()
}

/// The name an error quotes for command `name`, as Redis's `fullname` spells it.
fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The table's lower-case spelling of `name` (static, for a command to carry).
fn command_name(name: &str) -> &'static str {
    match name {
        "EXPIRE" => "expire",
        "PEXPIRE" => "pexpire",
        "EXPIREAT" => "expireat",
        "PEXPIREAT" => "pexpireat",
        _ => "unknown",
    }
}

/// Redis's error for a subcommand it does not know.
fn unknown_subcommand(sub: &[u8], command: &str) -> String {
    format!(
        "ERR unknown subcommand '{}'. Try {command} HELP.",
        String::from_utf8_lossy(sub)
    )
}

/// EXPIRE's NX / XX / GT / LT, combined as Redis 7 allows them (checked before the time).
fn expire_condition(options: &[&[u8]]) -> Result<ExpireIf, String> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in options {
        match String::from_utf8_lossy(o).to_ascii_uppercase().as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => return Err(format!("ERR Unsupported option {}", String::from_utf8_lossy(o))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
    }
    if gt && lt {
        return Err("ERR GT and LT options at the same time are not compatible".into());
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireIf::NoExpiry,
        (_, _, true, _) => ExpireIf::Later,
        (_, true, _, true) => ExpireIf::HasExpirySooner,
        (_, _, _, true) => ExpireIf::Sooner,
        (_, true, ..) => ExpireIf::HasExpiry,
        _ => ExpireIf::Always,
    })
}

/// An EXPIRE-family time as Redis checks it: the unit conversion and the base time must
/// not overflow an i64 (a time in the past is fine: it deletes the key). A relative time
/// stays relative (the head's clock applies it); one in the past becomes 0 ms from now,
/// an absolute one at or before 1970 becomes 0.
fn expire_time(t: &[u8], name: &str, now_ms: i64) -> Result<Expiry, String> {
    let when = int(t)?;
    let (seconds, relative) = match name {
        "EXPIRE" => (true, true),
        "PEXPIRE" => (false, true),
        "EXPIREAT" => (true, false),
        _ => (false, false),
    };
    let when = if seconds {
        when.checked_mul(1000)
            .ok_or_else(|| invalid_expire(&lower(name)))?
    } else {
        when
    };
    if relative {
        when.checked_add(now_ms)
            .ok_or_else(|| invalid_expire(&lower(name)))?;
        Ok(Expiry::InMillis(when.max(0) as u64))
    } else {
        Ok(Expiry::AtMillis(when.max(0) as u64))
    }
}

/// Redis's reply to a command it does not know: its name and the first arguments, quoted.
fn unknown(args: &[&[u8]]) -> String {
    let name = String::from_utf8_lossy(args[0]);
    let shown: String = args[1..]
        .iter()
        .take(8)
        .map(|a| format!("'{}' ", String::from_utf8_lossy(&a[..a.len().min(128)])))
        .collect();
    format!("ERR unknown command '{name}', with args beginning with: {shown}")
}

/// Reads `args` (the command's name first) into a command; Err is the error reply.
pub fn parse<'a>(args: &[&'a [u8]]) -> Result<RespCommand<'a>, String> {
    let Some(first) = args.first() else {
        return Err("ERR empty command".into());
    };
    // The name upper-cased on the stack (every command here is at most 16 bytes long): no
    // allocation per command.
    let mut upper = [0u8; 16];
    let name: &str = match first.len() {
        n @ 1..=16 => {
            upper[..n].copy_from_slice(first);
            upper[..n].make_ascii_uppercase();
            std::str::from_utf8(&upper[..n]).unwrap_or("")
        }
        _ => "",
    };
    let rest = &args[1..];
    let n = rest.len();
    let exact = |want: usize| if n == want { Ok(()) } else { Err(wrong_args(name)) };
    let at_least = |want: usize| if n >= want { Ok(()) } else { Err(wrong_args(name)) };
    use RespCommand as C;
    Ok(match name {
        "PING" => {
            if n > 1 {
                return Err(wrong_args(name));
            }
            C::Ping(rest.first().copied())
        }
        "ECHO" => exact(1).map(|_| C::Echo(rest[0]))?,
        "HELLO" => {
            let protover = rest.first().map(|a| int(a)).transpose()?;
            let mut auth = None;
            let mut i = 1;
            while i < n {
                match String::from_utf8_lossy(rest[i]).to_ascii_uppercase().as_str() {
                    "AUTH" if i + 2 < n => {
                        auth = Some((rest[i + 1], rest[i + 2]));
                        i += 3;
                    }
                    "SETNAME" if i + 1 < n => i += 2,
                    _ => return Err(SYNTAX.into()),
                }
            }
            C::Hello { protover, auth }
        }
        "AUTH" => match n {
            1 => C::Auth {
                user: None,
                password: rest[0],
            },
            2 => C::Auth {
                user: Some(rest[0]),
                password: rest[1],
            },
            _ => return Err(SYNTAX.into()),
        },
        "SELECT" => exact(1).and_then(|_| int(rest[0])).map(C::Select)?,
        "QUIT" => C::Quit,
        "CLIENT" => {
            at_least(1)?;
            match String::from_utf8_lossy(rest[0]).to_ascii_uppercase().as_str() {
                "SETNAME" if n == 2 => C::ClientSetName(rest[1]),
                "GETNAME" if n == 1 => C::ClientGetName,
                "SETINFO" if n == 3 => C::ClientSetInfo,
                "ID" if n == 1 => C::ClientId,
                _ => {
                    return Err(format!(
                        "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                        String::from_utf8_lossy(rest[0])
                    ))
                }
            }
        }
        "COMMAND" => C::Command(rest.to_vec()),
        "INFO" => C::Info(rest.first().copied()),
        "DBSIZE" => exact(0).map(|_| C::DbSize)?,
        "GET" => exact(1).map(|_| C::Get(rest[0]))?,
        "SET" => parse_set(rest)?,
        "SETNX" => exact(2).map(|_| C::SetNx(rest[0], rest[1]))?,
        "GETSET" => exact(2).map(|_| C::Set {
            key: rest[0],
            value: rest[1],
            cond: SetIf::Always,
            expiry: None,
            keep_ttl: false,
            get: true,
        })?,
        "MSETNX" => {
            if n == 0 || n % 2 == 1 {
                return Err(wrong_args(name));
            }
            C::MSetNx(rest.chunks(2).map(|p| (p[0], p[1])).collect())
        }
        "SETRANGE" => {
            exact(3)?;
            match int(rest[1])? {
                o if o < 0 => return Err("ERR offset is out of range".into()),
                o => C::SetRange(rest[0], o as u64, rest[2]),
            }
        }
        "INCRBYFLOAT" => exact(2).map(|_| C::IncrByFloat(rest[0], rest[1]))?,
        "LCS" => {
            at_least(2)?;
            let (mut idx, mut len, mut with_match_len, mut min_match_len) = (false, false, false, 0);
            let mut i = 2;
            while i < n {
                match String::from_utf8_lossy(rest[i]).to_ascii_uppercase().as_str() {
                    "IDX" => idx = true,
                    "LEN" => len = true,
                    "WITHMATCHLEN" => with_match_len = true,
                    "MINMATCHLEN" if i + 1 < n => {
                        min_match_len = int(rest[i + 1])?.max(0) as u64;
                        i += 1;
                    }
                    _ => return Err(SYNTAX.into()),
                }
                i += 1;
            }
            if idx && len {
                return Err("ERR If you want both the length and indexes, please just use IDX.".into());
            }
            let reply = match (idx, len) {
                (true, _) => LcsReply::Idx {
                    min_match_len,
                    with_match_len,
                },
                (_, true) => LcsReply::Len,
                _ => LcsReply::String,
            };
            C::Lcs(rest[0], rest[1], reply)
        }
        "GETBIT" => {
            exact(2)?;
            C::GetBit(rest[0], bit_offset(rest[1])?)
        }
        "SETBIT" => {
            exact(3)?;
            let offset = bit_offset(rest[1])?;
            let bit = match strict_integer(rest[2]) {
                Some(b @ (0 | 1)) => b == 1,
                _ => return Err("ERR bit is not an integer or out of range".into()),
            };
            C::SetBit(rest[0], offset, bit)
        }
        "BITCOUNT" => {
            at_least(1)?;
            let range = match &rest[1..] {
                [] => None,
                [start, end, unit @ ..] if unit.len() <= 1 => {
                    let (start, end) = (int(start)?, int(end)?);
                    let unit = match unit.first() {
                        None => BitUnit::Byte,
                        Some(u) => bit_unit(u)?,
                    };
                    Some((start, end, unit))
                }
                _ => return Err(SYNTAX.into()),
            };
            C::BitCount(rest[0], range)
        }
        "BITPOS" => {
            at_least(2)?;
            let bit = match int(rest[1])? {
                b @ (0 | 1) => b == 1,
                _ => return Err("ERR The bit argument must be 1 or 0.".into()),
            };
            C::BitPos(rest[0], bit, rest[2..].to_vec())
        }
        "EXPIRETIME" => exact(1).map(|_| C::ExpireTime(rest[0], false))?,
        "PEXPIRETIME" => exact(1).map(|_| C::ExpireTime(rest[0], true))?,
        "TIME" => exact(0).map(|_| C::Time)?,
        "RANDOMKEY" => exact(0).map(|_| C::RandomKey)?,
        "RENAME" => exact(2).map(|_| C::Rename(rest[0], rest[1], false))?,
        "RENAMENX" => exact(2).map(|_| C::Rename(rest[0], rest[1], true))?,
        "COPY" => {
            at_least(2)?;
            let mut replace = false;
            let mut i = 2;
            while i < n {
                match String::from_utf8_lossy(rest[i]).to_ascii_uppercase().as_str() {
                    "REPLACE" => replace = true,
                    "DB" if i + 1 < n => {
                        if int(rest[i + 1])? != 0 {
                            return Err("ERR DB index is out of range".into());
                        }
                        i += 1;
                    }
                    _ => return Err(SYNTAX.into()),
                }
                i += 1;
            }
            C::Copy(rest[0], rest[1], replace)
        }
        "TOUCH" => at_least(1).map(|_| C::Touch(rest.to_vec()))?,
        "OBJECT" => {
            at_least(1)?;
            match String::from_utf8_lossy(rest[0]).to_ascii_uppercase().as_str() {
                "ENCODING" if n == 2 => C::ObjectEncoding(rest[1]),
                "ENCODING" => return Err(wrong_args("object|encoding")),
                _ => return Err(unknown_subcommand(rest[0], "OBJECT")),
            }
        }
        "CONFIG" => {
            at_least(1)?;
            match String::from_utf8_lossy(rest[0]).to_ascii_uppercase().as_str() {
                "GET" if n >= 2 => C::ConfigGet(rest[1..].to_vec()),
                "GET" => return Err(wrong_args("config|get")),
                "SET" if n >= 3 && n % 2 == 1 => {
                    C::ConfigSet(rest[1..].chunks(2).map(|p| (p[0], p[1])).collect())
                }
                "SET" => return Err(wrong_args("config|set")),
                _ => return Err(unknown_subcommand(rest[0], "CONFIG")),
            }
        }
        "WAIT" => {
            exact(2)?;
            let replicas = int(rest[0])?;
            let timeout = std::str::from_utf8(rest[1])
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| "ERR timeout is not an integer or out of range".to_string())?;
            if timeout < 0 {
                return Err("ERR timeout is negative".into());
            }
            C::Wait(replicas, timeout)
        }
        "SETEX" | "PSETEX" => {
            exact(3)?;
            let t = positive(rest[1], &name.to_ascii_lowercase(), name == "SETEX", true)?;
            C::Set {
                key: rest[0],
                value: rest[2],
                cond: SetIf::Always,
                expiry: Some(if name == "SETEX" {
                    Expiry::In(t)
                } else {
                    Expiry::InMillis(t)
                }),
                keep_ttl: false,
                get: false,
            }
        }
        "GETDEL" => exact(1).map(|_| C::GetDel(rest[0]))?,
        "GETEX" => {
            at_least(1)?;
            let e = match rest[1..] {
                [] => GetExpiry::Keep,
                [opt] if opt.eq_ignore_ascii_case(b"PERSIST") => GetExpiry::Persist,
                [opt, t] => GetExpiry::Set(expiry_option(opt, t, "getex")?.ok_or(SYNTAX)?),
                _ => return Err(SYNTAX.into()),
            };
            C::GetEx(rest[0], e)
        }
        "GETRANGE" | "SUBSTR" => {
            exact(3)?;
            C::GetRange(rest[0], int(rest[1])?, int(rest[2])?)
        }
        "STRLEN" => exact(1).map(|_| C::StrLen(rest[0]))?,
        "APPEND" => exact(2).map(|_| C::Append(rest[0], rest[1]))?,
        "INCR" => exact(1).map(|_| C::IncrBy(rest[0], 1))?,
        "DECR" => exact(1).map(|_| C::IncrBy(rest[0], -1))?,
        "INCRBY" => exact(2)
            .and_then(|_| int(rest[1]))
            .map(|d| C::IncrBy(rest[0], d))?,
        "DECRBY" => {
            exact(2)?;
            let d = int(rest[1])?
                .checked_neg()
                .ok_or_else(|| "ERR decrement would overflow".to_string())?;
            C::IncrBy(rest[0], d)
        }
        "DEL" | "UNLINK" => at_least(1).map(|_| C::Del(rest.to_vec()))?,
        "EXISTS" => at_least(1).map(|_| C::Exists(rest.to_vec()))?,
        "MGET" => at_least(1).map(|_| C::MGet(rest.to_vec()))?,
        "MSET" => {
            if n == 0 || n % 2 == 1 {
                return Err(wrong_args(name));
            }
            C::MSet(rest.chunks(2).map(|p| (p[0], p[1])).collect())
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
            at_least(2)?;
            // Redis reads the options first, then the time.
            let cond = expire_condition(&rest[2..])?;
            let at = expire_time(rest[1], name, now_ms() as i64)?;
            C::Expire(rest[0], at, cond, command_name(name))
        }
        "TTL" => exact(1).map(|_| C::Ttl(rest[0], false))?,
        "PTTL" => exact(1).map(|_| C::Ttl(rest[0], true))?,
        "PERSIST" => exact(1).map(|_| C::Persist(rest[0]))?,
        "TYPE" => exact(1).map(|_| C::Type(rest[0]))?,
        "SCAN" => {
            at_least(1)?;
            let cursor = std::str::from_utf8(rest[0])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| "ERR invalid cursor".to_string())?;
            let (mut pattern, mut count) = (None, None);
            let mut i = 1;
            while i < n {
                let opt = String::from_utf8_lossy(rest[i]).to_ascii_uppercase();
                let Some(v) = rest.get(i + 1) else {
                    return Err(SYNTAX.into());
                };
                match opt.as_str() {
                    "MATCH" => pattern = Some(*v),
                    "COUNT" => match int(v)? {
                        c if c >= 1 => count = Some(c as u64),
                        _ => return Err(SYNTAX.into()),
                    },
                    _ => return Err(SYNTAX.into()),
                }
                i += 2;
            }
            C::Scan {
                cursor,
                pattern,
                count,
            }
        }
        "KEYS" => exact(1).map(|_| C::Keys(rest[0]))?,
        "FLUSHALL" | "FLUSHDB" => {
            match rest {
                [] => {}
                [mode] if mode.eq_ignore_ascii_case(b"ASYNC") || mode.eq_ignore_ascii_case(b"SYNC") => {}
                _ => return Err(SYNTAX.into()),
            }
            C::FlushAll(name == "FLUSHDB")
        }
        _ => return Err(unknown(args)),
    })
}

/// A bit offset as Redis takes it: a non-negative integer under 2^32.
fn bit_offset(a: &[u8]) -> Result<u64, String> {
    match strict_integer(a) {
        Some(o) if (0..1 << 32).contains(&o) => Ok(o as u64),
        _ => Err("ERR bit offset is not an integer or out of range".into()),
    }
}

fn bit_unit(a: &[u8]) -> Result<BitUnit, String> {
    if a.eq_ignore_ascii_case(b"BIT") {
        Ok(BitUnit::Bit)
    } else if a.eq_ignore_ascii_case(b"BYTE") {
        Ok(BitUnit::Byte)
    } else {
        Err(SYNTAX.into())
    }
}

/// BITPOS's `[start [end [BYTE | BIT]]]` as Redis reads them (once it has the key).
pub fn bitpos_range(args: &[&[u8]]) -> Result<(Option<i64>, Option<i64>, BitUnit), String> {
    let unit = match args {
        [_, _, u] => bit_unit(u)?,
        [] | [_] | [_, _] => BitUnit::Byte,
        _ => return Err(SYNTAX.into()),
    };
    let start = args.first().map(|a| int(a)).transpose()?;
    let end = args.get(1).map(|a| int(a)).transpose()?;
    Ok((start, end, unit))
}

/// The wall clock in Unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `EX t`, `PX t`, `EXAT t`, `PXAT t` (None: another option).
fn expiry_option(opt: &[u8], t: &[u8], command: &str) -> Result<Option<Expiry>, String> {
    let (make, seconds, relative): (fn(u64) -> Expiry, bool, bool) =
        match String::from_utf8_lossy(opt).to_ascii_uppercase().as_str() {
            "EX" => (Expiry::In, true, true),
            "PX" => (Expiry::InMillis, false, true),
            "EXAT" => (Expiry::At, true, false),
            "PXAT" => (Expiry::AtMillis, false, false),
            _ => return Ok(None),
        };
    Ok(Some(make(positive(t, command, seconds, relative)?)))
}

fn parse_set<'a>(rest: &[&'a [u8]]) -> Result<RespCommand<'a>, String> {
    if rest.len() < 2 {
        return Err(wrong_args("set"));
    }
    let (mut cond, mut expiry, mut keep_ttl, mut get) = (SetIf::Always, None, false, false);
    let mut i = 2;
    while i < rest.len() {
        let opt = rest[i];
        let upper = String::from_utf8_lossy(opt).to_ascii_uppercase();
        match upper.as_str() {
            "NX" if cond == SetIf::Always => cond = SetIf::Absent,
            "XX" if cond == SetIf::Always => cond = SetIf::Present,
            "KEEPTTL" if expiry.is_none() => keep_ttl = true,
            "GET" => get = true,
            "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() && !keep_ttl => {
                let t = rest.get(i + 1).ok_or(SYNTAX)?;
                expiry = expiry_option(opt, t, "set")?;
                i += 1;
            }
            _ => return Err(SYNTAX.into()),
        }
        i += 1;
    }
    Ok(RespCommand::Set {
        key: rest[0],
        value: rest[1],
        cond,
        expiry,
        keep_ttl,
        get,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<RespCommand<'_>, String> {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        parse(&args)
    }

    #[test]
    fn commands_and_their_options() {
        assert_eq!(p("ping"), Ok(RespCommand::Ping(None)));
        assert_eq!(
            p("SET k v NX PX 1500 GET"),
            Ok(RespCommand::Set {
                key: b"k",
                value: b"v",
                cond: SetIf::Absent,
                expiry: Some(Expiry::InMillis(1500)),
                keep_ttl: false,
                get: true,
            })
        );
        assert_eq!(p("decrby k 5"), Ok(RespCommand::IncrBy(b"k", -5)));
        assert_eq!(
            p("MSET a 1 b 2"),
            Ok(RespCommand::MSet(vec![(b"a", b"1"), (b"b", b"2")]))
        );
        assert_eq!(
            p("pexpireat k 99 GT"),
            Ok(RespCommand::Expire(
                b"k",
                Expiry::AtMillis(99),
                ExpireIf::Later,
                "pexpireat"
            ))
        );
        assert_eq!(
            p("GETEX k PERSIST"),
            Ok(RespCommand::GetEx(b"k", GetExpiry::Persist))
        );
        assert_eq!(
            p("SCAN 0 MATCH user:* COUNT 100"),
            Ok(RespCommand::Scan {
                cursor: 0,
                pattern: Some(b"user:*"),
                count: Some(100)
            })
        );
        assert_eq!(
            p("HELLO 3"),
            Ok(RespCommand::Hello {
                protover: Some(3),
                auth: None
            })
        );
        assert_eq!(
            p("HELLO 2 AUTH default pw SETNAME app"),
            Ok(RespCommand::Hello {
                protover: Some(2),
                auth: Some((b"default", b"pw"))
            })
        );
        assert_eq!(p("HELLO 2 AUTH default"), Err(SYNTAX.into()));
    }

    #[test]
    fn command_documents_every_command_of_the_table() {
        let documented: Vec<&str> = super::super::redis_docs::DOCS.iter().map(|(n, ..)| *n).collect();
        let served: Vec<&str> = TABLE.iter().map(|(n, ..)| *n).collect();
        assert_eq!(documented, served, "run tests/resp/capture_command_docs.py again");
    }

    #[test]
    fn no_arguments_make_any_command_panic() {
        // Every command of the table with arguments drawn from what breaks parsers:
        // extremes, signs, options, empties, bytes that are not UTF-8.
        let words: &[&[u8]] = &[
            b"",
            b"0",
            b"-1",
            b"1",
            b"7",
            b"4294967296",
            b"9223372036854775807",
            b"-9223372036854775808",
            b"99999999999999999999",
            b"NX",
            b"XX",
            b"GT",
            b"LT",
            b"EX",
            b"PX",
            b"EXAT",
            b"PXAT",
            b"KEEPTTL",
            b"GET",
            b"IDX",
            b"LEN",
            b"MINMATCHLEN",
            b"WITHMATCHLEN",
            b"BIT",
            b"BYTE",
            b"REPLACE",
            b"DB",
            b"ENCODING",
            b"GET",
            b"SET",
            b"ASYNC",
            b"INFO",
            b"DOCS",
            b"COUNT",
            b"MATCH",
            b"*",
            b"\xff\xfe",
            b"1.5",
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (name, ..) in TABLE {
            for _ in 0..400 {
                let n = (next() % 7) as usize;
                let mut args: Vec<&[u8]> = vec![name.as_bytes()];
                args.extend((0..n).map(|_| words[(next() % words.len() as u64) as usize]));
                let _ = parse(&args);
            }
        }
    }

    #[test]
    fn errors_read_as_redis_writes_them() {
        assert_eq!(
            p("GET"),
            Err("ERR wrong number of arguments for 'get' command".into())
        );
        assert_eq!(p("SET k v NX XX"), Err(SYNTAX.into()));
        assert_eq!(p("SET k v EX 10 KEEPTTL"), Err(SYNTAX.into()));
        assert_eq!(
            p("SET k v EX 0"),
            Err("ERR invalid expire time in 'set' command".into())
        );
        assert_eq!(p("SET k v EX"), Err(SYNTAX.into()));
        assert_eq!(p("INCRBY k x"), Err(NOT_INTEGER.into()));
        assert_eq!(
            p("MSET a 1 b"),
            Err("ERR wrong number of arguments for 'mset' command".into())
        );
        assert_eq!(p("SCAN x"), Err("ERR invalid cursor".into()));
        assert_eq!(p("EXPIRE k 10 zz"), Err("ERR Unsupported option zz".into()));
        assert_eq!(
            p("EXPIRE k 10 LT GT"),
            Err("ERR GT and LT options at the same time are not compatible".into())
        );
        assert_eq!(
            p("EXPIRE k x NX XX"),
            Err("ERR NX and XX, GT or LT options at the same time are not compatible".into())
        );
        assert_eq!(
            p("EXPIRE k -9223372036854776"),
            Err("ERR invalid expire time in 'expire' command".into())
        );
        assert_eq!(
            p("PEXPIRE k 9223372036854775807"),
            Err("ERR invalid expire time in 'pexpire' command".into())
        );
        assert_eq!(
            p("EXPIRE k -5 XX LT"),
            Ok(RespCommand::Expire(
                b"k",
                Expiry::InMillis(0),
                ExpireIf::HasExpirySooner,
                "expire"
            ))
        );
        assert_eq!(p("SETNX k v"), Ok(RespCommand::SetNx(b"k", b"v")));
        assert_eq!(strict_integer(b"007"), None);
        assert_eq!(strict_integer(b"-0"), None);
        assert_eq!(strict_integer(b"0"), Some(0));
        assert_eq!(strict_integer(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(
            p("FOO a b"),
            Err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ".into())
        );
        assert!(p("CLIENT NOPE").unwrap_err().contains("Try CLIENT HELP"));
        assert_eq!(
            p("DECRBY k -9223372036854775808"),
            Err("ERR decrement would overflow".into())
        );
        assert_eq!(parse(&[]), Err("ERR empty command".into()));
    }
}
