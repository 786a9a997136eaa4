//! Request and response headers, archived with rkyv. Payloads (values, the shard map) are
//! never inside the archive: they follow it as raw bytes.

use rkyv::{Archive, Deserialize, Serialize};

/// Which partition a keyed request is for, and the shard-map epoch the client routed by.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Target {
    pub partition: u32,
    pub epoch: u64,
}

/// The node and shard a node-to-node request (Replicate, SyncManifest, Reassert) is for,
/// by the sender's map. A shard refuses one meant for another: a node that now holds the
/// listener another node held (a wiped node back on the same addresses while the old
/// one's registration lives) must never apply records meant for that node, and answer for
/// it as the chain's last replica.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Recipient {
    pub node: u32,
    pub shard: u32,
}

/// Part of a value: `len` bytes from `offset`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// What a client asks. A Put's value is the frame's payload.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Request {
    Ping,
    Put {
        key: Vec<u8>,
        if_version: Option<u64>,
        target: Target,
        /// When the object expires, Unix milliseconds; 0: never (issue 21). Relative with
        /// `expiry::EXPIRES_IN`, converted by the head.
        expires_ms: u64,
    },
    Get {
        key: Vec<u8>,
        range: Option<ByteRange>,
        target: Target,
    },
    Delete {
        key: Vec<u8>,
        if_version: Option<u64>,
        target: Target,
    },
    Stat {
        key: Vec<u8>,
        target: Target,
    },
    GetShardMap,
    Stats,
    /// Asks for an authentication challenge (a nonce, hex, in the response's `reason`).
    AuthChallenge,
    /// Answers the challenge: HMAC-SHA256 over it with the shared secret (see `auth`).
    AuthProof {
        proof: Vec<u8>,
    },
    /// From one replica of a chain to the next: apply this record with the version the
    /// head gave it (the value is the payload; none for a tombstone), forward it down the
    /// chain, and answer once every replica after this one has it durably. Refused
    /// (`WrongShard`) unless the receiver's chain for `partition` has `chain_version`.
    Replicate {
        /// The replica it is for (refused by any other).
        to: Recipient,
        key: Vec<u8>,
        partition: u32,
        chain_version: u64,
        version: u64,
        tombstone: bool,
        /// The record's expiry, Unix milliseconds; 0: never.
        expires_ms: u64,
    },
    /// From a syncing replica to the serving replica it catches up from (issue 20): a page
    /// of the partition's keys after `after` (key order; empty: from the start), each with
    /// version, value checksum and whether it is a tombstone, as the payload of the answer
    /// (`arg` 1: more pages follow). Refused (`WrongShard`) unless the receiver serves
    /// `partition` in a chain at `chain_version`.
    SyncManifest {
        to: Recipient,
        partition: u32,
        chain_version: u64,
        after: Vec<u8>,
    },
    /// From a syncing replica to its chain's head: the replica holds `key` at `floor`, a
    /// version the serving replicas do not have (a write that reached it and no further
    /// before it left the chain). The head writes the key again as it has it (its value,
    /// or a tombstone if it has none) with a version past `floor`, down the whole chain,
    /// and answers once the chain has it.
    Reassert {
        to: Recipient,
        key: Vec<u8>,
        partition: u32,
        floor: u64,
    },
    /// The live keys of `partitions` that match `pattern` (Redis's glob; empty: every key),
    /// for SCAN and KEYS (issue 21): the answer's payload is each key as a 2-byte
    /// little-endian length and its bytes; `arg` is how many of `partitions`, from the
    /// first, it covers whole (ask again for the rest). A partition too large for one
    /// answer is listed in pages, in the order of `list_hash`: the answer's `version` is
    /// then the hash the first partition it did not cover resumes from (0: none), and
    /// `from_hash` asks for the first partition's keys from that hash on (0: all). Refused
    /// (`WrongShard`) unless the receiver serves every one of them.
    ListKeys {
        partitions: Vec<u32>,
        pattern: Vec<u8>,
        from_hash: u64,
    },
    /// A read-modify-write of one key (RESP's INCR, APPEND, SET with NX/XX/GET, GETDEL),
    /// run at the key's head, one at a time per key there, as a read and a write
    /// conditional on the version read. The answer's `arg` is the result (see `UpdateOp`);
    /// its `version` is the version the key had before (0: none), and its payload that
    /// value where the op gives it back.
    Update {
        key: Vec<u8>,
        target: Target,
        op: UpdateOp,
    },
    /// A page of an ordered index (issue 33): the keys naming `index`'s tag (`{bucket}`:
    /// routed as that key, to a serving replica of its partition), in key order, starting
    /// with `prefix`, after `start_after`, at most `limit` items; with a `delimiter`, keys
    /// with it after the prefix rolled up into common prefixes. The answer's payload is
    /// the page (`listing::decode_page`); `arg` 1: more may follow (ask again after the
    /// last item); 2: this range of a split index ended, go on at the page's resume key
    /// (as `start_after` with `start_included`, routed as that key). A key with a write in
    /// flight waits as a read does. `index` routes it: the key the listing starts at (the
    /// later of prefix and `start`) when that begins with the tag, so that a split index's
    /// range holding it answers. (One field for both starts: another field here made every
    /// request's header 8 to 24 bytes longer.)
    List {
        index: Vec<u8>,
        target: Target,
        prefix: Vec<u8>,
        start: Option<ListStart>,
        delimiter: Vec<u8>,
        limit: u32,
    },
}

