"""redis-py drives hotshard's RESP port (issue 21): every command the front answers, with
pipelines, SCAN under concurrent writes, and Redis's error replies. Run by
tests/resp_front.rs as `python3 tests/resp/redis_py_suite.py PORT`; exits non-zero (with
the failed assertion) on the first difference from what Redis answers."""

import socket
import sys
import threading
import time

import redis

port = int(sys.argv[1])
r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=20)
raw = redis.Redis(host="127.0.0.1", port=port, socket_timeout=20, decode_responses=True)


def expect_error(fn, *fragments):
    try:
        fn()
    except (redis.ResponseError, redis.AuthenticationError) as e:
        text = str(e)
        for f in fragments:
            assert f in text, f"error {text!r} lacks {f!r}"
        return text
    raise AssertionError("no error")


# Connection commands.
assert r.ping() is True
assert r.echo(b"hi\r\nthere") == b"hi\r\nthere"
assert r.execute_command("SELECT", 0) in (b"OK", True, "OK")
expect_error(lambda: r.execute_command("SELECT", 1), "DB index is out of range")
assert r.client_setname("suite") is True
assert r.client_getname() in (b"suite", "suite")
assert isinstance(r.client_id(), int)
assert r.execute_command("CLIENT", "SETINFO", "LIB-NAME", "x") in (b"OK", True, "OK")
assert r.command_count() >= 30
assert "get" in r.command()
# redis-py 8 says HELLO 3 when it connects: this connection speaks RESP3. A second one
# stays on RESP2 (switching a connection's protocol under its client confuses the client).
hello = r.execute_command("HELLO", 3)
assert hello.get(b"server", hello.get("server")) in (b"hotshard", "hotshard"), hello
expect_error(lambda: r.execute_command("HELLO", 4), "NOPROTO")
resp2 = redis.Redis(host="127.0.0.1", port=port, socket_timeout=20, protocol=2)
assert resp2.get("absent-before-anything") is None
assert b"hotshard" in resp2.execute_command("HELLO", 2)
assert resp2.mget("absent-1", "absent-2") == [None, None]
# (On a socket of its own: redis-py retries a failed AUTH with back-off.)
with socket.create_connection(("127.0.0.1", port)) as s:
    s.sendall(b"*2\r\n$4\r\nAUTH\r\n$1\r\nx\r\n")
    assert b"without any password configured" in s.recv(1024)
info = raw.info()
assert info["redis_mode"] == "standalone"
assert "every write is on the device" in raw.info("persistence")["hotshard_durability"]

# Strings.
assert r.set("k", b"v1") is True
assert r.get("k") == b"v1"
assert r.get("absent") is None
assert r.set("k", b"v2", nx=True) is None
assert r.get("k") == b"v2" or r.get("k") == b"v1"
assert r.get("k") == b"v1"
assert r.set("k", b"v2", xx=True) is True
assert r.get("k") == b"v2"
assert r.set("nx-new", b"a", nx=True) is True
assert r.set("xx-absent", b"a", xx=True) is None
assert r.get("xx-absent") is None
assert r.set("k", b"v3", get=True) == b"v2"
assert r.set("get-absent", b"x", get=True) is None
assert r.setnx("k", b"no") is False
assert r.setnx("setnx-new", b"yes") is True
assert r.getdel("k") == b"v3"
assert r.get("k") is None
assert r.getdel("k") is None
assert r.getex("setnx-new") == b"yes"
# Issue 32's commands as redis-py calls them.
assert r.execute_command("SETNX", "setnx-int", "1") == 1
assert r.execute_command("SETNX", "setnx-int", "2") == 0
assert r.getset("setnx-int", b"3") == b"1"
assert r.incrbyfloat("float", 0.1) == 0.1
assert r.incrbyfloat("float", 0.2) == 0.3
assert r.get("float") == b"0.3"
assert r.setrange("range", 2, b"xy") == 4 and r.get("range") == b"\x00\x00xy"
assert r.setbit("bits", 7, 1) == 0 and r.getbit("bits", 7) == 1 and r.bitcount("bits") == 1
assert r.bitpos("bits", 1) == 7
assert r.lcs("setnx-int", "float") in (b"3", b"")
assert r.expiretime("bits") == -1 and r.pexpiretime("absent") == -2
assert r.touch("bits", "range", "absent") == 2
assert r.object("encoding", "setnx-int") == b"int"
assert r.substr("range", 2, 3) == b"xy"
assert isinstance(r.time()[0], int)
assert r.config_get("appendfsync") == {"appendfsync": "always"} or r.config_get("appendfsync") == {b"appendfsync": b"always"}
assert r.randomkey() is not None
assert r.msetnx({"msetnx-one": b"1"}) is True
expect_error(lambda: r.msetnx({"msetnx-a": b"1", "msetnx-b": b"2"}), "same slot")
assert r.exists("msetnx-a") == 0
r.set("s", b"Hello World")
assert r.getrange("s", 0, 4) == b"Hello"
assert r.getrange("s", -5, -1) == b"World"
assert r.getrange("s", 20, 30) == b""
assert r.getrange("absent", 0, -1) == b""
assert r.strlen("s") == 11
assert r.strlen("absent") == 0
assert r.append("s", b"!") == 12
assert r.append("new-append", b"ab") == 2
assert r.get("s") == b"Hello World!"
binary = bytes(range(256)) * 3
r.set("bin", binary)
assert r.get("bin") == binary
big = b"x" * (3 << 20)
r.set("big", big)
assert r.get("big") == big
r.set("empty", b"")
assert r.get("empty") == b""

