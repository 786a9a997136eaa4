"""boto3 against hotshard's S3 gateway (issue 34), run by tests/s3_gateway.rs.

Usage: boto3_suite.py ENDPOINT ACCESS_KEY SECRET_KEY [MODE]
MODE: all (default), write-survivors N (put N objects and print their names and MD5s),
check-survivors (read back the names and MD5s given on stdin).
"""

import hashlib
import random
import sys
import threading
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT, ACCESS, SECRET = sys.argv[1], sys.argv[2], sys.argv[3]
MODE = sys.argv[4] if len(sys.argv) > 4 else "all"


def client(secret=SECRET):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


s3 = client()


def code_of(fn):
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def expect_code(code, fn, what):
    got = code_of(fn)
    assert got == code, f"{what}: expected {code}, got {got}"


def md5(b):
    return hashlib.md5(b).hexdigest()


def buckets():
    expect_code("NoSuchBucket", lambda: s3.get_object(Bucket="nope", Key="k"), "get in a missing bucket")
    expect_code("404", lambda: s3.head_object(Bucket="nope", Key="k"), "head in a missing bucket")
    expect_code("NoSuchBucket", lambda: s3.put_object(Bucket="nope", Key="k", Body=b"x"), "put in a missing bucket")
    s3.create_bucket(Bucket="bkt1")
    s3.create_bucket(Bucket="bkt2")
    expect_code("BucketAlreadyOwnedByYou", lambda: s3.create_bucket(Bucket="bkt1"), "create twice")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert names == ["bkt1", "bkt2"], names
    s3.head_bucket(Bucket="bkt1")
    expect_code("404", lambda: s3.head_bucket(Bucket="nope"), "head a missing bucket")
    s3.put_object(Bucket="bkt2", Key="k", Body=b"v")
    expect_code("BucketNotEmpty", lambda: s3.delete_bucket(Bucket="bkt2"), "delete a bucket with an object")
    s3.delete_object(Bucket="bkt2", Key="k")
    s3.delete_bucket(Bucket="bkt2")
    expect_code("NoSuchBucket", lambda: s3.delete_bucket(Bucket="bkt2"), "delete twice")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["bkt1"]


def objects():
    rng = random.Random(7)
    # Sizes around the test's 64 KiB chunk: empty, one byte, one chunk, a chunk and a
    # byte, many chunks.
    for size in [0, 1, 4096, 4097, 65535, 65536, 65537, 3 * 65536 + 11, 2_000_000]:
        body = rng.randbytes(size)
        key = f"obj/{size}"
        r = s3.put_object(Bucket="bkt1", Key=key, Body=body, ContentType="application/x-test",
                          Metadata={"colour": "blue", "n": str(size)})
        assert r["ETag"] == f'"{md5(body)}"', (r["ETag"], md5(body))
        g = s3.get_object(Bucket="bkt1", Key=key)
        assert g["Body"].read() == body, f"body of {size}"
        assert g["ContentLength"] == size
        assert g["ContentType"] == "application/x-test"
        assert g["Metadata"] == {"colour": "blue", "n": str(size)}, g["Metadata"]
        h = s3.head_object(Bucket="bkt1", Key=key)
        assert h["ContentLength"] == size and h["ETag"] == r["ETag"]
        if size == 0:
            continue
        # Ranges, across chunk boundaries.
        for _ in range(20):
            a = rng.randrange(size)
            b = rng.randrange(a, size)
            got = s3.get_object(Bucket="bkt1", Key=key, Range=f"bytes={a}-{b}")
            assert got["Body"].read() == body[a:b + 1], f"range {a}-{b} of {size}"
            assert got["ContentRange"] == f"bytes {a}-{b}/{size}", got["ContentRange"]
        tail = min(size, 70000)
        assert s3.get_object(Bucket="bkt1", Key=key, Range=f"bytes=-{tail}")["Body"].read() == body[-tail:]
        assert s3.get_object(Bucket="bkt1", Key=key, Range=f"bytes={size - 1}-")["Body"].read() == body[-1:]
        expect_code("InvalidRange", lambda: s3.get_object(Bucket="bkt1", Key=key, Range=f"bytes={size}-"),
                    "a range past the end")
    # Overwrite: the new bytes, whole.
    s3.put_object(Bucket="bkt1", Key="obj/65536", Body=b"short")
    assert s3.get_object(Bucket="bkt1", Key="obj/65536")["Body"].read() == b"short"
    # Delete: gone; deleting again is fine (S3 answers 204).
    s3.delete_object(Bucket="bkt1", Key="obj/1")
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket="bkt1", Key="obj/1"), "get after delete")
    expect_code("404", lambda: s3.head_object(Bucket="bkt1", Key="obj/1"), "head after delete")
    s3.delete_object(Bucket="bkt1", Key="obj/1")


