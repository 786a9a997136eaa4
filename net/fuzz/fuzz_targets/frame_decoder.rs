//! Feeds arbitrary bytes to the frame decoder and the header checks, as a server reads
//! them: every input must give a frame, an error or a request for more bytes, never a panic.
#![no_main]

use hotshard_net::codec::{access_request, access_response, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(frame)) = parse_frame(rest) {
        let _ = access_request(&frame.header, frame.preamble.payload_len);
        let _ = access_response(&frame.header);
        rest = &rest[frame.consumed..];
    }
});
