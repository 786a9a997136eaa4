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

/// EXPIRE's condition (Redis 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireIf {
    Always,
    NoExpiry,
    HasExpiry,
    Later,
    Sooner,
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
    Command(Option<&'a [u8]>),
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
    Expire(&'a [u8], Expiry, ExpireIf),
    Ttl(&'a [u8], bool),
    Persist(&'a [u8]),
    Type(&'a [u8]),
    Scan {
        cursor: u64,
        pattern: Option<&'a [u8]>,
        count: Option<u64>,
    },
    Keys(&'a [u8]),
    FlushAll,
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
            | C::Expire(k, _, _)
            | C::Ttl(k, _)
            | C::Persist(k)
            | C::Type(k) => vec![*k],
            C::Del(ks) | C::Exists(ks) | C::MGet(ks) => ks.clone(),
            C::MSet(pairs) => pairs.iter().map(|(k, _)| *k).collect(),
            C::Scan { .. } | C::Keys(_) | C::DbSize | C::FlushAll | C::Info(_) => return None,
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

/// A positive expiry time (Redis: "invalid expire time in 'set' command").
fn positive(a: &[u8], command: &str) -> Result<u64, String> {
    match int(a)? {
        n if n > 0 => Ok(n as u64),
        _ => Err(format!("ERR invalid expire time in '{command}' command")),
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
        "COMMAND" => C::Command(rest.first().copied()),
        "INFO" => C::Info(rest.first().copied()),
        "DBSIZE" => exact(0).map(|_| C::DbSize)?,
        "GET" => exact(1).map(|_| C::Get(rest[0]))?,
        "SET" => parse_set(rest)?,
        "SETNX" => exact(2).map(|_| C::Set {
            key: rest[0],
            value: rest[1],
            cond: SetIf::Absent,
            expiry: None,
            keep_ttl: false,
            get: false,
        })?,
        "SETEX" | "PSETEX" => {
            exact(3)?;
            let t = positive(rest[1], &name.to_ascii_lowercase())?;
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
        "GETRANGE" => {
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
            if !(2..=3).contains(&n) {
                return Err(wrong_args(name));
            }
            // Redis takes any integer here (a time in the past deletes the key).
            let t = int(rest[1])?.max(0) as u64;
            let e = match name {
                "EXPIRE" => Expiry::In(t),
                "PEXPIRE" => Expiry::InMillis(t),
                "EXPIREAT" => Expiry::At(t),
                _ => Expiry::AtMillis(t),
            };
            let cond = match rest
                .get(2)
                .map(|c| String::from_utf8_lossy(c).to_ascii_uppercase())
            {
                None => ExpireIf::Always,
                Some(c) => match c.as_str() {
                    "NX" => ExpireIf::NoExpiry,
                    "XX" => ExpireIf::HasExpiry,
                    "GT" => ExpireIf::Later,
                    "LT" => ExpireIf::Sooner,
                    _ => return Err(format!("ERR Unsupported option {c}")),
                },
            };
            C::Expire(rest[0], e, cond)
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
        "FLUSHALL" => C::FlushAll,
        _ => return Err(unknown(args)),
    })
}

/// `EX t`, `PX t`, `EXAT t`, `PXAT t` (None: another option).
fn expiry_option(opt: &[u8], t: &[u8], command: &str) -> Result<Option<Expiry>, String> {
    let make = match String::from_utf8_lossy(opt).to_ascii_uppercase().as_str() {
        "EX" => Expiry::In,
        "PX" => Expiry::InMillis,
        "EXAT" => Expiry::At,
        "PXAT" => Expiry::AtMillis,
        _ => return Ok(None),
    };
    Ok(Some(make(positive(t, command)?)))
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
            Ok(RespCommand::Expire(b"k", Expiry::AtMillis(99), ExpireIf::Later))
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
        assert_eq!(p("EXPIRE k 10 ZZ"), Err("ERR Unsupported option ZZ".into()));
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