# Counters.
assert r.incr("n") == 1
assert r.incrby("n", 41) == 42
assert r.decr("n") == 41
assert r.decrby("n", 50) == -9
r.set("notnum", b"abc")
expect_error(lambda: r.incr("notnum"), "not an integer")
r.set("maxint", str(2**63 - 1))
expect_error(lambda: r.incr("maxint"), "overflow")
expect_error(lambda: r.execute_command("INCRBY", "n", "x"), "not an integer")

# Counters are atomic at the owning shard: four clients, 250 increments each.
def bump():
    c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=20)
    for _ in range(250):
        c.incr("shared-counter")

threads = [threading.Thread(target=bump) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert r.get("shared-counter") == b"1000", r.get("shared-counter")

# Several keys.
assert r.mset({"m1": b"1", "m2": b"2", "m3": b"3"}) is True
assert r.mget("m1", "m2", "absent", "m3") == [b"1", b"2", None, b"3"]
assert r.exists("m1", "m2", "absent", "m1") == 3
assert r.delete("m1", "absent", "m2") == 2
assert r.unlink("m3") == 1
assert r.exists("m1", "m2", "m3") == 0
assert r.type("s") == b"string"
assert r.type("absent") == b"none"

# Expiry answers for keys that have none.
assert r.ttl("s") == -1
assert r.ttl("absent") == -2
assert r.pttl("s") == -1

# Expiry.
assert r.set("e1", b"v", ex=100) is True
assert 99 <= r.ttl("e1") <= 100
assert 99_000 <= r.pttl("e1") <= 100_000
assert r.set("e2", b"v", px=300) is True
assert 0 < r.pttl("e2") <= 300
assert r.setex("e3", 100, b"v") is True
assert r.psetex("e4", 100_000, b"v") is True
assert 99 <= r.ttl("e4") <= 100
now = int(time.time())
assert r.set("e5", b"v", exat=now + 100) is True
assert 98 <= r.ttl("e5") <= 100
assert r.set("e6", b"v", pxat=int(time.time() * 1000) + 100_000) is True
assert r.set("e1", b"w", keepttl=True) is True
assert 98 <= r.ttl("e1") <= 100, "KEEPTTL keeps it"
assert r.set("e1", b"x") is True
assert r.ttl("e1") == -1, "a plain SET clears it"
assert r.incr("e-counter") == 1
assert r.expire("e-counter", 100) is True
assert r.incr("e-counter") == 2
assert 98 <= r.ttl("e-counter") <= 100, "INCR keeps the expiry"
# EXPIRE's conditions (Redis 7): NX only without one, XX only with one, GT later, LT sooner.
assert r.expire("e1", 50, nx=True) is True
assert r.expire("e1", 60, nx=True) is False
assert r.expire("e1", 70, xx=True) is True
assert r.expire("e1", 60, gt=True) is False
assert r.expire("e1", 80, gt=True) is True
assert r.expire("e1", 90, lt=True) is False
assert r.expire("e1", 40, lt=True) is True
assert 38 <= r.ttl("e1") <= 40
assert r.persist("e1") is True
assert r.persist("e1") is False
assert r.ttl("e1") == -1
assert r.expire("absent", 10) is False
assert r.pexpire("e3", 200_000) is True
assert 199 <= r.ttl("e3") <= 200
assert r.expireat("e3", now + 300) is True
assert r.pexpireat("e3", (now + 400) * 1000) is True
assert 398 <= r.ttl("e3") <= 400
assert r.getex("e3", persist=True) == b"v"
assert r.ttl("e3") == -1
assert r.getex("e3", ex=30) == b"v"
assert 29 <= r.ttl("e3") <= 30
assert r.getex("absent") is None
assert r.expire("e3", 0) is True, "a time past deletes"
assert r.get("e3") is None and r.exists("e3") == 0
expect_error(lambda: r.set("k", b"v", ex=0), "invalid expire time in 'set' command")
expect_error(lambda: r.execute_command("SET", "k", "v", "EX", "99999999999999999"), "invalid expire time")
# A key that expires is gone for every command once its time has passed.
time.sleep(0.4)
assert r.get("e2") is None
assert r.exists("e2") == 0
assert r.ttl("e2") == -2
assert r.type("e2") == b"none"
assert r.set("e2", b"again", nx=True) is True, "NX on an expired key"
assert r.ttl("e2") == -1

# Pipelines: answered in order, a write then a read of the same key in order.
p = r.pipeline(transaction=False)
for i in range(200):
    p.set(f"p{i}", f"v{i}")
    p.get(f"p{i}")
    p.incr("pipe-counter")
out = p.execute()
for i in range(200):
    assert out[3 * i] is True
    assert out[3 * i + 1] == f"v{i}".encode(), (i, out[3 * i + 1])
    assert out[3 * i + 2] == i + 1
p = r.pipeline(transaction=False)
p.set("order", b"1")
p.append("order", b"2")
p.append("order", b"3")
p.get("order")
p.execute_command("NOSUCH")
p.get("order")
out = p.execute(raise_on_error=False)
assert out[3] == b"123" and out[5] == b"123"
assert isinstance(out[4], redis.ResponseError)

# DBSIZE, KEYS, SCAN.
n = r.dbsize()
assert 210 <= n <= 260, n
keys = set(r.keys("p1*"))
assert keys == {f"p{i}".encode() for i in range(200) if str(i).startswith("1")}, sorted(keys)[:5]
assert set(r.keys("p?")) == {f"p{i}".encode() for i in range(10)}

# SCAN while other clients write and delete: every key present for the whole scan is
# returned at least once.
stable = {f"stable:{i}".encode() for i in range(3000)}
p = r.pipeline(transaction=False)
for k in stable:
    p.set(k, b"s")
p.execute()
stop = threading.Event()

def churn(seed):
    c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=20)
    i = 0
    while not stop.is_set():
        c.set(f"churn:{seed}:{i}", b"c")
        if i % 3 == 0:
            c.delete(f"churn:{seed}:{i // 2}")
        i += 1

