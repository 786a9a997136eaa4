//! Completion slots: what each in-flight operation keeps alive, and who to wake.

use std::task::Waker;

use crate::dma_buffer::DmaBuffer;

/// Memory an in-flight operation points the kernel at; freed only after its completion.
pub(crate) enum Keep {
    Nothing,
    One(DmaBuffer),
    /// The iovec array is only read by the kernel, but must live until the completion.
    Many(Vec<DmaBuffer>, #[allow(dead_code)] Box<[libc::iovec]>),
}

enum Slot {
    Free,
    Waiting {
        waker: Option<Waker>,
        keep: Keep,
    },
    Done {
        result: i32,
        keep: Keep,
    },
    /// The future was dropped; the kernel may still be using `keep`.
    Abandoned {
        _keep: Keep,
    },
}

/// A fixed table of completion slots: its size bounds the operations in flight.
pub(crate) struct Slots {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl Slots {
    pub(crate) fn new(capacity: usize) -> Self {
        Slots {
            slots: (0..capacity).map(|_| Slot::Free).collect(),
            free: (0..capacity as u32).rev().collect(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn insert(&mut self, keep: Keep) -> Option<u32> {
        let id = self.free.pop()?;
        self.slots[id as usize] = Slot::Waiting { waker: None, keep };
        Some(id)
    }

    /// Undo an `insert` whose entry never reached the ring.
    pub(crate) fn cancel(&mut self, id: u32) -> Keep {
        let slot = std::mem::replace(&mut self.slots[id as usize], Slot::Free);
        self.free.push(id);
        match slot {
            Slot::Waiting { keep, .. } => keep,
            _ => Keep::Nothing,
        }
    }

    /// Records a completion from the ring. Unknown ids (never ours) are ignored.
    pub(crate) fn complete(&mut self, id: u64, result: i32) {
        let Some(slot) = self.slots.get_mut(id as usize) else {
            return;
        };
        match std::mem::replace(slot, Slot::Free) {
            Slot::Waiting { waker, keep } => {
                *slot = Slot::Done { result, keep };
                if let Some(w) = waker {
                    w.wake();
                }
            }
            Slot::Abandoned { .. } => self.free.push(id as u32),
            other => *slot = other,
        }
    }

    /// The result if done (freeing the slot), else remembers the waker.
    pub(crate) fn take_or_wait(&mut self, id: u32, waker: &Waker) -> Option<(i32, Keep)> {
        let slot = &mut self.slots[id as usize];
        match slot {
            Slot::Done { .. } => {
                let Slot::Done { result, keep } = std::mem::replace(slot, Slot::Free) else {
                    unreachable!()
                };
                self.free.push(id);
                Some((result, keep))
            }
            Slot::Waiting { waker: w, .. } => {
                if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *w = Some(waker.clone());
                }
                None
            }
            _ => None,
        }
    }

    /// The future went away before its completion.
    pub(crate) fn abandon(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        match std::mem::replace(slot, Slot::Free) {
            Slot::Waiting { keep, .. } => *slot = Slot::Abandoned { _keep: keep },
            Slot::Done { .. } => self.free.push(id),
            other => *slot = other,
        }
    }
}
