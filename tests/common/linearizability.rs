//! A linearizability checker for one key's register history: the Wing & Gong search with
//! Lowe's memoisation (the algorithm of Porcupine and Knossos' WGL). Clients record each
//! operation's invocation and response times and what it returned; `check` says whether
//! some order of the operations, each taking effect at one instant between its invocation
//! and its response, explains every result.
//!
//! A write whose outcome is unknown (a timeout, a lost connection) may have taken effect at
//! any instant after its invocation, or never: it gets a response at the end of time, so
//! the search may place it anywhere later, including after everything else (where it
//! changes nothing observed). Failed operations (refused before anything was written)
//! and failed reads are left out by the caller.

use std::collections::HashSet;

/// What an operation did to (or saw of) the key's value; values are unique per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put(u64),
    Delete,
    /// A read that returned this value (None: not found).
    Get(Option<u64>),
    /// A listing (issue 33) that showed the key with a value of this digest (`digest`),
    /// or did not show it (None): a read that sees the value's CRC32C, not the value.
    Listed(Option<u32>),
}

/// The digest a listing shows of a value (the CRC32C of its bytes, as the workload writes
/// the value: its decimal text).
pub fn digest(value: u64) -> u32 {
    crc32c::crc32c(value.to_string().as_bytes())
}

/// One operation as a client saw it: invoked at `call`, answered at `ret` (None: outcome
/// unknown). Times are from one clock (any unit), `call < ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub op: Op,
    pub call: u64,
    pub ret: Option<u64>,
}

/// Applies `op` to a register holding `state`; None if `op`'s result contradicts it.
fn step(state: Option<u64>, op: Op) -> Option<Option<u64>> {
    match op {
        Op::Put(v) => Some(Some(v)),
        Op::Delete => Some(None),
        Op::Get(seen) => (seen == state).then_some(state),
        Op::Listed(seen) => (seen == state.map(digest)).then_some(state),
    }
}

/// Entries of the search's list: each operation's call and return, by time (a return at
/// the same time as a call comes after it: the two operations overlap).
#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    time: u64,
}

/// Whether `history` (one key, starting from `initial`) is linearizable.
pub fn check(history: &[Event], initial: Option<u64>) -> bool {
    let n = history.len();
    let mut entries: Vec<Entry> = Vec::with_capacity(2 * n);
    for (i, e) in history.iter().enumerate() {
        entries.push(Entry {
            op: i,
            is_call: true,
            time: e.call,
        });
        entries.push(Entry {
            op: i,
            is_call: false,
            time: e.ret.unwrap_or(u64::MAX),
        });
    }
    // Calls before returns at equal times: operations that touch in time overlap.
    entries.sort_by_key(|e| (e.time, !e.is_call));
    // A doubly linked list over `entries` (index len = the head sentinel).
    let head = entries.len();
    let mut next: Vec<usize> = (1..=entries.len()).chain([0]).collect();
    let mut prev: Vec<usize> = std::iter::once(head).chain(0..entries.len()).collect();
    next[head] = if entries.is_empty() { usize::MAX } else { 0 };
    if let Some(last) = entries.len().checked_sub(1) {
        next[last] = usize::MAX;
    }
    // Where each operation's return entry sits.
    let mut ret_at = vec![0; n];
    for (i, e) in entries.iter().enumerate() {
        if !e.is_call {
            ret_at[e.op] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != usize::MAX {
            prev[nx] = i;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // (call entry lifted, state before it)
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state = initial;
    let mut cur = next[head];
    while next[head] != usize::MAX {
        if cur == usize::MAX {
            // Ran off the end without linearizing what remains: cannot happen while a
            // return entry is in the list (it is met first); treat as failure to be safe.
            return false;
        }
        let e = entries[cur];
        if e.is_call {
            let op = history[e.op].op;
            if let Some(after) = step(state, op) {
                let mut bits = linearized.clone();
                bits[e.op / 64] |= 1 << (e.op % 64);
                if seen.insert((bits.clone(), after)) {
                    stack.push((cur, state));
                    state = after;
                    linearized = bits;
                    unlink(&mut next, &mut prev, cur);
                    unlink(&mut next, &mut prev, ret_at[e.op]);
                    cur = next[head];
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // An operation returned before any order could place it: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return false;
            };
            let op = entries[call].op;
            relink(&mut next, &mut prev, ret_at[op]);
            relink(&mut next, &mut prev, call);
            linearized[op / 64] &= !(1 << (op % 64));
            state = before;
            cur = next[call];
        }
    }
    true
}
