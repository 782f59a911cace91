//! Fuzz `Session::open`: an attacker replays, mutates and invents frames on a link.
//!
//! Invariants: no panic; every delivered message is one that was sealed, delivered once; the
//! session's counters add up.

#![no_main]

#[path = "common.rs"]
mod common;

use _core::SessionLimits;
use common::{frame_of, pair, Genuine, Ledger, Op};
use libfuzzer_sys::fuzz_target;

/// Logical ids and payload lengths of the pool: every frame form (single, pair, FD).
const SHAPES: [(u32, usize, bool); 8] = [
    (0x0502 << 18 | 0x05, 8, false),
    (0x0502 << 18 | 0x05, 3, false),
    (0x0514 << 18 | 0x05, 4, false),
    (0x0503 << 18 | 0x05, 0, false),
    (0x0502 << 18 | 0x05, 8, false),
    (0x0504 << 18 | 0x06, 20, true),
    (0x0504 << 18 | 0x06, 51, true),
    (0x0514 << 18 | 0x05, 1, false),
];

fuzz_target!(|ops: Vec<Op>| {
    let (mut tx, mut rx) = pair(SessionLimits::default());
    let pool: Vec<Genuine> = SHAPES
        .iter()
        .enumerate()
        .map(|(n, &(logical_id, len, fd))| {
            let plain: Vec<u8> = (0..len).map(|i| (i + n) as u8).collect();
            Genuine::seal(&mut tx, logical_id, plain, fd)
        })
        .collect();
    let mut ledger = Ledger::new(&pool);
    let mut delivered = 0u64;
    for op in ops.iter().take(256) {
        let Some((id, data)) = frame_of(op, &pool) else {
            continue;
        };
        if let Ok(Some(frame)) = rx.open(id, &data) {
            ledger.deliver(&pool, frame.id, frame.payload());
            delivered += 1;
        }
    }
    let stats = rx.stats();
    assert_eq!(stats.opened, delivered);
    assert!(stats.failures <= SessionLimits::default().max_failures);
});
