//! Writing RESP2 replies: simple strings, errors, integers, bulk strings (and the null
//! bulk), and array headers. Each appends to a buffer the connection sends from; a bulk
//! value can be left out (`bulk_header` then the caller's own bytes, then `CRLF`) so that a
//! value is sent from where the store has it.

pub const CRLF: &[u8] = b"\r\n";

/// `+OK`-style status. `s` must not hold CR or LF (they are replaced by spaces).
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    one_line(out, s);
}

/// `-ERR ...`: `e` starts with its kind (`ERR`, `WRONGTYPE`, ...), as Redis's do.
pub fn error(out: &mut Vec<u8>, e: &str) {
    out.push(b'-');
    one_line(out, e);
}

pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(CRLF);
}

/// `$<len>\r\n`: the value and a CRLF must follow.
pub fn bulk_header(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(CRLF);
}

pub fn bulk(out: &mut Vec<u8>, value: &[u8]) {
    bulk_header(out, value.len());
    out.extend_from_slice(value);
    out.extend_from_slice(CRLF);
}

/// The null bulk string (`$-1`): a missing key.
pub fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `*<n>\r\n`: n replies must follow.
pub fn array_header(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(CRLF);
}

fn one_line(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(CRLF);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::frame::{parse_command, Parsed, RespLimits};

    #[test]
    fn replies_are_what_redis_sends() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        error(&mut out, "ERR unknown command 'x'\r\n");
        integer(&mut out, -3);
        bulk(&mut out, b"a\r\nb");
        null(&mut out);
        array_header(&mut out, 2);
        bulk(&mut out, b"");
        assert_eq!(
            out,
            b"+OK\r\n-ERR unknown command 'x'  \r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n$0\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn an_array_of_bulks_parses_back_as_a_command() {
        let mut out = Vec::new();
        array_header(&mut out, 3);
        for a in [&b"SET"[..], b"k", &[0u8, 13, 10, 255]] {
            bulk(&mut out, a);
        }
        let Parsed::Command(c) = parse_command(&out, &RespLimits::default()) else {
            panic!()
        };
        assert_eq!(c.consumed, out.len());
        assert_eq!(c.args[2].bytes(&out), &[0u8, 13, 10, 255]);
    }
}