def conditions():
    body = b"conditional"
    etag = s3.put_object(Bucket="bkt1", Key="cond", Body=body)["ETag"]
    expect_code("PreconditionFailed", lambda: s3.put_object(Bucket="bkt1", Key="cond", Body=b"x", IfNoneMatch="*"),
                "If-None-Match * on an existing key")
    expect_code("PreconditionFailed", lambda: s3.put_object(Bucket="bkt1", Key="cond", Body=b"x", IfMatch='"00"'),
                "If-Match with another ETag")
    etag2 = s3.put_object(Bucket="bkt1", Key="cond", Body=b"second", IfMatch=etag)["ETag"]
    assert etag2 == f'"{md5(b"second")}"'
    s3.put_object(Bucket="bkt1", Key="cond-new", Body=b"x", IfNoneMatch="*")
    expect_code("PreconditionFailed", lambda: s3.get_object(Bucket="bkt1", Key="cond", IfMatch=etag),
                "GET If-Match an old ETag")
    expect_code("304", lambda: s3.get_object(Bucket="bkt1", Key="cond", IfNoneMatch=etag2), "GET If-None-Match")
    assert s3.get_object(Bucket="bkt1", Key="cond", IfMatch=etag2)["Body"].read() == b"second"
    # Two clients racing to create one key: exactly one wins, every time.
    for round in range(10):
        key = f"race/{round}"
        wins, losses = [], []

        def create(i):
            c = client()
            try:
                c.put_object(Bucket="bkt1", Key=key, Body=f"writer {i}".encode(), IfNoneMatch="*")
                wins.append(i)
            except ClientError as e:
                losses.append(e.response["Error"]["Code"])

        threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and losses == ["PreconditionFailed"], (wins, losses)
        assert s3.get_object(Bucket="bkt1", Key=key)["Body"].read() == f"writer {wins[0]}".encode()


def model_listing(keys, prefix, delimiter, start_after):
    out, prefixes = [], []
    for k in sorted(keys):
        if not k.startswith(prefix) or (start_after and k <= start_after):
            continue
        rest = k[len(prefix):]
        if delimiter and delimiter in rest:
            p = prefix + rest[:rest.index(delimiter) + len(delimiter)]
            if (not start_after or p > start_after) and p not in prefixes:
                prefixes.append(p)
            continue
        out.append(k)
    return out, prefixes


def listing():
    s3.create_bucket(Bucket="lst")
    rng = random.Random(11)
    keys = set()
    for _ in range(300):
        depth = rng.randrange(1, 4)
        keys.add("/".join(rng.choice(["a", "b", "c", "dd", "e-f"]) for _ in range(depth)) + f"{rng.randrange(50)}")
    for k in keys:
        s3.put_object(Bucket="lst", Key=k, Body=k.encode())
    for _ in range(60):
        prefix = rng.choice(["", "a", "a/", "b/c", "dd/", "zz", "e-f/a/"])
        delimiter = rng.choice(["", "/", "-"])
        start_after = rng.choice(["", "", "b", "c/d"])
        page = rng.choice([1, 7, 50, 1000])
        want_keys, want_prefixes = model_listing(keys, prefix, delimiter, start_after)
        got_keys, got_prefixes = [], []
        args = dict(Bucket="lst", Prefix=prefix, Delimiter=delimiter, MaxKeys=page)
        if start_after:
            args["StartAfter"] = start_after
        while True:
            r = s3.list_objects_v2(**args)
            assert r["KeyCount"] <= page
            for o in r.get("Contents", []):
                got_keys.append(o["Key"])
                assert o["Size"] == len(o["Key"]) and o["ETag"] == f'"{md5(o["Key"].encode())}"'
            got_prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
            if not r["IsTruncated"]:
                break
            args["ContinuationToken"] = r["NextContinuationToken"]
        assert got_keys == want_keys, (prefix, delimiter, start_after, page)
        assert got_prefixes == want_prefixes, (prefix, delimiter, start_after, page, got_prefixes, want_prefixes)
    # v1 with markers.
    got = []
    args = dict(Bucket="lst", MaxKeys=33)
    while True:
        r = s3.list_objects(**args)
        got += [o["Key"] for o in r.get("Contents", [])]
        if not r["IsTruncated"]:
            break
        args["Marker"] = r["NextMarker"]
    assert got == sorted(keys)
    # Deletes leave the listing at once.
    gone = sorted(keys)[::3]
    for k in gone:
        s3.delete_object(Bucket="lst", Key=k)
    left = [o["Key"] for o in s3.get_paginator("list_objects_v2").paginate(Bucket="lst").search("Contents")]
    assert left == sorted(keys - set(gone))
    expect_code("InvalidArgument", lambda: s3.list_objects_v2(Bucket="lst", ContinuationToken="junk"),
                "a forged continuation token")


