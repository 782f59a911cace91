//! Fuzz `Session::open_message`: the sealed control messages (up to 4 KiB).
//!
//! Invariants: no panic; every delivered message was sealed on that stream, delivered once.

#![no_main]

#[path = "common.rs"]
mod common;

use _core::SessionLimits;
use common::{pair, Genuine, Ledger, Op};
use libfuzzer_sys::fuzz_target;

const STREAMS: [u32; 2] = [0x0600 << 18 | 0x01, 0x0601 << 18 | 0x01];
const LENGTHS: [usize; 5] = [0, 1, 17, 300, 4096];

fuzz_target!(|ops: Vec<Op>| {
    let (mut tx, mut rx) = pair(SessionLimits::default());
    let pool: Vec<Genuine> = LENGTHS
        .iter()
        .enumerate()
        .map(|(n, &len)| {
            let stream = STREAMS[n % STREAMS.len()];
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + n) as u8).collect();
            let sealed = tx.seal_message(stream, &plain).expect("pool seals");
            Genuine {
                logical_id: stream,
                plain,
                frames: Vec::new(),
                blob: sealed,
            }
        })
        .collect();
    let mut ledger = Ledger::new(&pool);
    for op in ops.iter().take(64) {
        let (stream, data) = match op {
            Op::Raw { id, data } => (*id, data.clone()),
            Op::Genuine { message, .. } => {
                let m = &pool[usize::from(*message) % pool.len()];
                (m.logical_id, m.blob.clone())
            }
            Op::FlipByte {
                message, at, xor, ..
            } => {
                let m = &pool[usize::from(*message) % pool.len()];
                let mut data = m.blob.clone();
                let i = usize::from(*at) * 17 % data.len();
                data[i] ^= *xor;
                (m.logical_id, data)
            }
            Op::FlipIdBit { message, bit, .. } => {
                let m = &pool[usize::from(*message) % pool.len()];
                (m.logical_id ^ (1 << (bit % 29)), m.blob.clone())
            }
            Op::Truncate { message, len, .. } => {
                let m = &pool[usize::from(*message) % pool.len()];
                let data = &m.blob;
                (
                    m.logical_id,
                    data[..(usize::from(*len) * 17).min(data.len())].to_vec(),
                )
            }
            Op::Extend { message, tail, .. } => {
                let m = &pool[usize::from(*message) % pool.len()];
                let mut data = m.blob.clone();
                data.extend_from_slice(tail);
                (m.logical_id, data)
            }
        };
        if let Ok(plain) = rx.open_message(stream, &data) {
            ledger.deliver(&pool, stream, &plain);
        }
    }
});
