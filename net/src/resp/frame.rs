//! Parsing one RESP2 command from the front of a buffer: a multibulk array of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what every client library sends) or an inline
//! command (`GET k\r\n`, what a person types into telnet). Every count and length is checked
//! against `RespLimits` before anything is allocated for it; a malformed stream is an error
//! with Redis's own wording (the connection is then closed, as Redis does). Nothing here
//! allocates per byte of a value: a bulk argument is a range of the buffer.

use std::ops::Range;

/// What a peer's command may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    /// Arguments in one command (the command's name included).
    pub max_args: usize,
    /// Bytes of one bulk argument (a value).
    pub max_bulk: usize,
    /// Bytes of an inline command line (Redis: 64 KiB).
    pub max_inline: usize,
}

impl Default for RespLimits {
    fn default() -> RespLimits {
        RespLimits {
            max_args: 64 * 1024,
            max_bulk: crate::limits::MAX_PAYLOAD_BYTES,
            max_inline: 64 * 1024,
        }
    }
}

/// The longest `*<count>` or `$<len>` line: a sign, 19 digits and CRLF fit.
const MAX_LENGTH_LINE: usize = 24;

/// One argument: a range of the parsed buffer (bulk strings, plain inline words) or bytes
/// of its own (an inline word with quotes or escapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    At(Range<usize>),
    Owned(Vec<u8>),
}

impl Arg {
    /// The argument's bytes, `buf` being the buffer it was parsed from.
    pub fn bytes<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            Arg::At(r) => &buf[r.clone()],
            Arg::Owned(v) => v,
        }
    }
}

/// A command parsed from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Bytes of the buffer it took.
    pub consumed: usize,
    /// Its arguments (empty: an empty line or `*0`, which Redis ignores).
    pub args: Vec<Arg>,
}

/// The outcome of looking at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole command.
    Command(Command),
    /// Not yet whole: at least `need` bytes in all are needed before it can be (a value's
    /// length is known once its `$<len>` line is in: the caller may read the rest straight
    /// into where the value goes).
    Incomplete { need: usize },
    /// The stream is malformed: answer this error (Redis's text) and close.
    Error(String),
}

fn protocol_error(what: &str) -> Parsed {
    Parsed::Error(format!("ERR Protocol error: {what}"))
}

/// The line starting at `at` (without its CRLF) and where the next one starts; None if no
/// CRLF is in the buffer yet.
fn line(buf: &[u8], at: usize, limit: usize) -> Result<Option<(Range<usize>, usize)>, ()> {
    let window = &buf[at..buf.len().min(at + limit)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((at..at + i, at + i + 2))),
        None if window.len() >= limit => Err(()),
        None => Ok(None),
    }
}

/// A decimal integer of `*<count>` or `$<len>` (Redis accepts a leading '-').
fn number(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse::<i64>().ok()
}

/// Parses the command at the front of `buf`.
pub fn parse_command(buf: &[u8], limits: &RespLimits) -> Parsed {
    match buf.first() {
        None => Parsed::Incomplete { need: 1 },
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

fn parse_multibulk(buf: &[u8], limits: &RespLimits) -> Parsed {
    let (count_line, mut at) = match line(buf, 1, MAX_LENGTH_LINE) {
        Ok(Some(l)) => l,
        Ok(None) => return Parsed::Incomplete { need: buf.len() + 1 },
        Err(()) => return protocol_error("invalid multibulk length"),
    };
    let count = match number(&buf[count_line]) {
        Some(n) if n <= 0 => {
            return Parsed::Command(Command {
                consumed: at,
                args: Vec::new(),
            })
        }
        Some(n) if n as u64 <= limits.max_args as u64 => n as usize,
        _ => return protocol_error("invalid multibulk length"),
    };
    // Grown as arguments arrive, never sized by the count alone.
    let mut args = Vec::new();
    for _ in 0..count {
        match buf.get(at) {
            None => return Parsed::Incomplete { need: at + 1 },
            Some(b'$') => {}
            Some(&other) => {
                return protocol_error(&format!("expected '$', got '{}'", other as char));
            }
        }
        let (len_line, body) = match line(buf, at + 1, MAX_LENGTH_LINE) {
            Ok(Some(l)) => l,
            Ok(None) => return Parsed::Incomplete { need: buf.len() + 1 },
            Err(()) => return protocol_error("invalid bulk length"),
        };
        let len = match number(&buf[len_line]) {
            Some(n) if n >= 0 && n as u64 <= limits.max_bulk as u64 => n as usize,
            _ => return protocol_error("invalid bulk length"),
        };
        let end = body + len;
        if buf.len() < end + 2 {
            return Parsed::Incomplete { need: end + 2 };
        }
        if &buf[end..end + 2] != b"\r\n" {
            return protocol_error("expected CRLF after a bulk string");
        }
        args.push(Arg::At(body..end));
        at = end + 2;
    }
    Parsed::Command(Command { consumed: at, args })
}

/// A multibulk command whose bytes stop inside one of its bulk arguments: what the server
/// needs to receive that argument (a SET's value) straight into a buffer of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialBulk {
    /// The arguments before the cut one (ranges of the buffer).
    pub before: Vec<Arg>,
    /// The command's argument count.
    pub count: usize,
    /// Where the cut argument's `$<len>` line starts, and where its bytes start.
    pub header_at: usize,
    pub value_at: usize,
    pub value_len: usize,
}

/// The multibulk command at the front of `buf` if it is well formed so far and stops
/// inside a bulk argument's bytes; None otherwise (whole, malformed, not multibulk, or cut
/// before a bulk's bytes begin).
pub fn partial_bulk(buf: &[u8], limits: &RespLimits) -> Option<PartialBulk> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (count_line, mut at) = line(buf, 1, MAX_LENGTH_LINE).ok()??;
    let count = match number(&buf[count_line]) {
        Some(n) if n > 0 && n as u64 <= limits.max_args as u64 => n as usize,
        _ => return None,
    };
    let mut before = Vec::new();
    for _ in 0..count {
        if buf.get(at) != Some(&b'$') {
            return None;
        }
        let (len_line, body) = line(buf, at + 1, MAX_LENGTH_LINE).ok()??;
        let len = match number(&buf[len_line]) {
            Some(n) if n >= 0 && n as u64 <= limits.max_bulk as u64 => n as usize,
            _ => return None,
        };
        if buf.len() < body + len + 2 {
            return Some(PartialBulk {
                before,
                count,
                header_at: at,
                value_at: body,
                value_len: len,
            });
        }
        before.push(Arg::At(body..body + len));
        at = body + len + 2;
    }
    None
}

