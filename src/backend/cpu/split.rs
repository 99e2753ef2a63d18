//! Split-K across the shares of one `tq_attend_part` call, without a barrier.
//!
//! A decode call has few work items (query tile × kv head: 3 for one token over 3 kv heads) and many
//! cells; shared item by item over 2 threads, one thread does 2 items and the other 1. When the plan
//! (`attend::SplitPlan`) cuts every item's cells into chunks, each share computes the partial
//! softmax state of its (item, chunk) units and hands it to the context's table of calls in flight
//! ([`InFlight`]); the share that completes a call — the last to arrive, whichever it is — merges
//! every partial into the output. No share waits for another: the engine's threads may be in
//! different calls at once (llama.cpp's callback calls one stream after another, so thread 0 may be
//! in stream 1's call while thread 1 is still in stream 0's).
//!
//! A call is identified by (layer, out) and a signature of the rest of its arguments, q's contents
//! included ([`signature`]). A share that finds the slot of its (layer, out) holding another call, or
//! its own share already there, means that call never completed (a caller error: every share of a
//! call must be made before a later call on the same output): that call is dropped (its output
//! stays unwritten), this share starts its own call in the slot, and it reports the drop as
//! TQ_STATUS_INVALID_ARGUMENT once its partial is stored (its own call still completes normally).

use std::sync::{Mutex, PoisonError};

use super::attend::AttendJob;

/// Calls one context may have in flight; a new one beyond this drops the least recently touched
/// incomplete call (reported like any other dropped call).
pub const MAX_IN_FLIGHT: usize = 64;

/// One call in flight, or a free slot keeping its buffers for the next one.
#[derive(Debug, Default)]
struct Slot {
    /// (layer, output address); None = free.
    key: Option<(usize, usize)>,
    sig: u64,
    /// Which shares arrived (nth entries).
    arrived: Vec<bool>,
    count: usize,
    expected: usize,
    /// Every unit's partial, in unit order.
    buf: Vec<f32>,
    /// Table clock at the last arrival.
    touched: u64,
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Slot>,
    clock: u64,
}

/// The split-K calls in flight on one context.
#[derive(Debug, Default)]
pub struct InFlight {
    table: Mutex<Table>,
}

/// What one share's arrival produced.
pub struct Arrival {
    /// Some for the share that completed the call: the slot index and every unit's partial (give the
    /// buffer back with [`InFlight::give_back`] after merging).
    pub complete: Option<(usize, Vec<f32>)>,
    /// An earlier call that this arrival found incomplete and dropped.
    pub dropped: Option<String>,
}

/// One share's arrival at a call.
pub struct Share<'a> {
    pub key: (usize, usize),
    pub sig: u64,
    pub ith: usize,
    pub nth: usize,
    /// Shares that hold at least one unit (those that arrive).
    pub expected: usize,
    /// Values of all units' partials.
    pub total: usize,
    /// Where this share's partials go in the call's buffer, and the values.
    pub offset: usize,
    pub data: &'a [f32],
}

impl InFlight {
    /// Store a share's partials in its call's slot and count it.
    pub fn arrive(&self, share: &Share) -> Arrival {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.clock += 1;
        let clock = t.clock;
        let mut dropped = None;
        let idx = match t.slots.iter().position(|s| s.key == Some(share.key)) {
            Some(i) => {
                let s = &t.slots[i];
                if s.sig != share.sig || s.arrived.get(share.ith).copied().unwrap_or(true) {
                    dropped = Some(format!(
                        "split attention: an earlier tq_attend_part call on layer {} writing the same out never completed \
                         ({} of its {} shares arrived before this call's share {} of {}); its output was not written \
                         (all nth shares of a call must be made before a later call on the same output)",
                        share.key.0, s.count, s.expected, share.ith, share.nth
                    ));
                    t.slots[i].key = None;
                }
                i
            }
            None => match t.slots.iter().position(|s| s.key.is_none()) {
                Some(i) => i,
                None if t.slots.len() < MAX_IN_FLIGHT => {
                    t.slots.push(Slot::default());
                    t.slots.len() - 1
                }
                None => {
                    let (i, s) = t.slots.iter().enumerate().min_by_key(|(_, s)| s.touched).expect("a full table has slots");
                    dropped = Some(format!(
                        "split attention: {MAX_IN_FLIGHT} tq_attend_part calls were in flight on this context at once; \
                         the least recently touched (layer {}, {} of {} shares arrived) was dropped and its output not written",
                        s.key.map_or(0, |k| k.0),
                        s.count,
                        s.expected
                    ));
                    t.slots[i].key = None;
                    i
                }
            },
        };
        let s = &mut t.slots[idx];
        if s.key.is_none() {
            s.key = Some(share.key);
            s.sig = share.sig;
            s.arrived.clear();
            s.arrived.resize(share.nth, false);
            s.count = 0;
            s.expected = share.expected;
            if s.buf.len() < share.total {
                s.buf.resize(share.total, 0.0);
            }
        }
        s.buf[share.offset..share.offset + share.data.len()].copy_from_slice(share.data);
        s.arrived[share.ith] = true;
        s.count += 1;
        s.touched = clock;
        let complete = if s.count == s.expected {
            s.key = None;
            let mut buf = std::mem::take(&mut s.buf);
            buf.truncate(share.total);
            Some((idx, buf))
        } else {
            None
        };
        Arrival { complete, dropped }
    }

