//! The history checker the cluster tests rely on must be able to fail: hand-made histories
//! with a stale read, a read of a value never written, an unknown write seen and then
//! unseen, a listing that misses an acknowledged write or shows one never made; and thousands of random small histories checked against a brute-force search
//! over every order that respects real time.

mod common;

use common::linearizability::{check, digest, Event, Op};
use hotshard_nvme::SplitMix64;

fn ev(op: Op, call: u64, ret: u64) -> Event {
    Event {
        op,
        call,
        ret: Some(ret),
    }
}

/// A listing is a read of every key it passes (issue 33): it sees a value by its digest.
#[test]
fn hand_made_listings() {
    use Op::*;
    assert!(check(
        &[ev(Put(1), 0, 1), ev(Listed(Some(digest(1))), 2, 3)],
        None
    ));
    // A listing that began after the write was acknowledged and does not show it.
    assert!(!check(&[ev(Put(1), 0, 1), ev(Listed(None), 2, 3)], None));
    // One that shows the older of two acknowledged values.
    assert!(!check(
        &[
            ev(Put(1), 0, 1),
            ev(Put(2), 2, 3),
            ev(Listed(Some(digest(1))), 4, 5)
        ],
        None
    ));
    // A digest of nothing written; a key listed after its delete was acknowledged.
    assert!(!check(
        &[ev(Put(1), 0, 1), ev(Listed(Some(digest(7))), 2, 3)],
        None
    ));
    assert!(!check(
        &[
            ev(Put(1), 0, 1),
            ev(Delete, 2, 3),
            ev(Listed(Some(digest(1))), 4, 5)
        ],
        None
    ));
    // Overlapping the write, either answer.
    assert!(check(&[ev(Put(1), 0, 4), ev(Listed(None), 1, 2)], None));
    assert!(check(
        &[ev(Put(1), 0, 4), ev(Listed(Some(digest(1))), 1, 2)],
        None
    ));
}

#[test]
fn hand_made_histories() {
    use Op::*;
    // Sequential, consistent.
    assert!(check(
        &[
            ev(Put(1), 0, 1),
            ev(Get(Some(1)), 2, 3),
            ev(Delete, 4, 5),
            ev(Get(None), 6, 7)
        ],
        None
    ));
    // A read after a later write was acknowledged returns the older value: stale.
    assert!(!check(
        &[ev(Put(1), 0, 1), ev(Put(2), 2, 3), ev(Get(Some(1)), 4, 5)],
        None
    ));
    // The same read overlapping the second write: fine.
    assert!(check(
        &[ev(Put(1), 0, 1), ev(Put(2), 2, 6), ev(Get(Some(1)), 4, 5)],
        None
    ));
    // A value nobody wrote.
    assert!(!check(&[ev(Put(1), 0, 1), ev(Get(Some(9)), 2, 3)], None));
    // A write in flight seen by one read, then unseen by a later one.
    assert!(!check(
        &[ev(Put(1), 0, 10), ev(Get(Some(1)), 2, 3), ev(Get(None), 4, 5)],
        None
    ));
    assert!(check(
        &[ev(Put(1), 0, 10), ev(Get(None), 2, 3), ev(Get(Some(1)), 4, 5)],
        None
    ));
    // A write whose outcome is unknown may have happened, or not, but not both.
    let unknown = Event {
        op: Put(1),
        call: 0,
        ret: None,
    };
    assert!(check(&[unknown, ev(Get(None), 1, 2)], None));
    assert!(check(&[unknown, ev(Get(Some(1)), 5, 6)], None));
    assert!(!check(
        &[unknown, ev(Get(Some(1)), 5, 6), ev(Get(None), 7, 8)],
        None
    ));
    // Acknowledged at the head before the tail had it: the client's next read at the tail
    // misses an acknowledged write.
    assert!(!check(
        &[ev(Put(1), 0, 1), ev(Put(2), 2, 3), ev(Get(Some(1)), 4, 5)],
        Some(0)
    ));
    assert!(check(&[], None));
}

/// Whether some order of `h` that respects real time (a before b when a returned before b
/// was called) explains every result: every permutation tried.
fn brute_force(h: &[Event], initial: Option<u64>) -> bool {
    fn go(h: &[Event], used: &mut Vec<bool>, state: Option<u64>) -> bool {
        if used.iter().all(|&u| u) {
            return true;
        }
        for i in 0..h.len() {
            if used[i] {
                continue;
            }
            // i may go next only if no unused op returned before i was called.
            let blocked = (0..h.len()).any(|j| !used[j] && j != i && h[j].ret.is_some_and(|r| r < h[i].call));
            if blocked {
                continue;
            }
            // The register's rules written out again, not `step`: the oracle shares no
            // code with the checker it judges.
            let next = match h[i].op {
                Op::Put(v) => Some(Some(v)),
                Op::Delete => Some(None),
                Op::Get(seen) => (seen == state).then_some(state),
                Op::Listed(seen) => (seen == state.map(digest)).then_some(state),
            };
            if let Some(s) = next {
                used[i] = true;
                if go(h, used, s) {
                    used[i] = false;
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    go(h, &mut vec![false; h.len()], initial)
}

#[test]
fn random_histories_agree_with_a_brute_force_search() {
    let mut rng = SplitMix64::new(0x11ea_71ab);
    let (mut yes, mut no) = (0, 0);
    for _ in 0..20_000 {
        let n = 1 + rng.below(6) as usize;
        let h: Vec<Event> = (0..n)
            .map(|i| {
                let call = rng.below(12);
                let ret = (!rng.chance(1, 8)).then(|| call + 1 + rng.below(6));
                let seen = match rng.below(n as u64 + 1) {
                    0 => None,
                    v => Some(v),
                };
                let op = match rng.below(6) {
                    0 | 1 => Op::Put(i as u64 + 1),
                    2 => Op::Delete,
                    3 | 4 => Op::Get(seen),
                    _ => Op::Listed(seen.map(digest)),
                };
                // Reads always answer (a failed read is left out of a history).
                let ret = if matches!(op, Op::Get(_) | Op::Listed(_)) {
                    Some(ret.unwrap_or(call + 1))
                } else {
                    ret
                };
                Event { op, call, ret }
            })
            .collect();
        let expected = brute_force(&h, None);
        assert_eq!(check(&h, None), expected, "{h:?}");
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
    }
    // Both answers were exercised, many times.
    assert!(yes > 2_000 && no > 2_000, "linearizable {yes}, not {no}");
}