def limits_and_auth():
    expect_code("KeyTooLongError", lambda: s3.put_object(Bucket="bkt1", Key="k" * 1025, Body=b"x"), "a 1,025-byte key")
    expect_code("MetadataTooLarge",
                lambda: s3.put_object(Bucket="bkt1", Key="meta", Body=b"x", Metadata={"m": "v" * 2100}),
                "2 KB of metadata")
    expect_code("BadDigest", lambda: s3.put_object(Bucket="bkt1", Key="digest", Body=b"abc",
                                                   ContentMD5="XUFAKrxLKna5cZ2REBfFkg=="), "a wrong Content-MD5")
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket="bkt1", Key="digest"), "nothing stored on a bad digest")
    expect_code("SignatureDoesNotMatch", lambda: client(secret="wrong").list_buckets(), "a wrong secret")
    expect_code("SignatureDoesNotMatch",
                lambda: client(secret="wrong").put_object(Bucket="bkt1", Key="forged", Body=b"x"), "a forged put")
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket="bkt1", Key="forged"), "nothing stored by a forged put")
    # Presigned: a GET works with the URL alone; a tampered URL does not.
    s3.put_object(Bucket="bkt1", Key="shared", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "bkt1", "Key": "shared"}, ExpiresIn=60)
    assert urllib.request.urlopen(url).read() == b"presigned body"
    try:
        urllib.request.urlopen(url.replace("shared", "sharee"))
        raise AssertionError("a tampered presigned URL was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    # No credentials at all: refused, and a body sent with no signature stores nothing.
    try:
        urllib.request.urlopen(f"{ENDPOINT}/bkt1/shared")
        raise AssertionError("an anonymous GET was answered")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    try:
        urllib.request.urlopen(urllib.request.Request(f"{ENDPOINT}/bkt1/anon", data=b"x" * 1_000_000, method="PUT"))
        raise AssertionError("an anonymous PUT was answered")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    except (ConnectionError, urllib.error.URLError):
        pass  # closed before the whole body went: refused too
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket="bkt1", Key="anon"), "nothing stored by an anonymous PUT")


