//! Feeds arbitrary bytes to the frame decoder and the header checks, as a server reads
//! them (parse, check, deserialize), and to the shard-map decoder, as a client reads it:
//! every input must give a frame, an error or a request for more bytes, never a panic.
#![no_main]

use hotshard_net::codec::{access_request, access_response, parse_frame};
use hotshard_net::shard_map::ShardMap;
use hotshard_net::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(frame)) = parse_frame(rest) {
        if let Ok(req) = access_request(&frame.header, frame.preamble.payload_len) {
            let _ = rkyv::deserialize::<Request, rkyv::rancor::Error>(req);
        }
        if let Ok(resp) = access_response(&frame.header) {
            let _ = resp.status();
        }
        let _ = ShardMap::from_bytes(&rest[frame.payload.clone()]);
        rest = &rest[frame.consumed..];
    }
});
