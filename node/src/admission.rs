//! A shard's budget for requests being answered: how many, and how many payload bytes
//! they hold. Over budget, a request is answered Busy before anything is allocated for it,
//! so that load beyond what the shard can hold costs it nothing but the answer.

use std::cell::Cell;

pub struct Admission {
    max_requests: usize,
    max_bytes: usize,
    requests: Cell<usize>,
    bytes: Cell<usize>,
}

impl Admission {
    pub fn new(max_requests: usize, max_bytes: usize) -> Admission {
        Admission {
            max_requests,
            max_bytes,
            requests: Cell::new(0),
            bytes: Cell::new(0),
        }
    }

    /// Takes room for one request with `payload` bytes, if there is room.
    pub fn try_admit(&self, payload: usize) -> bool {
        if self.requests.get() >= self.max_requests || self.bytes.get() + payload > self.max_bytes {
            return false;
        }
        self.requests.set(self.requests.get() + 1);
        self.bytes.set(self.bytes.get() + payload);
        true
    }

    /// Whether `try_admit(0)` would admit a request now (one answered at once, which
    /// holds nothing after its answer, need not take room).
    pub fn has_room(&self) -> bool {
        self.requests.get() < self.max_requests && self.bytes.get() <= self.max_bytes
    }

    /// Takes room for a record from a chain predecessor: up to twice the budget, so that
    /// the clients' writes a shard holds (each waiting on another node's replica) never
    /// leave that node's replicas without room, a cycle that would stall both.
    pub fn try_admit_replica(&self, payload: usize) -> bool {
        if self.requests.get() >= 2 * self.max_requests || self.bytes.get() + payload > 2 * self.max_bytes {
            return false;
        }
        self.requests.set(self.requests.get() + 1);
        self.bytes.set(self.bytes.get() + payload);
        true
    }

    /// Counts bytes an admitted request holds from now on (a reply's value), without a
    /// check: the request is already being answered. New requests see them.
    pub fn hold(&self, bytes: usize) {
        self.bytes.set(self.bytes.get() + bytes);
    }

    /// Gives back bytes counted by `hold` (the reply that held them is gone), the request
    /// itself having been released already.
    pub fn unhold(&self, bytes: usize) {
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
    }

    pub fn release(&self, payload: usize) {
        self.requests.set(self.requests.get().saturating_sub(1));
        self.bytes.set(self.bytes.get().saturating_sub(payload));
    }

    pub fn in_use(&self) -> (usize, usize) {
        (self.requests.get(), self.bytes.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_either_limit_and_gives_room_back() {
        let a = Admission::new(2, 100);
        assert!(a.try_admit(60));
        assert!(!a.try_admit(41), "bytes over budget");
        assert!(a.try_admit(40));
        assert!(!a.try_admit(0), "requests over budget");
        assert!(!a.has_room(), "no room, as try_admit says");
        a.release(60);
        assert_eq!(a.in_use(), (1, 40));
        assert!(a.try_admit(60));
        a.release(60);
        assert!(a.has_room());
        a.hold(80);
        assert_eq!(a.in_use(), (1, 120));
        assert!(!a.has_room(), "bytes over budget");
        assert!(!a.try_admit(0), "a large reply held counts against the budget");
        a.release(40 + 80);
        assert_eq!(a.in_use(), (0, 0));
        a.hold(30);
        a.unhold(30);
        assert_eq!(a.in_use(), (0, 0), "a reply's bytes given back without a request");
    }

    #[test]
    fn records_from_a_chain_find_room_past_the_clients_budget() {
        let a = Admission::new(2, 100);
        assert!(a.try_admit(50) && a.try_admit(50));
        assert!(!a.try_admit(0), "the clients' budget is full");
        assert!(a.try_admit_replica(100), "a replica record still gets in");
        assert!(a.try_admit_replica(0));
        assert!(!a.try_admit_replica(1), "up to twice the budget, no further");
    }
}