def multipart():
    rng = random.Random(3)
    MiB = 1 << 20
    sizes = [5 * MiB, 5 * MiB + 7, 1234]
    parts = [rng.randbytes(n) for n in sizes]
    up = s3.create_multipart_upload(Bucket="bkt1", Key="mp/obj", ContentType="video/x-test",
                                    Metadata={"m": "1"})["UploadId"]
    other = s3.create_multipart_upload(Bucket="bkt1", Key="mp/other")["UploadId"]
    listed = s3.list_multipart_uploads(Bucket="bkt1")["Uploads"]
    assert sorted((u["Key"], u["UploadId"]) for u in listed) == sorted([("mp/obj", up), ("mp/other", other)]), listed
    etags = []
    for i, body in enumerate(parts):
        r = s3.upload_part(Bucket="bkt1", Key="mp/obj", UploadId=up, PartNumber=i + 1, Body=body)
        assert r["ETag"] == f'"{md5(body)}"'
        etags.append(r["ETag"])
    # Part 2 again: the later one counts.
    parts[1] = rng.randbytes(sizes[1])
    etags[1] = s3.upload_part(Bucket="bkt1", Key="mp/obj", UploadId=up, PartNumber=2, Body=parts[1])["ETag"]
    listed_parts = s3.list_parts(Bucket="bkt1", Key="mp/obj", UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed_parts] == \
        [(i + 1, sizes[i], etags[i]) for i in range(3)], listed_parts
    page = s3.list_parts(Bucket="bkt1", Key="mp/obj", UploadId=up, MaxParts=2)
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    assert [p["PartNumber"] for p in s3.list_parts(Bucket="bkt1", Key="mp/obj", UploadId=up,
                                                   PartNumberMarker=2)["Parts"]] == [3]
    done = lambda ps: {"Parts": [{"PartNumber": n, "ETag": e} for n, e in ps]}
    expect_code("InvalidPart", lambda: s3.complete_multipart_upload(
        Bucket="bkt1", Key="mp/obj", UploadId=up, MultipartUpload=done([(1, '"00"')])), "a wrong part ETag")
    expect_code("InvalidPartOrder", lambda: s3.complete_multipart_upload(
        Bucket="bkt1", Key="mp/obj", UploadId=up, MultipartUpload=done([(2, etags[1]), (1, etags[0])])),
        "parts out of order")
    expect_code("EntityTooSmall", lambda: s3.complete_multipart_upload(
        Bucket="bkt1", Key="mp/obj", UploadId=up, MultipartUpload=done([(3, etags[2]), (4, etags[2])])),
        "a small part before the last")
    r = s3.complete_multipart_upload(Bucket="bkt1", Key="mp/obj", UploadId=up,
                                     MultipartUpload=done([(i + 1, etags[i]) for i in range(3)]))
    want_etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert r["ETag"] == f'"{want_etag}"', (r["ETag"], want_etag)
    whole = b"".join(parts)
    g = s3.get_object(Bucket="bkt1", Key="mp/obj")
    assert g["Body"].read() == whole and g["ETag"] == r["ETag"] and g["ContentType"] == "video/x-test"
    assert g["Metadata"] == {"m": "1"}
    for _ in range(20):
        a = rng.randrange(len(whole))
        b = rng.randrange(a, len(whole))
        assert s3.get_object(Bucket="bkt1", Key="mp/obj", Range=f"bytes={a}-{b}")["Body"].read() == whole[a:b + 1]
    expect_code("NoSuchUpload", lambda: s3.upload_part(Bucket="bkt1", Key="mp/obj", UploadId=up, PartNumber=1,
                                                       Body=b"x"), "a part after Complete")
    s3.upload_part(Bucket="bkt1", Key="mp/other", UploadId=other, PartNumber=1, Body=b"abandoned")
    s3.abort_multipart_upload(Bucket="bkt1", Key="mp/other", UploadId=other)
    expect_code("NoSuchUpload", lambda: s3.list_parts(Bucket="bkt1", Key="mp/other", UploadId=other), "after abort")
    assert s3.list_multipart_uploads(Bucket="bkt1").get("Uploads", []) == []
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket="bkt1", Key="mp/other"), "an aborted upload's key")
    # Complete honours If-None-Match like a PUT.
    up2 = s3.create_multipart_upload(Bucket="bkt1", Key="mp/obj")["UploadId"]
    e = s3.upload_part(Bucket="bkt1", Key="mp/obj", UploadId=up2, PartNumber=1, Body=b"late")["ETag"]
    expect_code("PreconditionFailed", lambda: s3.complete_multipart_upload(
        Bucket="bkt1", Key="mp/obj", UploadId=up2, MultipartUpload=done([(1, e)]), IfNoneMatch="*"),
        "Complete over an existing key with If-None-Match *")
    assert s3.get_object(Bucket="bkt1", Key="mp/obj")["Body"].read() == whole
    s3.abort_multipart_upload(Bucket="bkt1", Key="mp/obj", UploadId=up2)
    assert s3.get_object(Bucket="bkt1", Key="mp/obj")["Body"].read() == whole, "abort took the object's data"


