"""The same commands sent to Redis 7 and to hotshard's RESP port, every reply compared
byte for byte (issue 32). Run by tests/resp_vs_redis.rs as
`python3 tests/resp/vs_redis.py REDIS_PORT NODE_PORT` (both servers fresh, no password);
prints each case that differs with both replies and exits non-zero if any does.
`--show` prints what Redis answers, for writing new cases.

Each case starts on a new connection to each server after FLUSHALL. The replies compared
are those a string store gives the same whatever the clock or the process: TTLs are asked
only where whole seconds cannot tick over, and commands whose replies name the server
(INFO, TIME, CONFIG GET, HELLO) are checked by tests/resp_vs_redis.rs itself, as are the
differences README.md lists (an expiry past the year 10889, keys of two chains)."""

import socket
import sys


def C(line, *binary):
    """A command from a line split on spaces; `{}` in it takes the next binary argument."""
    args, it = [], iter(binary)
    for word in line.split(" "):
        args.append(next(it) if word == "{}" else word.encode())
    return args


CASES = {
    "setnx answers 1 and 0": [C("SETNX k v"), C("SETNX k w"), C("GET k"), C("SETNX k")],
    "expire times that overflow are refused": [
        C("SET foo bar"),
        C("EXPIRE foo -9223372036854776"),
        C("EXPIRE foo 9223372036854776"),
        C("EXPIRE foo 9223372036854775"),
        C("PEXPIRE foo 9223372036854775807"),
        C("EXPIREAT foo 9223372036854776"),
        C("PEXPIREAT foo x"),
        C("EXPIRE foo abc"),
        C("SETEX foo 9223372036854776 v"),
        C("PSETEX foo -1 v"),
        C("SET foo v EX 9223372036854776"),
        C("GETEX foo EX 9223372036854776"),
        C("SETEX foo 9223372036854775 v"),
        C("PSETEX foo 9223372036854775807 v"),
        C("TTL foo"),
    ],
    "expire options": [
        C("SET k v"),
        C("EXPIRE k 10 LT GT"),
        C("EXPIRE k 10 GT LT"),
        C("EXPIRE k 10 NX XX"),
        C("EXPIRE k 10 NX GT"),
        C("EXPIRE k 10 LT NX"),
        C("EXPIRE k 10 zz"),
        C("EXPIRE k abc NX XX"),
        C("EXPIRE k 10 GT"),
        C("EXPIRE k 10 XX"),
        C("EXPIRE k 100 LT"),
        C("EXPIRE k 200 XX LT"),
        C("EXPIRE k 50 XX LT"),
        C("EXPIRE k 100 NX"),
        C("EXPIRE k 300 XX GT"),
        C("PEXPIRE k 100000 nx"),
        C("EXPIRE missing 10"),
        C("EXPIRE k"),
    ],
    "expire in the past deletes": [
        C("SET k v"),
        C("EXPIRE k -1"),
        C("EXISTS k"),
        C("SET k v"),
        C("PEXPIRE k 0"),
        C("GET k"),
        C("SET k v"),
        C("EXPIREAT k 1"),
        C("GET k"),
        C("SET k v"),
        C("PEXPIREAT k -9223372036854775808"),
        C("GET k"),
    ],
    "flushdb": [
        C("SET a 1"),
        C("FLUSHDB"),
        C("DBSIZE"),
        C("FLUSHDB ASYNC"),
        C("FLUSHDB sync"),
        C("FLUSHDB x"),
        C("FLUSHDB SYNC ASYNC"),
        C("FLUSHALL x"),
        C("FLUSHALL async"),
    ],
    "getset": [
        C("GETSET k v"),
        C("GETSET k w"),
        C("GET k"),
        C("SET t v EX 100"),
        C("GETSET t w"),
        C("TTL t"),
        C("GETSET k"),
    ],
    "msetnx on one key": [
        C("MSETNX a 1"),
        C("MSETNX a 2"),
        C("GET a"),
        C("MSETNX a 1 b"),
        C("MSETNX"),
    ],
    "setrange": [
        C("SETRANGE k 0 hello"),
        C("SETRANGE k 6 world"),
        C("GET k"),
        C("SETRANGE k -1 x"),
        C("SETRANGE missing 0 {}", b""),
        C("EXISTS missing"),
        C("SETRANGE missing 3 {}", b""),
        C("SETRANGE k 1 {}", b""),
        C("SETRANGE k 1 EL"),
        C("GET k"),
        C("SETRANGE k abc x"),
        C("SETRANGE k 536870912 x"),
        C("SETRANGE k 1"),
        C("SET t v EX 100"),
        C("SETRANGE t 1 x"),
        C("TTL t"),
    ],
    "getrange and substr": [
        C("SET k {}", b"This is a string"),
        C("GETRANGE k 0 3"),
        C("GETRANGE k -3 -1"),
        C("GETRANGE k 0 -1"),
        C("GETRANGE k 10 100"),
        C("GETRANGE k 5 3"),
        C("GETRANGE k -100 -50"),
        C("GETRANGE k -1 -5"),
        C("GETRANGE k -100 2"),
        C("GETRANGE k 16 20"),
        C("GETRANGE k 100 200"),
        C("GETRANGE k 3 -100"),
        C("SUBSTR k 0 3"),
        C("SUBSTR k -3 -1"),
        C("GETRANGE missing 0 -1"),
        C("GETRANGE k a b"),
        C("GETRANGE k 0"),
        C("SET e {}", b""),
        C("GETRANGE e 0 -1"),
    ],
    "incr reads integers as redis does": [
        C("SET a 007"),
        C("INCR a"),
        C("SET a -0"),
        C("INCR a"),
        C("SET a {}", b" 1"),
        C("INCR a"),
        C("SET a +1"),
        C("INCR a"),
        C("SET a 9223372036854775807"),
        C("INCR a"),
        C("SET a -9223372036854775808"),
        C("DECR a"),
        C("SET a 0"),
        C("INCRBY a -5"),
        C("SET a {}", b"12345678901234567890"),
        C("INCR a"),
    ],
    "incrbyfloat": [
        C("INCRBYFLOAT f 10.5"),
        C("INCRBYFLOAT f 0.1"),
        C("INCRBYFLOAT f -5.0e3"),
        C("SET g 5.0e3"),
        C("INCRBYFLOAT g 2.0e2"),
        C("INCRBYFLOAT g abc"),
        C("SET h abc"),
        C("INCRBYFLOAT h 1"),
        C("SET p 0.1"),
        C("INCRBYFLOAT p 0.2"),
        C("INCRBYFLOAT p inf"),
        C("INCRBYFLOAT p nan"),
        C("INCRBYFLOAT p -inf"),
        C("INCRBYFLOAT q 1e308"),
        C("INCRBYFLOAT q 1e308"),
        C("INCRBYFLOAT r 3"),
        C("INCRBYFLOAT r -3"),
        C("INCRBYFLOAT r -0.0"),
        C("INCRBYFLOAT s 1.5e-7"),
        C("INCRBYFLOAT s {}", b" 1"),
        C("INCRBYFLOAT s {}", b"1 "),
        C("INCRBYFLOAT s {}", b""),
        C("INCRBYFLOAT t 0x10"),
        C("INCRBYFLOAT u 123456789012345678"),
        C("SET v 1.5"),
        C("EXPIRE v 100"),
        C("INCRBYFLOAT v 1"),
        C("TTL v"),
        C("INCRBYFLOAT v"),
    ],
    "lcs": [
        C("SET key1 ohmytext"),
        C("SET key2 mynewtext"),
        C("LCS key1 key2"),
        C("LCS key1 key2 LEN"),
        C("LCS key1 key2 IDX"),
        C("LCS key1 key2 IDX MINMATCHLEN 4"),
        C("LCS key1 key2 IDX MINMATCHLEN 4 WITHMATCHLEN"),
        C("LCS key1 key2 idx withmatchlen"),
        C("LCS key1 missing"),
        C("LCS missing1 missing2 IDX"),
        C("LCS key1 key2 LEN IDX"),
        C("LCS key1 key2 foo"),
        C("LCS key1 key2 MINMATCHLEN"),
        C("LCS key1 key2 MINMATCHLEN x"),
        C("LCS key1 key2 IDX MINMATCHLEN -5"),
        C("LCS key1"),
        C("SET a {}", b"GTCGTTCGGAATGCCGTTGCTCTGTAAA"),
        C("SET b {}", b"ACCGGTCGAGTGCGCGGAAGCCGGCCGAA"),
        C("LCS a b"),
        C("LCS a b IDX WITHMATCHLEN"),
    ],
    "getbit and setbit": [
        C("SETBIT b 7 1"),
        C("GETBIT b 7"),
        C("GET b"),
        C("SETBIT b 7 0"),
        C("SETBIT b 100 1"),
        C("STRLEN b"),
        C("GETBIT b 100"),
        C("GETBIT b 1000"),
        C("GETBIT b 4294967295"),
        C("SETBIT b -1 1"),
        C("SETBIT b 1 2"),
        C("SETBIT b 1 x"),
        C("GETBIT missing 0"),
        C("SETBIT b 4294967296 1"),
        C("GETBIT b 4294967296"),
        C("GETBIT b x"),
        C("GETBIT b"),
        C("SET t v EX 100"),
        C("SETBIT t 0 1"),
        C("TTL t"),
        C("GET t"),
    ],
    "bitcount": [
        C("SET mykey foobar"),
        C("BITCOUNT mykey"),
        C("BITCOUNT mykey 0 0"),
        C("BITCOUNT mykey 1 1"),
        C("BITCOUNT mykey 1 1 BYTE"),
        C("BITCOUNT mykey 5 30 BIT"),
        C("BITCOUNT mykey 0 -1 bit"),
        C("BITCOUNT mykey -2 -1"),
        C("BITCOUNT mykey -100 -50"),
        C("BITCOUNT mykey 4 2"),
        C("BITCOUNT mykey 0"),
        C("BITCOUNT missing"),
        C("BITCOUNT missing 0 5"),
        C("BITCOUNT mykey a b"),
        C("BITCOUNT mykey 0 1 foo"),
        C("BITCOUNT mykey 0 1 BIT x"),
        C("BITCOUNT"),
    ],
    "bitpos": [
        C("SET mykey {}", b"\xff\xf0\x00"),
        C("BITPOS mykey 0"),
        C("SET mykey {}", b"\x00\xff\xf0"),
        C("BITPOS mykey 1 0"),
        C("BITPOS mykey 1 2"),
        C("BITPOS mykey 1 2 -1 BYTE"),
        C("BITPOS mykey 1 7 15 BIT"),
        C("BITPOS mykey 0 8 -1 bit"),
        C("SET mykey {}", b"\x00\x00\x00"),
        C("BITPOS mykey 1"),
        C("BITPOS missing 0"),
        C("BITPOS missing 1"),
        C("BITPOS mykey 2"),
        C("SET ones {}", b"\xff\xff"),
        C("BITPOS ones 0"),
        C("BITPOS ones 0 0"),
        C("BITPOS ones 0 0 -1"),
        C("BITPOS ones 0 0 -1 BIT"),
        C("BITPOS ones 1 5 3"),
        C("BITPOS ones 1 x"),
        C("BITPOS ones 1 0 1 foo"),
        C("BITPOS ones"),
    ],
    "expiretime and pexpiretime": [
        C("SET k v"),
        C("EXPIRETIME k"),
        C("PEXPIRETIME k"),
        C("EXPIREAT k 33177117420"),
        C("EXPIRETIME k"),
        C("PEXPIRETIME k"),
        C("PEXPIREAT k 33177117420123"),
        C("EXPIRETIME k"),
        C("PEXPIRETIME k"),
        C("EXPIRETIME missing"),
        C("PEXPIRETIME missing"),
        C("EXPIRETIME"),
    ],
    "touch": [C("SET a 1"), C("SET b 2"), C("TOUCH a b c a"), C("TOUCH")],
    "object encoding": [
        C("SET a 12345"),
        C("OBJECT ENCODING a"),
        C("SET b hello"),
        C("OBJECT encoding b"),
        C("SET c {}", b"x" * 44),
        C("OBJECT ENCODING c"),
        C("SET c {}", b"x" * 45),
        C("OBJECT ENCODING c"),
        C("SET d 007"),
        C("OBJECT ENCODING d"),
        C("SET d -9223372036854775808"),
        C("OBJECT ENCODING d"),
        C("OBJECT ENCODING missing"),
        C("OBJECT FOO a"),
        C("OBJECT"),
        C("OBJECT ENCODING"),
    ],
    "randomkey": [C("RANDOMKEY"), C("SET a 1"), C("RANDOMKEY"), C("RANDOMKEY x")],
    "rename and copy of one key": [
        C("RENAME missing x"),
        C("RENAMENX missing x"),
        C("SET a 1"),
        C("RENAME a a"),
        C("RENAMENX a a"),
        C("COPY a a"),
        C("COPY missing a"),
        C("COPY a a REPLACE"),
        C("COPY a b DB 0 x"),
        C("COPY a b foo"),
        C("RENAME a"),
        C("COPY a"),
    ],
    "config errors": [
        C("CONFIG"),
        C("CONFIG FOO"),
        C("CONFIG GET"),
        C("CONFIG GET nosuchparameter"),
        C("CONFIG SET nosuchparameter 1"),
        C("CONFIG SET maxmemory"),
    ],
    "wait on one node": [C("SET a 1"), C("WAIT 0 0"), C("WAIT 0 100"), C("WAIT x 0"), C("WAIT 0 x"), C("WAIT 0 -1"), C("WAIT 0")],
    "time errors": [C("TIME x")],
    "command info": [
        C("COMMAND INFO get"),
        C("COMMAND INFO GETSET setrange lcs bitpos nosuch"),
        C("COMMAND DOCS getrange"),
        C("COMMAND DOCS incrbyfloat expiretime"),
    ],
}