fn parse_inline(buf: &[u8], limits: &RespLimits) -> Parsed {
    let window = &buf[..buf.len().min(limits.max_inline + 1)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if window.len() > limits.max_inline {
            return protocol_error("too big inline request");
        }
        return Parsed::Incomplete { need: buf.len() + 1 };
    };
    let text_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    match split_words(buf, 0..text_end, limits) {
        Ok(args) => Parsed::Command(Command {
            consumed: nl + 1,
            args,
        }),
        Err(e) => Parsed::Error(e),
    }
}

/// An inline line's words, as Redis splits them: by spaces and tabs, with "double quotes"
/// (escapes `\n \r \t \b \a \\ \" \xHH`) and 'single quotes' (`\'`); a closing quote must be
/// followed by a space or the end.
fn split_words(buf: &[u8], line: Range<usize>, limits: &RespLimits) -> Result<Vec<Arg>, String> {
    let unbalanced = || "ERR Protocol error: unbalanced quotes in request".to_string();
    let mut args = Vec::new();
    let mut i = line.start;
    let end = line.end;
    loop {
        while i < end && (buf[i] == b' ' || buf[i] == b'\t') {
            i += 1;
        }
        if i >= end {
            return Ok(args);
        }
        if args.len() >= limits.max_args {
            return Err("ERR Protocol error: invalid multibulk length".into());
        }
        match buf[i] {
            q @ (b'"' | b'\'') => {
                let mut word = Vec::new();
                i += 1;
                loop {
                    if i >= end {
                        return Err(unbalanced());
                    }
                    let b = buf[i];
                    if b == q {
                        i += 1;
                        if i < end && buf[i] != b' ' && buf[i] != b'\t' {
                            return Err(unbalanced());
                        }
                        break;
                    }
                    if b == b'\\' && i + 1 < end {
                        let next = buf[i + 1];
                        if q == b'\'' {
                            if next == b'\'' {
                                word.push(b'\'');
                                i += 2;
                                continue;
                            }
                        } else if next == b'x'
                            && i + 3 < end
                            && buf[i + 2].is_ascii_hexdigit()
                            && buf[i + 3].is_ascii_hexdigit()
                        {
                            let hex = std::str::from_utf8(&buf[i + 2..i + 4]).unwrap_or("0");
                            word.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                            i += 4;
                            continue;
                        } else {
                            word.push(match next {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                            continue;
                        }
                    }
                    word.push(b);
                    i += 1;
                }
                args.push(Arg::Owned(word));
            }
            _ => {
                let start = i;
                while i < end && buf[i] != b' ' && buf[i] != b'\t' {
                    i += 1;
                }
                args.push(Arg::At(start..i));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_command_cut_inside_a_value_says_where_the_value_is() {
        let l = RespLimits::default();
        let buf = b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123";
        let p = super::partial_bulk(buf, &l).unwrap();
        assert_eq!(p.count, 4);
        assert_eq!(p.before.len(), 2);
        assert_eq!(p.before[1].bytes(buf), b"k");
        assert_eq!(&buf[p.header_at..p.value_at], b"$10\r\n");
        assert_eq!(p.value_len, 10);
        // Whole, cut before a value begins, or malformed: none.
        assert_eq!(super::partial_bulk(b"*1\r\n$4\r\nPING\r\n", &l), None);
        assert_eq!(super::partial_bulk(b"*2\r\n$3\r\nGET\r\n$", &l), None);
        assert_eq!(super::partial_bulk(b"*2\r\n+3\r\n", &l), None);
        assert_eq!(super::partial_bulk(b"GET k", &l), None);
        for cut in 0..buf.len() {
            let _ = super::partial_bulk(&buf[..cut], &l);
        }
    }

    use super::*;

    fn words(buf: &[u8]) -> Vec<Vec<u8>> {
        match parse_command(buf, &RespLimits::default()) {
            Parsed::Command(c) => c.args.iter().map(|a| a.bytes(buf).to_vec()).collect(),
            other => panic!("{other:?}"),
        }
    }

    fn error(buf: &[u8], limits: &RespLimits) -> String {
        match parse_command(buf, limits) {
            Parsed::Error(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn multibulk_and_inline_commands() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let Parsed::Command(c) = parse_command(set, &RespLimits::default()) else {
            panic!()
        };
        assert_eq!(c.args.len(), 3);
        assert_eq!(c.args[2].bytes(set), b"hello");
        assert_eq!(words(&set[c.consumed..]), [b"PING".to_vec()], "pipelined");
        assert_eq!(words(b"GET  key\r\n"), [b"GET".to_vec(), b"key".to_vec()]);
        assert_eq!(words(b"ping\n"), [b"ping".to_vec()]);
        assert_eq!(
            words(b"SET \"a b\" 'c\\'d' \"\\x41\\n\"\r\n"),
            [b"SET".to_vec(), b"a b".to_vec(), b"c'd".to_vec(), b"A\n".to_vec()]
        );
        assert!(words(b"\r\n").is_empty(), "an empty line is ignored");
        assert!(words(b"*0\r\n").is_empty());
        assert!(words(b"*-1\r\n").is_empty());
        // A value of zero bytes, and one with CRLF inside.
        assert_eq!(
            words(b"*2\r\n$0\r\n\r\n$4\r\na\r\nb\r\n"),
            [b"".to_vec(), b"a\r\nb".to_vec()]
        );
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete_with_a_growing_need() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n";
        for cut in 0..set.len() {
            match parse_command(&set[..cut], &RespLimits::default()) {
                Parsed::Incomplete { need } => {
                    assert!(need > cut && need <= set.len(), "cut {cut}: need {need}")
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        // Once the value's length line is in, the need is the whole command.
        let at = set.len() - 12;
        assert_eq!(
            parse_command(&set[..at], &RespLimits::default()),
            Parsed::Incomplete { need: set.len() }
        );
    }

    #[test]
    fn malformed_streams_get_redis_errors_and_nothing_is_allocated_for_them() {
        let small = RespLimits {
            max_args: 8,
            max_bulk: 100,
            max_inline: 32,
        };
        let cases: [(&[u8], &str); 10] = [
            (b"*x\r\n", "invalid multibulk length"),
            (b"*9\r\n", "invalid multibulk length"),
            (b"*99999999999999999999999\r\n", "invalid multibulk length"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$101\r\n", "invalid bulk length"),
            (b"*1\r\n$2\r\nabcd\r\n", "expected CRLF after a bulk string"),
            (b"*1\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
            (b"SET \"abc\r\n", "unbalanced quotes in request"),
            (b"SET 'a'b\r\n", "unbalanced quotes in request"),
        ];
        for (input, want) in cases {
            let e = error(input, &small);
            assert!(
                e.starts_with("ERR Protocol error: ") && e.ends_with(want),
                "{input:?}: {e}"
            );
        }
        // An inline command with no newline past the limit; a count line that never ends.
        assert!(error(&[b'a'; 40], &small).ends_with("too big inline request"));
        assert!(error(&[b'*'; 40], &small).ends_with("invalid multibulk length"));
        assert!(error(b"*1\r\n$11111111111111111111111111111", &small).ends_with("invalid bulk length"));
    }

    #[test]
    fn random_bytes_and_cut_commands_never_panic() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let good = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\nGET \"k\\x41\" 'x'\r\n";
        for _ in 0..20_000 {
            let mut buf = good.to_vec();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % buf.len();
                buf[i] = next() as u8;
            }
            buf.truncate((next() as usize) % (buf.len() + 1));
            let mut at = 0;
            while let Parsed::Command(c) = parse_command(&buf[at..], &RespLimits::default()) {
                for a in &c.args {
                    let _ = a.bytes(&buf[at..]);
                }
                assert!(c.consumed > 0);
                at += c.consumed;
            }
        }
    }
}
