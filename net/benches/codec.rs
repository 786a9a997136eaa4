//! Frames per second per core for small frames: encoding a request, and the checks a
//! server makes on the way in (preamble, bytecheck, field limits), plus placement.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use hotshard_net::codec::{access_request, encode_request, encode_response_into, parse_frame};
use hotshard_net::placement::partition_of;
use hotshard_net::{Request, Response, Status, Target};

fn get_request() -> Request {
    Request::Get {
        key: b"bucket/object-000123".to_vec(),
        range: None,
        target: Target {
            partition: 77,
            epoch: 3,
        },
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    let req = get_request();
    g.bench_function("encode_get", |b| {
        b.iter(|| encode_request(black_box(9), black_box(&req), 0).unwrap())
    });
    // What the server does for every reply: append a Get's response head to a reused buffer.
    let mut resp = Response::new(Status::Ok);
    (resp.version, resp.object_len, resp.crc32c) = (12_345, 4096, 0xdead_beef);
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode_get_response_into", |b| {
        b.iter(|| {
            out.clear();
            encode_response_into(&mut out, black_box(9), black_box(&resp), 4096).unwrap();
        })
    });
    let bytes = encode_request(9, &req, 0).unwrap();
    g.bench_function("parse_and_check_get", |b| {
        b.iter(|| {
            let f = parse_frame(black_box(&bytes)).unwrap().unwrap();
            access_request(&f.header, f.preamble.payload_len)
                .map(|_| ())
                .unwrap();
        })
    });
    g.finish();
    c.bench_function("placement/xxh3_partition_20B_key", |b| {
        b.iter(|| partition_of(black_box(b"bucket/object-000123"), 12))
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