/// Where a page of an ordered index starts.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ListStart {
    /// After this key (or, if it is a common prefix, after every key under it).
    After(Vec<u8>),
    /// At this key (the next range of a split index).
    At(Vec<u8>),
}

impl ListStart {
    pub fn key(&self) -> &[u8] {
        match self {
            ListStart::After(k) | ListStart::At(k) => k,
        }
    }
}

/// What an `Update` does to its key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum UpdateOp {
    /// Adds to the decimal integer stored (absent: 0). `arg`: the new integer (as i64).
    IncrBy(i64),
    /// Appends the payload (absent: the payload alone). `arg`: the new length.
    Append,
    /// Stores the payload if the key is (`only_if` 1) absent or (2) present, or (0)
    /// always, expiring at `expires_ms` (0: never), or with `keep_ttl` at the expiry the
    /// key had. `arg`: 1 if it was stored. With `get`, the old value comes back.
    Set {
        only_if: u8,
        get: bool,
        expires_ms: u64,
        keep_ttl: bool,
    },
    /// Gives the key the expiry `at_ms` (0: none; a time already past deletes the key) if
    /// `cond` holds: 0 always, 1 it has none, 2 it has one, 3 `at_ms` is later than its
    /// (none counts as never), 4 `at_ms` is sooner (none counts as never), 5 it has one
    /// and `at_ms` is sooner (XX LT). The value is
    /// written again with the new expiry. `arg`: 1 if changed. With `get`, the value
    /// comes back (GETEX).
    Expire { at_ms: u64, cond: u8, get: bool },
    /// Deletes the key and gives its value back. `arg`: 1 if there was one.
    GetDel,
    /// Writes the payload at byte `offset`, zero-padding a shorter value (an empty payload
    /// changes nothing and creates nothing). `arg`: the new length.
    SetRange { offset: u64 },
    /// Sets or clears bit `offset` (bit 0: the first byte's highest), zero-padding a
    /// shorter value. `arg`: the bit's old value.
    SetBit { offset: u64, bit: bool },
    /// Adds the payload (a decimal float as Redis's INCRBYFLOAT reads it) to the float the
    /// key holds (absent: 0), in Redis's long double arithmetic and format. The new value
    /// comes back as the payload; `arg` is its length.
    IncrByFloat,
}

impl UpdateOp {
    /// Whether the request carries a value (the frame's payload).
    pub fn carries_value(&self) -> bool {
        matches!(
            self,
            UpdateOp::Append | UpdateOp::Set { .. } | UpdateOp::SetRange { .. } | UpdateOp::IncrByFloat
        )
    }
}

impl ArchivedUpdateOp {
    pub fn carries_value(&self) -> bool {
        matches!(
            self,
            ArchivedUpdateOp::Append
                | ArchivedUpdateOp::Set { .. }
                | ArchivedUpdateOp::SetRange { .. }
                | ArchivedUpdateOp::IncrByFloat
        )
    }
}

