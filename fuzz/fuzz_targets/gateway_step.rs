//! Fuzz `Gateway::step`: an attacker on either bus replays, mutates and invents frames while
//! the pack bridges an app link (CAN 1) and a module link (CAN 2).
//!
//! Invariants: no panic; the gateway forwards only messages that were sealed by the link they
//! came in on, each once, to the other bus; what it forwards opens at the far end to the same
//! plaintext, including a pair whose data frame went ahead of its authenticator (cut-through);
//! a data frame forwarded ahead opens nothing on its own; a message for a link without a
//! session (`link_down`) sends nothing; its counters add up.

#![no_main]

#[path = "common.rs"]
mod common;

use _core::{Gateway, IdRewrite, LinkKey, Rule, Session, SessionLimits};
use common::{frame_of, half, Genuine, Ledger, Op};
use libfuzzer_sys::fuzz_target;

const CAN1: u8 = 0;
const CAN2: u8 = 1;
const APP: &str = "COMP-fuzz-app";
const PACK: &str = "COMP-fuzz-pack";
const MODULE: &str = "COMP-fuzz-module-5";

fn rule(src_bus: u8, match_id: u32, mask: u32, dst_bus: u8, inbound: u8, outbound: u8) -> Rule {
    Rule {
        src_bus,
        match_id,
        mask,
        dst_bus,
        rewrite: IdRewrite::default(),
        inbound: Some(inbound),
        outbound: Some(outbound),
        fd: false,
    }
}

struct Ends {
    gateway: Gateway,
    app: Session,
    module: Session,
}

fn pack() -> Ends {
    let limits = SessionLimits::default();
    let app_link = LinkKey::derive(&half(1), APP, &half(2), PACK, None).expect("valid ids");
    let module_link = LinkKey::derive(&half(3), PACK, &half(4), MODULE, None).expect("valid ids");
    let (n_app, n_pack_app, n_pack_mod, n_mod) = ([1u8; 16], [2u8; 16], [3u8; 16], [4u8; 16]);
    let mut gateway = Gateway::new();
    let session = |link, local, peer, ln: &[u8; 16], pn: &[u8; 16]| {
        Session::new(link, local, peer, ln, pn, limits).expect("valid session")
    };
    gateway.install_session(0, session(&app_link, PACK, APP, &n_pack_app, &n_app));
    gateway.install_session(1, session(&module_link, PACK, MODULE, &n_pack_mod, &n_mod));
    // commands from the app to module 5, telemetry from module 5 to the app
    gateway
        .add_rule(rule(CAN1, 0x514 << 18, 0x7FF << 18, CAN2, 0, 1))
        .expect("valid rule");
    gateway
        .add_rule(rule(CAN2, 0x500 << 18, 0x7F0 << 18, CAN1, 1, 0))
        .expect("valid rule");
    Ends {
        gateway,
        app: session(&app_link, APP, PACK, &n_app, &n_pack_app),
        module: session(&module_link, MODULE, PACK, &n_mod, &n_pack_mod),
    }
}

fuzz_target!(|ops: Vec<(u8, Op)>| {
    let mut ends = pack();
    // The pool: app commands (came in on CAN 1) then module telemetry (CAN 2).
    let mut pool: Vec<Genuine> = Vec::new();
    let mut origin: Vec<u8> = Vec::new();
    for (n, len) in [4usize, 8, 2, 0].into_iter().enumerate() {
        let plain: Vec<u8> = (0..len).map(|i| (i + n) as u8).collect();
        pool.push(Genuine::seal(
            &mut ends.app,
            0x514 << 18 | 0x05,
            plain,
            false,
        ));
        origin.push(CAN1);
    }
    for (n, len) in [8usize, 3, 6, 8].into_iter().enumerate() {
        let plain: Vec<u8> = (0..len).map(|i| (i * 3 + n) as u8).collect();
        let logical_id = (0x502 + n as u32) << 18 | 0x05;
        pool.push(Genuine::seal(&mut ends.module, logical_id, plain, false));
        origin.push(CAN2);
    }
    let mut ledger = Ledger::new(&pool);
    for (bus_hint, op) in ops.iter().take(256) {
        let Some((id, data)) = frame_of(op, &pool) else {
            continue;
        };
        let bus = match op {
            Op::Raw { .. } => bus_hint % 3,
            Op::Genuine { message, .. }
            | Op::FlipByte { message, .. }
            | Op::FlipIdBit { message, .. }
            | Op::Truncate { message, .. }
            | Op::Extend { message, .. } => {
                let from = origin[usize::from(*message) % pool.len()];
                if bus_hint % 8 == 7 {
                    1 - from
                } else {
                    from
                }
            }
        };
        let Ok(Some(forward)) = ends.gateway.step(bus, id, &data) else {
            continue;
        };
        assert_eq!(
            forward.bus,
            1 - bus,
            "a message must cross to the other bus"
        );
        let far = if forward.bus == CAN2 {
            &mut ends.module
        } else {
            &mut ends.app
        };
        let Some(plain) = forward.plain else {
            // A data frame ahead of its authenticator: the far end holds it, opens nothing.
            let frame = forward.frames.frames()[0];
            assert_eq!(far.open(frame.id, frame.payload()), Ok(None));
            continue;
        };
        ledger.deliver(&pool, plain.id, plain.payload());
        if forward.link_down {
            // Opened, but the destination link has no session (here: torn down after too
            // many bad tags), so nothing goes out.
            assert!(
                forward.frames.frames().is_empty(),
                "link_down sends nothing"
            );
            continue;
        }
        // The far end opens the resealed frames (with the data frame it already holds, when
        // only the authenticator came now) to the same message.
        let mut opened = None;
        for frame in forward.frames.frames() {
            opened = far
                .open(frame.id, frame.payload())
                .expect("the far end opens a forward");
        }
        let opened = opened.expect("the last frame completes the message");
        assert_eq!((opened.id, opened.payload()), (plain.id, plain.payload()));
    }
    let stats = ends.gateway.stats();
    let dropped: u64 = stats.dropped.iter().sum();
    assert_eq!(
        stats.received,
        stats.forwarded + stats.pending + stats.link_down + dropped
    );
});