    /// Return a completed call's buffer for reuse (to its slot, or another free slot without one).
    pub fn give_back(&self, idx: usize, buf: Vec<f32>) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = |s: &Slot| s.key.is_none() && s.buf.capacity() == 0;
        let target = if t.slots.get(idx).is_some_and(fits) { Some(idx) } else { t.slots.iter().position(fits) };
        if let Some(i) = target {
            t.slots[i].buf = buf;
        }
    }

    /// Slots in use (tests).
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.table.lock().unwrap().slots.iter().filter(|s| s.key.is_some()).count()
    }
}

/// A 64-bit signature of everything a call's shares must agree on besides (layer, out): the other
/// arguments and the contents of q (so that a later call with the same pointers — the next decode
/// step — is told apart from an incomplete earlier one).
///
/// # Safety
/// The job's q covers n_q tokens of n_heads heads in host memory.
pub unsafe fn signature(job: &AttendJob, nth: usize) -> u64 {
    let mut h = Mix::new();
    let words = [
        job.q.ptr as u64,
        job.n_q as u64,
        job.q.strides.token as u64,
        job.q.strides.head as u64,
        job.k_store as u64,
        job.v_store as u64,
        job.n_cells as u64,
        match job.mask {
            super::attend::MaskSource::Tensor { ptr, row_stride, .. } => ptr as u64 ^ (row_stride as u64).rotate_left(32),
            _ => 0,
        },
        job.full.map_or(0, |f| f.k as u64 ^ (f.v as u64).rotate_left(17)),
        job.scale.to_bits() as u64 | (job.softcap.to_bits() as u64) << 32,
        job.sinks.map_or(0, |s| s.as_ptr() as u64),
        job.out_strides.token as u64,
        job.out_strides.head as u64,
        nth as u64,
    ];
    words.iter().for_each(|&w| h.word(w));
    let c = &job.codec.config;
    let row = c.head_dim * job.q.dtype.size();
    for t in 0..job.n_q {
        for head in 0..c.n_heads {
            // SAFETY: the caller guarantees q covers (t, head): `row` bytes from its offset.
            let bytes = unsafe { std::slice::from_raw_parts(job.q.ptr.add(job.q.strides.offset(t, head)), row) };
            let mut chunks = bytes.chunks_exact(8);
            for c in &mut chunks {
                h.word(u64::from_le_bytes(c.try_into().unwrap()));
            }
            for &b in chunks.remainder() {
                h.word(b as u64);
            }
        }
    }
    h.finish()
}

/// A small multiply–xorshift hash (not cryptographic: it tells calls apart, no adversary involved).
struct Mix(u64);

impl Mix {
    fn new() -> Self {
        Mix(0x9e37_79b9_7f4a_7c15)
    }
    #[inline(always)]
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        self.0 ^= self.0 >> 32;
    }
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(key: (usize, usize), sig: u64, ith: usize, nth: usize, data: &[f32]) -> Share<'_> {
        Share { key, sig, ith, nth, expected: nth, total: nth * data.len(), offset: ith * data.len(), data }
    }

    #[test]
    fn last_arrival_gets_every_partial_in_order() {
        let f = InFlight::default();
        let a = f.arrive(&share((1, 100), 7, 1, 2, &[3.0, 4.0]));
        assert!(a.complete.is_none() && a.dropped.is_none());
        let b = f.arrive(&share((1, 100), 7, 0, 2, &[1.0, 2.0]));
        let (idx, buf) = b.complete.expect("the second share completes the call");
        assert!(b.dropped.is_none());
        assert_eq!(buf, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(f.busy(), 0);
        f.give_back(idx, buf);
        // The buffer is reused by the next call.
        let c = f.arrive(&share((2, 100), 9, 0, 2, &[5.0, 6.0]));
        assert!(c.complete.is_none());
        assert_eq!(f.table.lock().unwrap().slots.len(), 1);
    }

    #[test]
    fn a_share_arriving_twice_drops_the_incomplete_call_and_says_so() {
        let f = InFlight::default();
        assert!(f.arrive(&share((0, 8), 1, 0, 2, &[1.0])).complete.is_none());
        // The same share again (same call): the first one is dropped, counting restarts.
        let again = f.arrive(&share((0, 8), 1, 0, 2, &[2.0]));
        assert!(again.complete.is_none());
        assert!(again.dropped.as_deref().is_some_and(|m| m.contains("never completed")), "{:?}", again.dropped);
        // A different call on the same output (another q): the half-done one is dropped as well.
        let other = f.arrive(&share((0, 8), 2, 1, 2, &[9.0]));
        assert!(other.dropped.is_some() && other.complete.is_none());
        let done = f.arrive(&share((0, 8), 2, 0, 2, &[8.0]));
        assert!(done.dropped.is_none());
        assert_eq!(done.complete.unwrap().1, [8.0, 9.0]);
    }

    #[test]
    fn a_full_table_drops_the_least_recently_touched_call() {
        let f = InFlight::default();
        for i in 0..MAX_IN_FLIGHT {
            assert!(f.arrive(&share((0, i), 1, 0, 2, &[0.0])).dropped.is_none());
        }
        let over = f.arrive(&share((0, 999), 1, 0, 2, &[0.0]));
        assert!(over.dropped.as_deref().is_some_and(|m| m.contains("in flight")));
        assert_eq!(f.busy(), MAX_IN_FLIGHT);
        // Call (0, 1) is intact.
        assert!(f.arrive(&share((0, 1), 1, 1, 2, &[0.0])).complete.is_some());
        // Call (0, 0) was the one dropped: its second share now starts a new call instead of completing.
        let late = f.arrive(&share((0, 0), 1, 1, 2, &[0.0]));
        assert!(late.complete.is_none() && late.dropped.is_none());
    }
}
