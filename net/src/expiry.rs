//! How a request names an object's expiry: Unix milliseconds, or (with `EXPIRES_IN`)
//! milliseconds from when the chain's head takes the request. Relative expiries are
//! converted by the head's clock alone, so that a node proxying a request (the RESP front
//! on another node) never puts its own clock into a chain: one clock decides a chain's
//! expiries, the head's.

/// The bit that marks an expiry field (Put's `expires_ms`, Update's Set `expires_ms` and
/// Expire `at_ms`) relative. Unix milliseconds fit in 48 bits, so no absolute expiry has
/// it; a node that does not know it refuses the field as beyond the largest expiry.
pub const EXPIRES_IN: u64 = 1 << 63;

/// The field for an object that expires `ms` milliseconds after the head takes it.
pub fn expires_in(ms: u64) -> u64 {
    EXPIRES_IN | ms.min(EXPIRES_IN - 1)
}

/// The absolute expiry (Unix ms; 0: never) a field names, relative ones taken at `now_ms`.
pub fn expiry_at(field: u64, now_ms: u64) -> u64 {
    if field & EXPIRES_IN != 0 {
        now_ms.saturating_add(field & !EXPIRES_IN).max(1)
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_expiries_are_taken_at_the_given_time_and_absolute_ones_kept() {
        assert_eq!(
            expiry_at(expires_in(10_000), 1_800_000_000_000),
            1_800_000_010_000
        );
        assert_eq!(expiry_at(1_800_000_000_000, 5), 1_800_000_000_000);
        assert_eq!(expiry_at(0, 5), 0);
        // Relative zero is "now", never "no expiry".
        assert_eq!(expiry_at(expires_in(0), 0), 1);
        // The largest relative expiry stays past any a record holds (the store refuses it).
        assert_eq!(expiry_at(expires_in(u64::MAX), 7), 7 + (EXPIRES_IN - 1));
    }
}
