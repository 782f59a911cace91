//! Per-call cost of the pure Rust frame path, without Python: a profiling aid for
//! `perf record` (`cargo run --release --example frame_path_profile`). The benchmark that
//! counts is `modbatt bench frame-path`, which includes the Python call overhead.

use std::hint::black_box;
use std::time::Instant;

use _core::{LinkKey, Session, SessionLimits};

fn main() {
    let half_a: Vec<u8> = (1..=64).collect();
    let half_b: Vec<u8> = (65..=128).collect();
    let link = LinkKey::derive(&half_a, "COMP-a", &half_b, "COMP-b", None).expect("link key");
    let (nonce_a, nonce_b) = ([7u8; 16], [9u8; 16]);
    let limits = SessionLimits::default();
    let n = 2_000_000u32;
    for len in [3usize, 8] {
        let mut a = Session::new(&link, "COMP-a", "COMP-b", &nonce_a, &nonce_b, limits).expect("a");
        let mut b = Session::new(&link, "COMP-b", "COMP-a", &nonce_b, &nonce_a, limits).expect("b");
        let payload = vec![0x5Au8; len];
        let start = Instant::now();
        for _ in 0..n {
            black_box(
                a.seal(black_box(0x1408_0005), black_box(&payload), false)
                    .expect("seal"),
            );
        }
        let seal_ns = start.elapsed().as_nanos() as f64 / f64::from(n);
        let mut total = 0.0;
        for _ in 0..n / 1000 {
            let batch: Vec<_> = (0..1000)
                .map(|_| a.seal(0x1408_0006, &payload, false).expect("seal"))
                .collect();
            let start = Instant::now();
            for sealed in &batch {
                for frame in sealed.frames() {
                    black_box(b.open(frame.id, frame.payload()).expect("open"));
                }
            }
            total += start.elapsed().as_nanos() as f64;
        }
        println!(
            "{len} B: seal {seal_ns:.0} ns, open {:.0} ns per message",
            total / f64::from(n)
        );
    }
}