def copies_and_batch_deletes():
    s3.put_object(Bucket="bkt1", Key="src", Body=b"copy me" * 20000, ContentType="text/x-src", Metadata={"a": "1"})
    r = s3.copy_object(Bucket="bkt1", Key="dst", CopySource={"Bucket": "bkt1", "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == f'"{md5(b"copy me" * 20000)}"'
    g = s3.get_object(Bucket="bkt1", Key="dst")
    assert g["Body"].read() == b"copy me" * 20000 and g["Metadata"] == {"a": "1"} and g["ContentType"] == "text/x-src"
    s3.copy_object(Bucket="bkt1", Key="dst2", CopySource={"Bucket": "bkt1", "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"b": "2"}, ContentType="text/x-dst")
    assert s3.head_object(Bucket="bkt1", Key="dst2")["Metadata"] == {"b": "2"}
    # The copy is its own object: deleting the source leaves it whole.
    s3.delete_object(Bucket="bkt1", Key="src")
    assert s3.get_object(Bucket="bkt1", Key="dst")["Body"].read() == b"copy me" * 20000
    expect_code("NoSuchKey", lambda: s3.copy_object(Bucket="bkt1", Key="x", CopySource={"Bucket": "bkt1", "Key": "src"}),
                "a copy of a missing key")
    for i in range(5):
        s3.put_object(Bucket="bkt1", Key=f"batch/{i}", Body=b"x")
    r = s3.delete_objects(Bucket="bkt1", Delete={"Objects": [{"Key": f"batch/{i}"} for i in range(7)]})
    assert sorted(d["Key"] for d in r["Deleted"]) == [f"batch/{i}" for i in range(7)] and not r.get("Errors")
    assert s3.list_objects_v2(Bucket="bkt1", Prefix="batch/")["KeyCount"] == 0


PART = 5 << 20
INLINE_MAX = 4096  # net/s3/src/layout.rs


def etag_of(body, parts):
    """The ETag S3 gives `body` put whole (parts 0) or in `parts` parts of PART bytes."""
    if not parts:
        return md5(body)
    digests = b"".join(hashlib.md5(body[i:i + PART]).digest() for i in range(0, len(body), PART))
    return f"{hashlib.md5(digests).hexdigest()}-{parts}"


def write_until_killed():
    """PUTs (some replacing others) and multipart uploads until the node is gone; prints
    each attempt before it and each acknowledgement after it."""
    s3.create_bucket(Bucket="crash")
    rng = random.Random(9)
    i = 0
    try:
        while True:
            i += 1
            key = f"k{rng.randrange(12)}"
            if i % 5 == 0:
                body = rng.randbytes(2 * PART + rng.randrange(1, 300_000))
                print(f"attempt {key} {etag_of(body, 3)}", flush=True)
                up = s3.create_multipart_upload(Bucket="crash", Key=key)["UploadId"]
                etags = [s3.upload_part(Bucket="crash", Key=key, UploadId=up, PartNumber=n + 1,
                                        Body=body[n * PART:(n + 1) * PART])["ETag"] for n in range(3)]
                s3.complete_multipart_upload(Bucket="crash", Key=key, UploadId=up, MultipartUpload={
                    "Parts": [{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)]})
                print(f"ack {key} {etag_of(body, 3)}", flush=True)
            else:
                body = rng.randbytes(rng.randrange(1, 3_000_000))
                print(f"attempt {key} {md5(body)}", flush=True)
                s3.put_object(Bucket="crash", Key=key, Body=body)
                print(f"ack {key} {md5(body)}", flush=True)
    except Exception as e:  # the node was killed
        print(f"stopped: {type(e).__name__}", flush=True)


def check_after_crash(redis_port, chunk):
    """Every listed object reads back whole as its ETag says; every acknowledged key holds
    its last acknowledged object or one attempted after it; prints the chunks the objects
    and the unfinished uploads need, and the chunk keys the node holds."""
    said = {}
    for line in sys.stdin:
        kind, *rest = line.split()
        if kind in ("attempt", "ack"):
            key, etag = rest
            said.setdefault(key, []).append((kind, etag))
    need = 0
    listed = {o["Key"]: o for o in s3.get_paginator("list_objects_v2").paginate(Bucket="crash").search("Contents")}
    for key, o in listed.items():
        body = s3.get_object(Bucket="crash", Key=key)["Body"].read()
        etag = o["ETag"].strip('"')
        parts = int(etag.split("-")[1]) if "-" in etag else 0
        assert len(body) == o["Size"] and etag_of(body, parts) == etag, f"{key} is not whole"
        if parts:
            need += sum(-(-min(PART, len(body) - i) // chunk) for i in range(0, len(body), PART))
        elif len(body) > INLINE_MAX:  # smaller ones are kept in their entry
            need += -(-len(body) // chunk)
    for key, events in said.items():
        acks = [i for i, (kind, _) in enumerate(events) if kind == "ack"]
        if not acks:
            continue
        allowed = {etag for kind, etag in events[acks[-1]:]}
        assert key in listed, f"{key} was acknowledged and is gone"
        assert listed[key]["ETag"].strip('"') in allowed, f"{key} holds an object older than its last acknowledgement"
    for u in s3.list_multipart_uploads(Bucket="crash").get("Uploads", []):
        parts = s3.list_parts(Bucket="crash", Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
        # A Complete cut off after it switched the key and before it forgot the upload: the
        # object names these very parts, counted above already.
        digests = b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts)
        completed = f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"
        if u["Key"] in listed and listed[u["Key"]]["ETag"].strip('"') == completed:
            continue
        for p in parts:
            need += -(-p["Size"] // chunk)
    import redis
    held = sum(1 for _ in redis.Redis(port=redis_port).scan_iter(match="c:*", count=1000))
    print(f"objects {len(listed)} chunks needed {need} held {held}", flush=True)


def checksums():
    import base64
    import zlib
    body = b"checked " * 5000
    b64 = lambda raw: base64.b64encode(raw).decode()
    sha = b64(hashlib.sha256(body).digest())
    crc = b64(zlib.crc32(body).to_bytes(4, "big"))
    r = s3.put_object(Bucket="bkt1", Key="sum/sha", Body=body, ChecksumAlgorithm="SHA256")
    assert r.get("ChecksumSHA256") == sha, r
    h = s3.head_object(Bucket="bkt1", Key="sum/sha", ChecksumMode="ENABLED")
    assert h.get("ChecksumSHA256") == sha, h
    g = s3.get_object(Bucket="bkt1", Key="sum/sha", ChecksumMode="ENABLED")
    assert g["Body"].read() == body and g.get("ChecksumSHA256") == sha
    # The SDK's default (a CRC32, in a header or a trailer), kept and given back.
    s3.put_object(Bucket="bkt1", Key="sum/default", Body=body, ChecksumAlgorithm="CRC32")
    assert s3.head_object(Bucket="bkt1", Key="sum/default", ChecksumMode="ENABLED").get("ChecksumCRC32") == crc
    expect_code("BadDigest", lambda: s3.put_object(Bucket="bkt1", Key="sum/bad", Body=body, ChecksumCRC32="AAAAAA=="),
                "a wrong CRC32")
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket="bkt1", Key="sum/bad"), "nothing stored on a wrong CRC32")
    up = s3.create_multipart_upload(Bucket="bkt1", Key="sum/mp", ChecksumAlgorithm="SHA1")["UploadId"]
    p = s3.upload_part(Bucket="bkt1", Key="sum/mp", UploadId=up, PartNumber=1, Body=body, ChecksumAlgorithm="SHA1")
    assert p.get("ChecksumSHA1") == b64(hashlib.sha1(body).digest()), p
    s3.abort_multipart_upload(Bucket="bkt1", Key="sum/mp", UploadId=up)


def write_survivors(n):
    s3.create_bucket(Bucket="survive")
    rng = random.Random(5)
    for i in range(n):
        body = rng.randbytes(rng.choice([10, 5000, 300_000]))
        s3.put_object(Bucket="survive", Key=f"k{i}", Body=body)
        print(f"k{i} {md5(body)}", flush=True)


def check_survivors():
    n = 0
    for line in sys.stdin:
        key, digest = line.split()
        body = s3.get_object(Bucket="survive", Key=key)["Body"].read()
        assert md5(body) == digest, f"{key} changed after the restart"
        n += 1
    print(f"{n} objects read back whole")


if MODE == "all":
    for step in [buckets, objects, conditions, listing, limits_and_auth, multipart, copies_and_batch_deletes, checksums]:
        step()
        print(f"{step.__name__}: ok", flush=True)
elif MODE == "smoke":
    for step in [buckets, objects, listing]:
        step()
        print(f"{step.__name__}: ok", flush=True)
elif MODE == "write-survivors":
    write_survivors(int(sys.argv[5]))
elif MODE == "check-survivors":
    check_survivors()
elif MODE == "write-until-killed":
    write_until_killed()
elif MODE == "check-after-crash":
    check_after_crash(int(sys.argv[5]), int(sys.argv[6]))
else:
    sys.exit(f"unknown mode {MODE}")