impl Request {
    /// Sent only by one node of the cluster to another: accepted only on a connection
    /// that proved the cluster's peer key (`auth`).
    pub fn is_node_to_node(&self) -> bool {
        matches!(
            self,
            Request::Replicate { .. } | Request::Reassert { .. } | Request::SyncManifest { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Put { .. } => "put",
            Request::Get { .. } => "get",
            Request::Delete { .. } => "delete",
            Request::Stat { .. } => "stat",
            Request::GetShardMap => "get_shard_map",
            Request::Stats => "stats",
            Request::AuthChallenge => "auth_challenge",
            Request::AuthProof { .. } => "auth_proof",
            Request::Replicate { .. } => "replicate",
            Request::SyncManifest { .. } => "sync_manifest",
            Request::Reassert { .. } => "reassert",
            Request::ListKeys { .. } => "list_keys",
            Request::Update { .. } => "update",
            Request::List { .. } => "list",
        }
    }

    /// A read: answered by any serving replica of the key's chain.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Request::Get { .. } | Request::Stat { .. } | Request::List { .. }
        )
    }
}

/// The answer to a request. `code` is a stable number (see `Status`); a Get's value, the
/// shard map and the stats text are the frame's payload.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Response {
    pub code: u16,
    /// WrongShard: the server's epoch. VersionMismatch: the current version. SyncManifest:
    /// 1 if more pages follow.
    pub arg: u64,
    /// BadRequest: why.
    pub reason: String,
    pub version: u64,
    /// Length of the whole object (Get and Stat).
    pub object_len: u64,
    pub crc32c: u32,
    /// Get and Stat: when the object expires, Unix milliseconds; 0: never.
    pub expires_ms: u64,
}

/// Outcomes with stable wire codes. Codes never change meaning; new ones are appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotFound,
    WrongShard {
        epoch: u64,
    },
    VersionMismatch {
        current: u64,
    },
    TooLarge,
    NoSpace,
    Busy,
    Corrupt,
    BadRequest {
        reason: String,
    },
    Internal,
    Unauthorized,
    /// A write was handed down its chain and no answer came back in time: it may or may
    /// not have been applied (it never is twice). Read the key to find out.
    OutcomeUnknown,
}

impl Status {
    pub fn code(&self) -> u16 {
        match self {
            Status::Ok => 0,
            Status::NotFound => 1,
            Status::WrongShard { .. } => 2,
            Status::VersionMismatch { .. } => 3,
            Status::TooLarge => 4,
            Status::NoSpace => 5,
            Status::Busy => 6,
            Status::Corrupt => 7,
            Status::BadRequest { .. } => 8,
            Status::Internal => 9,
            Status::Unauthorized => 10,
            Status::OutcomeUnknown => 11,
        }
    }

    /// The status a response carries; an unknown code reads as Internal.
    pub fn from_wire(code: u16, arg: u64, reason: &str) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::WrongShard { epoch: arg },
            3 => Status::VersionMismatch { current: arg },
            4 => Status::TooLarge,
            5 => Status::NoSpace,
            6 => Status::Busy,
            7 => Status::Corrupt,
            8 => Status::BadRequest {
                reason: reason.to_string(),
            },
            10 => Status::Unauthorized,
            11 => Status::OutcomeUnknown,
            _ => Status::Internal,
        }
    }
}

impl Response {
    pub fn new(status: Status) -> Response {
        let (arg, reason) = match &status {
            Status::WrongShard { epoch } => (*epoch, String::new()),
            Status::VersionMismatch { current } => (*current, String::new()),
            Status::BadRequest { reason } => (0, reason.clone()),
            _ => (0, String::new()),
        };
        Response {
            code: status.code(),
            arg,
            reason,
            version: 0,
            object_len: 0,
            crc32c: 0,
            expires_ms: 0,
        }
    }

    pub fn status(&self) -> Status {
        Status::from_wire(self.code, self.arg, &self.reason)
    }
}

impl ArchivedResponse {
    pub fn status(&self) -> Status {
        Status::from_wire(self.code.to_native(), self.arg.to_native(), self.reason.as_str())
    }
}

/// Bits of `list_hash`: it shares a RESP SCAN cursor (64 bits) with a partition number
/// (at most 16 bits) and a flag.
pub const LIST_HASH_BITS: u32 = 47;

/// A key's place in the pages of its partition's listing (`Request::ListKeys`): the top
/// `LIST_HASH_BITS` bits of its XXH3, never 0 (0 means "from the start"). A key keeps its
/// place whatever is written, so a key present for a whole listing is listed at least once.
pub fn list_hash(key: &[u8]) -> u64 {
    (xxhash_rust::xxh3::xxh3_64(key) >> (64 - LIST_HASH_BITS)).max(1)
}
