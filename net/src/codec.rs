//! Encoding frames and checking them on the way in: the preamble's lengths against the
//! limits, the header with bytecheck (`rkyv::access`) before any field is read, then the
//! fields themselves (key length, payload agreeing with the operation).

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;

use crate::error::WireError;
use crate::frame::{FrameKind, Preamble, PREAMBLE_BYTES};
use crate::limits::{MAX_HEADER_BYTES, MAX_KEY_BYTES, MAX_LIST_PARTITIONS, MAX_PAYLOAD_BYTES};
use crate::message::{ArchivedRequest, ArchivedResponse, Request, Response};

/// Header bytes aligned for rkyv.
pub type HeaderBuf = AlignedVec<16>;

/// Appends a preamble and `header` to `out`.
fn encode_into(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u64,
    header: &[u8],
    payload_len: usize,
) -> Result<(), WireError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(WireError::TooLarge {
            what: "header",
            len: header.len(),
            limit: MAX_HEADER_BYTES,
        });
    }
    let pre = Preamble {
        kind,
        header_len: header.len() as u32,
        payload_len: payload_len as u32,
        request_id: id,
    };
    out.reserve(PREAMBLE_BYTES + header.len());
    out.extend_from_slice(&pre.encode());
    out.extend_from_slice(header);
    Ok(())
}

thread_local! {
    /// A serializer buffer reused for every header this thread encodes: `rkyv::to_bytes`
    /// would allocate and free one per frame.
    static HEADER_SCRATCH: std::cell::RefCell<HeaderBuf> = std::cell::RefCell::new(HeaderBuf::new());
}

/// Serializes `value` into this thread's scratch buffer and appends the frame to `out`.
fn encode_with_scratch<T>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u64,
    value: &T,
    payload_len: usize,
) -> Result<(), WireError>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<HeaderBuf, rkyv::ser::allocator::ArenaHandle<'a>, RkyvError>,
    >,
{
    HEADER_SCRATCH.with(|scratch| {
        // Taken out while in use, so a nested call (none today) would get a fresh buffer.
        let mut buf = std::mem::take(&mut *scratch.borrow_mut());
        buf.clear();
        let result = rkyv::api::high::to_bytes_in::<_, RkyvError>(value, buf);
        let buf = result.map_err(|e| WireError::Malformed(e.to_string()))?;
        let framed = encode_into(out, kind, id, &buf, payload_len);
        *scratch.borrow_mut() = buf;
        framed
    })
}

/// Appends the preamble and header of a request whose payload (`payload_len` bytes)
/// follows; lets a sender queue many frames in one buffer.
pub fn encode_request_into(
    out: &mut Vec<u8>,
    id: u64,
    req: &Request,
    payload_len: usize,
) -> Result<(), WireError> {
    encode_with_scratch(out, FrameKind::Request, id, req, payload_len)
}

/// Appends the preamble and header of a response whose payload (`payload_len` bytes) follows.
pub fn encode_response_into(
    out: &mut Vec<u8>,
    id: u64,
    resp: &Response,
    payload_len: usize,
) -> Result<(), WireError> {
    encode_with_scratch(out, FrameKind::Response, id, resp, payload_len)
}

/// Preamble and header of a request whose payload (`payload_len` bytes) follows.
pub fn encode_request(id: u64, req: &Request, payload_len: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_request_into(&mut out, id, req, payload_len)?;
    Ok(out)
}

/// Preamble and header of a response whose payload (`payload_len` bytes) follows.
pub fn encode_response(id: u64, resp: &Response, payload_len: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_response_into(&mut out, id, resp, payload_len)?;
    Ok(out)
}

/// A header buffer of exactly `len` bytes (already checked against the limit).
pub fn header_buf(len: usize) -> HeaderBuf {
    let mut buf = HeaderBuf::with_capacity(len);
    buf.resize(len, 0);
    buf
}

