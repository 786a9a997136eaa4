//! Verify mode's ledger: for every key, which writes were sent and acknowledged, so that a
//! GET can be checked against exactly the values it may legally return.
//!
//! Writes to one key are never in flight together (the generator picks another key), so a
//! key's writes are numbered in the order the server applies them. Write 0 is "absent".
//! A GET sent when write `lo` was the latest acknowledged may return any write from `lo` to
//! the latest sent when it completes; it may return "absent" only if the latest delete (or
//! the initial absence) is at or after `lo`.

#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    acked: u32,
    issued: u32,
    last_delete: u32,
    writing: bool,
}

pub struct KeyBook {
    keys: Vec<KeyState>,
    pub checked: u64,
    pub failures: u64,
    pub first_failures: Vec<String>,
}

/// What a GET saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Absent,
    /// A value traced to (key, write) by its tag.
    Write(u64, u32),
    /// A value whose bytes match no write at all.
    Garbage,
}

impl KeyBook {
    /// `preloaded`: every key holds write 1 already.
    pub fn new(keys: u64, preloaded: bool) -> KeyBook {
        let w = preloaded as u32;
        KeyBook {
            keys: vec![
                KeyState {
                    acked: w,
                    issued: w,
                    last_delete: 0,
                    writing: false,
                };
                keys as usize
            ],
            checked: 0,
            failures: 0,
            first_failures: Vec::new(),
        }
    }

    /// Starts a write to `key` and returns its number, or None if one is in flight.
    pub fn begin_write(&mut self, key: u64, delete: bool) -> Option<u32> {
        let s = &mut self.keys[key as usize];
        if s.writing {
            return None;
        }
        s.writing = true;
        s.issued += 1;
        if delete {
            s.last_delete = s.issued;
        }
        Some(s.issued)
    }

    /// The write finished: acknowledged, or failed (a failed write is not applied).
    pub fn end_write(&mut self, key: u64, write: u32, acked: bool) {
        let s = &mut self.keys[key as usize];
        s.writing = false;
        if acked {
            s.acked = s.acked.max(write);
        }
    }

    /// A GET is being sent: the lowest write it may return.
    pub fn begin_read(&self, key: u64) -> u32 {
        self.keys[key as usize].acked
    }

    /// Checks what a GET of `key`, sent at `lo`, returned.
    pub fn check_read(&mut self, key: u64, lo: u32, seen: Seen) {
        let s = self.keys[key as usize];
        self.checked += 1;
        let ok = match seen {
            Seen::Absent => s.last_delete >= lo,
            Seen::Write(k, w) => k == key && w >= lo && w <= s.issued && w != 0,
            Seen::Garbage => false,
        };
        if !ok {
            self.failures += 1;
            if self.first_failures.len() < 5 {
                self.first_failures.push(format!(
                    "key {key}: GET returned {seen:?}; allowed writes {lo}..={} (latest delete {})",
                    s.issued, s.last_delete
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_may_see_the_acked_value_or_a_later_write_only() {
        let mut b = KeyBook::new(2, true);
        let lo = b.begin_read(0);
        b.check_read(0, lo, Seen::Write(0, 1));
        let w = b.begin_write(0, false).unwrap();
        assert_eq!(w, 2);
        assert_eq!(b.begin_write(0, false), None, "one write per key in flight");
        let lo2 = b.begin_read(0);
        b.check_read(0, lo2, Seen::Write(0, 2)); // in flight: may already be applied
        b.end_write(0, w, true);
        let lo3 = b.begin_read(0);
        b.check_read(0, lo3, Seen::Write(0, 2));
        assert_eq!(b.failures, 0);
        b.check_read(0, lo3, Seen::Write(0, 1)); // stale after the ack
        b.check_read(0, lo3, Seen::Write(1, 2)); // another key's value
        b.check_read(0, lo3, Seen::Absent); // lost write
        b.check_read(0, lo3, Seen::Garbage);
        b.check_read(0, lo3, Seen::Write(0, 3)); // never written
        assert_eq!(b.failures, 5);
        assert_eq!(b.first_failures.len(), 5);
    }

    #[test]
    fn deletes_and_failed_writes() {
        let mut b = KeyBook::new(1, false);
        b.check_read(0, b.begin_read(0), Seen::Absent);
        let w = b.begin_write(0, false).unwrap();
        b.end_write(0, w, true);
        let d = b.begin_write(0, true).unwrap();
        let lo = b.begin_read(0);
        b.check_read(0, lo, Seen::Absent); // the delete is in flight
        b.check_read(0, lo, Seen::Write(0, 1));
        b.end_write(0, d, true);
        let lo = b.begin_read(0);
        b.check_read(0, lo, Seen::Absent);
        assert_eq!(b.failures, 0);
        b.check_read(0, lo, Seen::Write(0, 1)); // resurrected
        assert_eq!(b.failures, 1);
        let f = b.begin_write(0, false).unwrap();
        b.end_write(0, f, false);
        let lo = b.begin_read(0);
        b.check_read(0, lo, Seen::Absent);
        assert_eq!(b.failures, 1);
    }
}