writers = [threading.Thread(target=churn, args=(s,)) for s in range(2)]
for t in writers:
    t.start()
seen = set()
cursor = 0
pages = 0
while True:
    cursor, page = r.scan(cursor=cursor, match="stable:*", count=100)
    seen.update(page)
    pages += 1
    if cursor == 0:
        break
stop.set()
for t in writers:
    t.join()
assert stable <= seen, f"{len(stable - seen)} stable keys missed"
assert all(k.startswith(b"stable:") for k in seen)
assert pages >= 2, pages
assert set(r.scan_iter(match="p19*")) == {b"p19", b"p190", b"p191", b"p192", b"p193", b"p194", b"p195", b"p196", b"p197", b"p198", b"p199"}

# Errors: Redis's texts, and the connection goes on.
expect_error(lambda: r.execute_command("NOSUCH", "a"), "unknown command 'NOSUCH'")
expect_error(lambda: r.execute_command("GET"), "wrong number of arguments for 'get' command")
expect_error(lambda: r.execute_command("SET", "k", "v", "NX", "XX"), "syntax error")
expect_error(lambda: r.execute_command("FLUSHALL"), "FLUSHALL is off")
expect_error(lambda: r.get("k" * 2000), "key is longer than this node's limit of 1024 bytes")
assert r.ping() is True

print("redis-py suite: all commands answered as Redis answers them")