fn check_key(key: &[u8]) -> Result<(), WireError> {
    if key.is_empty() {
        return Err(WireError::Malformed("empty key".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(WireError::TooLarge {
            what: "key",
            len: key.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Validates a request header and checks it against the frame's payload length.
pub fn access_request(header: &HeaderBuf, payload_len: u32) -> Result<&ArchivedRequest, WireError> {
    let req = rkyv::access::<ArchivedRequest, RkyvError>(header)
        .map_err(|e| WireError::Malformed(format!("invalid request header: {e}")))?;
    let wants_payload = match req {
        ArchivedRequest::Put { .. } => true,
        ArchivedRequest::Replicate { tombstone, .. } => !*tombstone,
        ArchivedRequest::Update { op, .. } => op.carries_value(),
        _ => false,
    };
    match req {
        ArchivedRequest::Put { key, .. }
        | ArchivedRequest::Get { key, .. }
        | ArchivedRequest::Delete { key, .. }
        | ArchivedRequest::Stat { key, .. }
        | ArchivedRequest::Replicate { key, .. }
        | ArchivedRequest::Reassert { key, .. }
        | ArchivedRequest::Update { key, .. } => check_key(key.as_slice())?,
        // Empty: from the partition's first key.
        ArchivedRequest::SyncManifest { after, .. } => {
            if !after.is_empty() {
                check_key(after.as_slice())?
            }
        }
        ArchivedRequest::AuthProof { proof } => {
            if proof.len() > 64 {
                return Err(WireError::Malformed(format!(
                    "auth proof of {} bytes",
                    proof.len()
                )));
            }
        }
        ArchivedRequest::ListKeys {
            partitions, pattern, ..
        } => {
            if partitions.len() > MAX_LIST_PARTITIONS || pattern.len() > MAX_KEY_BYTES {
                return Err(WireError::Malformed(format!(
                    "a key listing of {} partitions with a pattern of {} bytes",
                    partitions.len(),
                    pattern.len()
                )));
            }
        }
        ArchivedRequest::List {
            index,
            prefix,
            start,
            delimiter,
            limit,
            ..
        } => {
            check_key(index.as_slice())?;
            match start.as_ref() {
                Some(
                    crate::message::ArchivedListStart::After(k) | crate::message::ArchivedListStart::At(k),
                ) => check_key(k.as_slice())?,
                None => {}
            }
            let limit = limit.to_native();
            if prefix.len() > MAX_KEY_BYTES
                || delimiter.len() > MAX_KEY_BYTES
                || limit == 0
                || limit > crate::limits::MAX_LIST_ITEMS
            {
                return Err(WireError::Malformed(format!(
                    "a listing of {limit} items (1 to {}) with a prefix of {} and a delimiter of {} bytes",
                    crate::limits::MAX_LIST_ITEMS,
                    prefix.len(),
                    delimiter.len()
                )));
            }
        }
        ArchivedRequest::Ping
        | ArchivedRequest::GetShardMap
        | ArchivedRequest::Stats
        | ArchivedRequest::AuthChallenge => {}
    }
    if !wants_payload && payload_len != 0 {
        return Err(WireError::Malformed(format!(
            "a request of this kind carries no payload, got {payload_len} bytes"
        )));
    }
    if payload_len as usize > MAX_PAYLOAD_BYTES {
        return Err(WireError::TooLarge {
            what: "value",
            len: payload_len as usize,
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(req)
}

/// Validates a response header.
pub fn access_response(header: &HeaderBuf) -> Result<&ArchivedResponse, WireError> {
    rkyv::access::<ArchivedResponse, RkyvError>(header)
        .map_err(|e| WireError::Malformed(format!("invalid response header: {e}")))
}

/// A whole frame parsed out of a byte slice (for tests, fuzzing and buffered readers).
#[derive(Debug)]
pub struct RawFrame {
    pub preamble: Preamble,
    pub header: HeaderBuf,
    pub payload: std::ops::Range<usize>,
    /// Bytes of `buf` this frame used.
    pub consumed: usize,
}

/// Parses one frame from the start of `buf`: `Ok(None)` if more bytes are needed.
pub fn parse_frame(buf: &[u8]) -> Result<Option<RawFrame>, WireError> {
    if buf.len() < PREAMBLE_BYTES {
        return Ok(None);
    }
    let mut pre = [0u8; PREAMBLE_BYTES];
    pre.copy_from_slice(&buf[..PREAMBLE_BYTES]);
    let preamble = Preamble::decode(&pre)?;
    let header_end = PREAMBLE_BYTES + preamble.header_len as usize;
    let end = header_end + preamble.payload_len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let mut header = header_buf(preamble.header_len as usize);
    header.copy_from_slice(&buf[PREAMBLE_BYTES..header_end]);
    Ok(Some(RawFrame {
        preamble,
        header,
        payload: header_end..end,
        consumed: end,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ByteRange, Recipient, Status, Target};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn golden_ping_and_put_frames() {
        let ping = encode_request(7, &Request::Ping, 0).unwrap();
        // Issue 33's split listings (`ListStart`) made the largest request variant, and so
        // every request's header, 8 bytes longer (0x48).
        assert_eq!(
            hex(&ping[..PREAMBLE_BYTES]),
            "485357310401000048000000000000000700000000000000"
        );
        let put = Request::Put {
            key: b"k1".to_vec(),
            if_version: Some(5),
            target: Target {
                partition: 9,
                epoch: 3,
            },
            expires_ms: 0,
        };
        let bytes = encode_request(1, &put, 4).unwrap();
        assert_eq!(hex(&bytes), "4853573104010000500000000400000001000000000000006b3100000000000001000000f4ffffff02000000000000000100000000000000050000000000000009000000000000000300000000000000000000000000000000000000000000000000000000000000");
    }

    #[test]
    fn golden_response_frame() {
        let mut r = Response::new(Status::VersionMismatch { current: 42 });
        r.version = 41;
        let bytes = encode_response(2, &r, 0).unwrap();
        // Issue 21 added `expires_ms`: the header is 8 bytes longer (0x38), those 8 at its end.
        assert_eq!(hex(&bytes), "48535731040200003800000000000000020000000000000003000000000000002a00000000000000ffffffffffffffff2900000000000000000000000000000000000000000000000000000000000000");
    }

    #[test]
    fn round_trip_every_request() {
        let t = Target {
            partition: 1,
            epoch: 2,
        };
        let all = vec![
            Request::Ping,
            Request::Put {
                key: b"a".to_vec(),
                if_version: None,
                target: t,
                expires_ms: 0,
            },
            Request::Get {
                key: b"b".to_vec(),
                range: Some(ByteRange { offset: 1, len: 2 }),
                target: t,
            },
            Request::Delete {
                key: b"c".to_vec(),
                if_version: Some(0),
                target: t,
            },
            Request::Stat {
                key: b"d".to_vec(),
                target: t,
            },
            Request::GetShardMap,
            Request::Stats,
            Request::AuthChallenge,
            Request::AuthProof { proof: vec![1; 32] },
            Request::Replicate {
                to: Recipient { node: 3, shard: 1 },
                key: b"e".to_vec(),
                partition: 1,
                chain_version: 4,
                version: 99,
                tombstone: false,
                expires_ms: 0,
            },
            Request::Replicate {
                to: Recipient { node: 3, shard: 1 },
                key: b"f".to_vec(),
                partition: 1,
                chain_version: 4,
                version: 100,
                tombstone: true,
                expires_ms: 0,
            },
            Request::SyncManifest {
                to: Recipient { node: 4, shard: 0 },
                partition: 2,
                chain_version: 5,
                after: b"g".to_vec(),
            },
            Request::SyncManifest {
                to: Recipient { node: 4, shard: 0 },
                partition: 2,
                chain_version: 5,
                after: Vec::new(),
            },
            Request::Reassert {
                to: Recipient { node: 5, shard: 2 },
                key: b"h".to_vec(),
                partition: 2,
                floor: 77,
            },
            Request::ListKeys {
                partitions: vec![0, 7, 4095],
                pattern: b"user:*".to_vec(),
                from_hash: 12345,
            },
            Request::List {
                index: b"{photos}".to_vec(),
                target: t,
                prefix: b"{photos}/2026/".to_vec(),
                start: Some(crate::message::ListStart::At(b"{photos}/2026/a.jpg".to_vec())),
                delimiter: b"/".to_vec(),
                limit: 1000,
            },
            Request::Update {
                key: b"i".to_vec(),
                target: Target {
                    partition: 3,
                    epoch: 1,
                },
                op: crate::message::UpdateOp::Set {
                    only_if: 1,
                    get: true,
                    expires_ms: 1_800_000_000_000,
                    keep_ttl: false,
                },
            },
            Request::Update {
                key: b"j".to_vec(),
                target: Target {
                    partition: 3,
                    epoch: 1,
                },
                op: crate::message::UpdateOp::IncrBy(-5),
            },
        ];
        for (i, req) in all.into_iter().enumerate() {
            let carries_value = match &req {
                Request::Put { .. } | Request::Replicate { tombstone: false, .. } => true,
                Request::Update { op, .. } => op.carries_value(),
                _ => false,
            };
            let payload = if carries_value { 3 } else { 0 };
            let mut bytes = encode_request(i as u64, &req, payload).unwrap();
            bytes.extend_from_slice(&vec![9u8; payload]);
            let f = parse_frame(&bytes).unwrap().unwrap();
            assert_eq!(f.consumed, bytes.len());
            assert_eq!(f.preamble.request_id, i as u64);
            let archived = access_request(&f.header, f.preamble.payload_len).unwrap();
            let back: Request = rkyv::deserialize::<Request, RkyvError>(archived).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn lengths_are_checked_before_anything_is_allocated() {
        let mut pre = Preamble {
            kind: FrameKind::Request,
            header_len: 10,
            payload_len: 0,
            request_id: 1,
        }
        .encode();
        pre[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Preamble::decode(&pre),
            Err(WireError::TooLarge { what: "header", .. })
        ));
        let mut pre = Preamble {
            kind: FrameKind::Request,
            header_len: 10,
            payload_len: 0,
            request_id: 1,
        }
        .encode();
        pre[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Preamble::decode(&pre),
            Err(WireError::TooLarge { what: "payload", .. })
        ));
        let mut pre = Preamble {
            kind: FrameKind::Request,
            header_len: 10,
            payload_len: 0,
            request_id: 1,
        }
        .encode();
        pre[4] = 9;
        assert!(matches!(
            Preamble::decode(&pre),
            Err(WireError::UnsupportedVersion { got: 9, .. })
        ));
        pre[0] = b'X';
        assert!(matches!(Preamble::decode(&pre), Err(WireError::BadMagic(_))));
    }

    #[test]
    fn a_payload_that_disagrees_with_the_operation_is_refused() {
        let bytes = encode_request(1, &Request::Ping, 5).unwrap();
        let mut with_payload = bytes.clone();
        with_payload.extend_from_slice(b"hello");
        let f = parse_frame(&with_payload).unwrap().unwrap();
        assert!(matches!(
            access_request(&f.header, f.preamble.payload_len),
            Err(WireError::Malformed(_))
        ));
        let long = Request::Get {
            key: vec![b'k'; MAX_KEY_BYTES + 1],
            range: None,
            target: Target {
                partition: 0,
                epoch: 0,
            },
        };
        let bytes = encode_request(1, &long, 0).unwrap();
        let f = parse_frame(&bytes).unwrap().unwrap();
        assert!(matches!(
            access_request(&f.header, 0),
            Err(WireError::TooLarge { what: "key", .. })
        ));
        // A tombstone carries no value.
        let tomb = Request::Replicate {
            to: Recipient { node: 1, shard: 0 },
            key: b"k".to_vec(),
            partition: 0,
            chain_version: 1,
            version: 2,
            tombstone: true,
            expires_ms: 0,
        };
        let mut bytes = encode_request(1, &tomb, 1).unwrap();
        bytes.push(0);
        let f = parse_frame(&bytes).unwrap().unwrap();
        assert!(matches!(
            access_request(&f.header, 1),
            Err(WireError::Malformed(_))
        ));
        let empty = Request::Stat {
            key: vec![],
            target: Target {
                partition: 0,
                epoch: 0,
            },
        };
        let bytes = encode_request(1, &empty, 0).unwrap();
        let f = parse_frame(&bytes).unwrap().unwrap();
        assert!(matches!(
            access_request(&f.header, 0),
            Err(WireError::Malformed(_))
        ));
    }
}

#[cfg(test)]
mod garbage {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Random bytes: an error or a request to wait for more, never a panic.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some(f)) = parse_frame(&bytes) {
                let _ = access_request(&f.header, f.preamble.payload_len);
                let _ = access_response(&f.header);
            }
        }

        /// A valid preamble with a random header: bytecheck refuses what is not a request.
        #[test]
        fn random_headers_are_checked(header in proptest::collection::vec(any::<u8>(), 1..256), payload in 0u32..64) {
            let pre = Preamble { kind: FrameKind::Request, header_len: header.len() as u32, payload_len: payload, request_id: 1 };
            let mut bytes = pre.encode().to_vec();
            bytes.extend_from_slice(&header);
            bytes.resize(bytes.len() + payload as usize, 0);
            let f = parse_frame(&bytes).unwrap().unwrap();
            let _ = access_request(&f.header, f.preamble.payload_len);
        }

        /// Every prefix of a valid frame asks for more bytes; flipping any byte is an error
        /// or a different valid frame, never a panic.
        #[test]
        fn truncated_and_flipped_frames(cut in 0usize..200, flip in 0usize..200, bit in 0u8..8) {
            let req = Request::Get { key: b"some-key".to_vec(), range: None, target: crate::message::Target { partition: 3, epoch: 9 } };
            let bytes = encode_request(5, &req, 0).unwrap();
            let cut = cut % bytes.len();
            prop_assert!(parse_frame(&bytes[..cut]).unwrap().is_none());
            let mut flipped = bytes.clone();
            let at = flip % flipped.len();
            flipped[at] ^= 1 << bit;
            if let Ok(Some(f)) = parse_frame(&flipped) {
                let _ = access_request(&f.header, f.preamble.payload_len);
            }
        }
    }
}