def command(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(20)
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("closed")
            self.buf += d
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("closed")
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def reply(self):
        """One whole reply, raw."""
        head = self.line()
        kind = head[:1]
        if kind == b"$":
            n = int(head[1:-2])
            return head if n < 0 else head + self.exact(n + 2)
        if kind in b"*%~>":
            n = int(head[1:-2])
            n = n * 2 if kind == b"%" else n
            return head + b"".join(self.reply() for _ in range(max(n, 0)))
        return head

    def call(self, args):
        self.s.sendall(command(args))
        return self.reply()


def run(port, commands):
    c = Conn(port)
    c.call([b"FLUSHALL"])
    return [c.call(a) for a in commands]


def main():
    if sys.argv[1] == "--show":
        for name, commands in CASES.items():
            print(f"== {name}")
            for a, r in zip(commands, run(int(sys.argv[2]), commands)):
                print(f"  {b' '.join(a)!r:50} {r!r}")
        return
    redis_port, node_port = int(sys.argv[1]), int(sys.argv[2])
    differ = 0
    compared = 0
    for name, commands in CASES.items():
        theirs, ours = run(redis_port, commands), run(node_port, commands)
        for a, t, o in zip(commands, theirs, ours):
            compared += 1
            if t != o:
                differ += 1
                print(f"DIFF [{name}] {b' '.join(a)!r}\n  redis:    {t[:400]!r}\n  hotshard: {o[:400]!r}")
    print(f"{compared} replies compared, {differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
