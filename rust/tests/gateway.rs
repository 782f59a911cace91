//! The gateway step: default deny, routing, the security transform, E rewrite, counters.

#![allow(clippy::cast_possible_truncation)] // test data: small values by construction

mod common;

use _core::{DropReason, Error, Gateway, IdRewrite, LinkKey, Rule, Session, SessionLimits};
use common::*;

const CAN1: u8 = 0;
const CAN2: u8 = 1;
const APP: &str = "COMP-app";
const PACK: &str = "COMP-pack";
const MODULE: &str = "COMP-module-5";
const STATUS_1: u32 = 0x502 << 18 | 0x05;
const STATE_CHANGE: u32 = 0x514 << 18 | 0x05;

struct Pack {
    gateway: Gateway,
    app: Session,
    module: Session,
}

fn rule(src_bus: u8, match_id: u32, mask: u32, dst_bus: u8) -> Rule {
    Rule {
        src_bus,
        match_id,
        mask,
        dst_bus,
        rewrite: IdRewrite::default(),
        inbound: None,
        outbound: None,
        fd: false,
    }
}

/// A pack with an app link (0) and a module link (1), and the app's and module's ends.
fn pack() -> Pack {
    let limits = SessionLimits::default();
    let app_link = LinkKey::derive(&half(1), APP, &half(2), PACK, None).unwrap();
    let module_link = LinkKey::derive(&half(3), PACK, &half(4), MODULE, None).unwrap();
    let (n_app, n_pack_app, n_pack_mod, n_mod) = ([1u8; 16], [2u8; 16], [3u8; 16], [4u8; 16]);
    let mut gateway = Gateway::new();
    gateway.install_session(
        0,
        Session::new(&app_link, PACK, APP, &n_pack_app, &n_app, limits).unwrap(),
    );
    gateway.install_session(
        1,
        Session::new(&module_link, PACK, MODULE, &n_pack_mod, &n_mod, limits).unwrap(),
    );
    gateway
        .add_rule(Rule {
            inbound: Some(0),
            outbound: Some(1),
            ..rule(CAN1, 0x514 << 18, 0x7FF << 18, CAN2)
        })
        .unwrap();
    gateway
        .add_rule(Rule {
            inbound: Some(1),
            outbound: Some(0),
            ..rule(CAN2, 0x500 << 18, 0x7F0 << 18, CAN1)
        })
        .unwrap();
    Pack {
        gateway,
        app: Session::new(&app_link, APP, PACK, &n_app, &n_pack_app, limits).unwrap(),
        module: Session::new(&module_link, MODULE, PACK, &n_mod, &n_pack_mod, limits).unwrap(),
    }
}

fn step_all(gateway: &mut Gateway, bus: u8, frames: &[_core::Frame]) -> Vec<(u8, _core::Frame)> {
    let mut out = Vec::new();
    for f in frames {
        if let Ok(Some(forward)) = gateway.step(bus, f.id, f.payload()) {
            out.extend(forward.frames.frames().iter().map(|g| (forward.bus, *g)));
        }
    }
    out
}

fn drops(gateway: &Gateway, reason: DropReason) -> u64 {
    gateway.stats().dropped[reason.index()]
}

#[test]
fn commands_and_telemetry_cross_with_a_reseal() {
    let mut p = pack();
    let command = p
        .app
        .seal(STATE_CHANGE, &[5, 3, 0xA0, 0x0F], false)
        .unwrap();
    let out = step_all(&mut p.gateway, CAN1, command.frames());
    assert!(out.iter().all(|(bus, _)| *bus == CAN2));
    // resealed: different bytes on CAN 2 than on CAN 1
    assert_ne!(out[0].1.payload(), command.frames()[0].payload());
    let frames: Vec<_> = out.iter().map(|(_, f)| *f).collect();
    assert_eq!(
        open_all(&mut p.module, &frames),
        Some(vec![5, 3, 0xA0, 0x0F])
    );

    let status = p
        .module
        .seal(STATUS_1, &[1, 2, 3, 4, 5, 6, 7, 8], false)
        .unwrap();
    let out = step_all(&mut p.gateway, CAN2, status.frames());
    let frames: Vec<_> = out.iter().map(|(_, f)| *f).collect();
    assert_eq!(
        open_all(&mut p.app, &frames),
        Some(vec![1, 2, 3, 4, 5, 6, 7, 8])
    );
    assert_eq!(p.gateway.stats().forwarded, 2);
    assert_eq!(p.gateway.stats().pending, 2);
}

#[test]
fn default_deny() {
    let mut p = pack();
    let other = p.app.seal(0x400 << 18, &[1], false).unwrap();
    let f = other.frames()[0];
    let err = p.gateway.step(CAN1, f.id, f.payload()).unwrap_err();
    assert_eq!(err.drop_reason(), DropReason::NoRoute);
    // the right id from the wrong bus is denied too
    let command = p.app.seal(STATE_CHANGE, &[1], false).unwrap();
    let f = command.frames()[0];
    assert!(p.gateway.step(CAN2, f.id, f.payload()).is_err());
    assert_eq!(drops(&p.gateway, DropReason::NoRoute), 2);
}

#[test]
fn downgrade_and_replay_are_dropped_and_counted() {
    let mut p = pack();
    assert!(p.gateway.step(CAN2, STATUS_1, &[0; 8]).is_err());
    assert_eq!(drops(&p.gateway, DropReason::Downgrade), 1);
    let status = p.module.seal(STATUS_1, &[1; 3], false).unwrap();
    assert_eq!(step_all(&mut p.gateway, CAN2, status.frames()).len(), 1);
    assert!(step_all(&mut p.gateway, CAN2, status.frames()).is_empty());
    assert_eq!(drops(&p.gateway, DropReason::Replay), 1);
}

#[test]
fn a_module_cannot_forge_the_app_links_traffic() {
    // The module holds only the pack <-> module keys: what it seals never passes as the app.
    let mut p = pack();
    let forged = p.module.seal(STATE_CHANGE, &[5, 3, 0, 0], false).unwrap();
    assert!(step_all(&mut p.gateway, CAN1, forged.frames()).is_empty());
    assert_eq!(drops(&p.gateway, DropReason::BadTag), 1);
}

#[test]
fn missing_or_torn_down_sessions_drop_as_no_session() {
    // the inbound link has no session: the frame cannot be opened, a real drop
    let mut p = pack();
    p.gateway.remove_session(0);
    let command = p.app.seal(STATE_CHANGE, &[1], false).unwrap();
    let f = command.frames()[0];
    assert_eq!(
        p.gateway
            .step(CAN1, f.id, f.payload())
            .unwrap_err()
            .drop_reason(),
        DropReason::NoSession
    );
    assert_eq!(drops(&p.gateway, DropReason::NoSession), 1);
}

#[test]
fn a_destination_link_without_a_session_is_link_down_not_a_drop() {
    let mut p = pack();
    p.gateway.set_tap(0x500 << 18, 0x7F0 << 18);
    let app_session = p.gateway.remove_session(0).unwrap(); // the app is not connected
    let status = p.module.seal(STATUS_1, &[7, 7, 7], false).unwrap();
    let f = status.frames()[0];
    let forward = p.gateway.step(CAN2, f.id, f.payload()).unwrap().unwrap();
    assert!(forward.link_down);
    assert!(forward.frames.frames().is_empty());
    assert_eq!(forward.plain.unwrap().payload(), &[7, 7, 7]);
    let stats = p.gateway.stats();
    assert_eq!(
        (stats.received, stats.forwarded, stats.link_down),
        (1, 0, 1)
    );
    assert_eq!(stats.dropped, [0; 7]);
    // the pack still reads its modules' verified reports
    let tapped = p.gateway.take_tapped();
    assert_eq!(tapped.len(), 1);
    assert_eq!(tapped[0].payload(), &[7, 7, 7]);
    // the other way: a command for a module whose session is gone
    p.gateway.install_session(0, app_session);
    p.gateway.remove_session(1);
    let command = p.app.seal(STATE_CHANGE, &[1], false).unwrap();
    let f = command.frames()[0];
    assert!(
        p.gateway
            .step(CAN1, f.id, f.payload())
            .unwrap()
            .unwrap()
            .link_down
    );
    assert_eq!(p.gateway.stats().link_down, 2);
    assert_eq!(p.gateway.stats().dropped, [0; 7]);
}

#[test]
fn plain_routes_rewrite_ids_and_clear_e() {
    let mut gateway = Gateway::new();
    gateway
        .add_rule(Rule {
            rewrite: IdRewrite {
                and: 0x1FFC_7F00,
                or: 0x07,
                ..IdRewrite::default()
            },
            ..rule(CAN2, 0x500 << 18, 0x7F0 << 18, CAN1)
        })
        .unwrap();
    let forward = gateway.step(CAN2, STATUS_1, &[1, 2]).unwrap().unwrap();
    assert_eq!(forward.bus, CAN1);
    assert_eq!(forward.frames.frames()[0].id, 0x502 << 18 | 0x07);
    assert_eq!(forward.frames.frames()[0].payload(), &[1, 2]);
    // a sealed frame on a plain route has no session to open it; a plain frame with format
    // bits, or a long payload for classic CAN, is malformed
    assert!(gateway.step(CAN2, STATUS_1 | 0x2_0000, &[0; 8]).is_err());
    assert_eq!(drops(&gateway, DropReason::NoSession), 1);
    assert!(gateway.step(CAN2, STATUS_1 | 0x1_0000, &[0; 8]).is_err());
    assert!(gateway.step(CAN2, STATUS_1, &[0; 12]).is_err());
    assert_eq!(drops(&gateway, DropReason::Malformed), 2);
}

#[test]
fn open_then_send_plain_clears_e() {
    let mut p = pack();
    p.gateway.clear_rules();
    p.gateway
        .add_rule(Rule {
            inbound: Some(1),
            ..rule(CAN2, 0x500 << 18, 0x7F0 << 18, CAN1)
        })
        .unwrap();
    let status = p.module.seal(STATUS_1, &[9; 8], false).unwrap();
    let out = step_all(&mut p.gateway, CAN2, status.frames());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.id, STATUS_1);
    assert_eq!(out[0].1.payload(), &[9; 8]);
}

#[test]
fn classic_to_fd_reseal() {
    let mut p = pack();
    p.gateway.clear_rules();
    p.gateway
        .add_rule(Rule {
            inbound: Some(1),
            outbound: Some(0),
            fd: true,
            ..rule(CAN2, 0x500 << 18, 0x7F0 << 18, CAN1)
        })
        .unwrap();
    let status = p.module.seal(STATUS_1, &[7; 8], false).unwrap();
    let out = step_all(&mut p.gateway, CAN2, status.frames());
    assert_eq!(out.len(), 1, "one FD frame instead of a pair");
    assert_eq!(out[0].1.len, 24);
    assert_eq!(open_all(&mut p.app, &[out[0].1]), Some(vec![7; 8]));
}

#[test]
fn rules_are_checked() {
    let mut gateway = Gateway::new();
    let err = gateway
        .add_rule(rule(0, 0x2_0000, 0x2_0000, 1))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    assert!(gateway.table().rules().is_empty());
}

#[test]
fn garbage_never_panics_and_is_counted() {
    let mut p = pack();
    let mut seed = 0x1234_5678_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..5000 {
        let id = next();
        let len = (next() % 70) as usize;
        let data: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        let bus = next().to_le_bytes()[0] % 3;
        let _ = p.gateway.step(bus, id, &data);
    }
    let stats = p.gateway.stats();
    let dropped: u64 = stats.dropped.iter().sum();
    assert_eq!(stats.received, stats.forwarded + stats.pending + dropped);
    assert_eq!(stats.forwarded, 0);
}

// --- cut-through of classic pairs ---------------------------------------------------------

/// Step one frame; the frames that come out.
fn step_one(gateway: &mut Gateway, bus: u8, frame: &_core::Frame) -> Vec<_core::Frame> {
    match gateway.step(bus, frame.id, frame.payload()) {
        Ok(Some(forward)) => forward.frames.frames().to_vec(),
        _ => Vec::new(),
    }
}

/// Send module telemetry through the gateway, one frame at a time; what the app opens.
fn telemetry(p: &mut Pack, payload: &[u8]) -> (Vec<usize>, Option<Vec<u8>>) {
    let sealed = p.module.seal(STATUS_1, payload, false).unwrap();
    let mut counts = Vec::new();
    let mut opened = None;
    for frame in sealed.frames() {
        let out = step_one(&mut p.gateway, CAN2, frame);
        counts.push(out.len());
        for f in &out {
            opened = p
                .app
                .open(f.id, f.payload())
                .unwrap()
                .map(|m| m.payload().to_vec());
        }
    }
    (counts, opened)
}

#[test]
fn cut_through_forwards_the_data_frame_before_its_authenticator() {
    let mut p = pack();
    // The first message of a stream goes whole: there is no freshness to predict from yet.
    assert_eq!(telemetry(&mut p, &[1; 8]), (vec![0, 2], Some(vec![1; 8])));
    // From then on the data frame goes at once, the authenticator when the pair verifies.
    for n in 2..6u8 {
        assert_eq!(telemetry(&mut p, &[n; 8]), (vec![1, 1], Some(vec![n; 8])));
    }
    let stats = p.gateway.stats();
    assert_eq!((stats.forwarded, stats.pending, stats.ahead), (5, 5, 4));
    assert_eq!(stats.ahead_missed, 0);
    let dropped: u64 = stats.dropped.iter().sum();
    assert_eq!(stats.received, stats.forwarded + stats.pending + dropped);
}

#[test]
fn the_data_frame_ahead_carries_no_plaintext_and_opens_nothing_alone() {
    let mut p = pack();
    telemetry(&mut p, &[0; 8]);
    let sealed = p.module.seal(STATUS_1, &[0x55; 8], false).unwrap();
    let forward = p
        .gateway
        .step(CAN2, sealed.frames()[0].id, sealed.frames()[0].payload())
        .unwrap()
        .unwrap();
    assert!(
        forward.plain.is_none(),
        "nothing is verified yet: nothing to tap"
    );
    let ahead = forward.frames.frames()[0];
    assert_ne!(ahead.payload(), &[0x55; 8]);
    assert_ne!(
        ahead.payload(),
        sealed.frames()[0].payload(),
        "re-encrypted"
    );
    assert_eq!(p.app.open(ahead.id, ahead.payload()).unwrap(), None);
    // A forged authenticator gets nothing forwarded, and the genuine one still completes.
    let mut forged = sealed.frames()[1];
    forged.data[7] ^= 1;
    assert!(step_one(&mut p.gateway, CAN2, &forged).is_empty());
    let auth = step_one(&mut p.gateway, CAN2, &sealed.frames()[1]);
    assert_eq!(auth.len(), 1);
    let opened = p.app.open(auth[0].id, auth[0].payload()).unwrap().unwrap();
    assert_eq!(opened.payload(), &[0x55; 8]);
}

#[test]
fn a_forged_data_frame_ahead_is_replaced_by_the_genuine_one() {
    let mut p = pack();
    telemetry(&mut p, &[0; 8]);
    let sealed = p.module.seal(STATUS_1, &[7; 8], false).unwrap();
    let mut forged = sealed.frames()[0];
    forged.data[0] ^= 0xFF;
    let first = step_one(&mut p.gateway, CAN2, &forged);
    // The same reservation for every data frame of the pair: an outbound keystream meets one
    // inbound keystream only, so the two frames ahead differ exactly where the inputs do.
    let second = step_one(&mut p.gateway, CAN2, &sealed.frames()[0]);
    let diff: Vec<u8> = first[0]
        .data
        .iter()
        .zip(&second[0].data)
        .map(|(a, b)| a ^ b)
        .collect();
    assert_eq!(diff[..8], [0xFF, 0, 0, 0, 0, 0, 0, 0]);
    let auth = step_one(&mut p.gateway, CAN2, &sealed.frames()[1]);
    for f in first.iter().chain(&second) {
        assert_eq!(p.app.open(f.id, f.payload()).unwrap(), None);
    }
    let opened = p.app.open(auth[0].id, auth[0].payload()).unwrap().unwrap();
    assert_eq!(opened.payload(), &[7; 8]);
    assert_eq!(p.app.stats().dropped[DropReason::Unpaired.index()], 1);
}

#[test]
fn a_lost_message_makes_the_prediction_miss_and_the_pair_goes_whole() {
    let mut p = pack();
    telemetry(&mut p, &[0; 8]);
    p.module.seal(STATUS_1, &[1; 8], false).unwrap(); // lost on the bus
    assert_eq!(telemetry(&mut p, &[2; 8]), (vec![1, 2], Some(vec![2; 8])));
    assert_eq!(p.gateway.stats().ahead_missed, 1);
    // and the next one is predicted right again
    assert_eq!(telemetry(&mut p, &[3; 8]), (vec![1, 1], Some(vec![3; 8])));
}

#[test]
fn the_gateways_own_seal_on_the_stream_gives_the_reservation_up() {
    let mut p = pack();
    telemetry(&mut p, &[0; 8]);
    let sealed = p.module.seal(STATUS_1, &[4; 8], false).unwrap();
    let ahead = step_one(&mut p.gateway, CAN2, &sealed.frames()[0]);
    // The pack seals on the same outbound stream in between (its counter moves past the
    // reservation): the pair must go whole at a newer value, or the app would call it a replay.
    let own = p.gateway.seal_frame(0, STATUS_1, &[9; 4], false).unwrap();
    let auth = step_one(&mut p.gateway, CAN2, &sealed.frames()[1]);
    assert_eq!(auth.len(), 2);
    let mut opened = Vec::new();
    for f in ahead.iter().chain(own.frames()).chain(&auth) {
        if let Some(m) = p.app.open(f.id, f.payload()).unwrap() {
            opened.push(m.payload().to_vec());
        }
    }
    assert_eq!(opened, vec![vec![9; 4], vec![4; 8]]);
}

#[test]
fn two_streams_onto_one_share_no_reservation() {
    // A rule that carries every status of module 5 onto one app id.
    let mut p = pack();
    p.gateway.clear_rules();
    p.gateway
        .add_rule(Rule {
            inbound: Some(1),
            outbound: Some(0),
            rewrite: IdRewrite {
                set: Some(0x502 << 18 | 0x05),
                ..IdRewrite::default()
            },
            ..rule(CAN2, 0x500 << 18, 0x7F0 << 18, CAN1)
        })
        .unwrap();
    let status_2 = 0x503 << 18 | 0x05;
    let mut app_frames = Vec::new();
    let mut run = |p: &mut Pack, ids: &[u32], payload: u8| {
        let pairs: Vec<_> = ids
            .iter()
            .map(|&id| p.module.seal(id, &[payload; 8], false).unwrap())
            .collect();
        for pair in &pairs {
            app_frames.extend(step_one(&mut p.gateway, CAN2, &pair.frames()[0]));
        }
        for pair in &pairs {
            app_frames.extend(step_one(&mut p.gateway, CAN2, &pair.frames()[1]));
        }
    };
    run(&mut p, &[STATUS_1, status_2], 1);
    run(&mut p, &[STATUS_1, status_2], 2);
    // Both data frames of round 2 are held, only STATUS_1's goes ahead; alternating data
    // frames of the two streams cannot make the gateway burn outbound counters.
    assert_eq!(p.gateway.stats().ahead, 1);
    let mut opened = Vec::new();
    for f in &app_frames {
        if let Ok(Some(m)) = p.app.open(f.id, f.payload()) {
            opened.push(m.payload()[0]);
        }
    }
    // Round 1: both streams' first messages go whole; round 2: STATUS_1's pair completes (its
    // data frame ahead), then status 2's goes whole after it.
    assert_eq!(opened, vec![1, 1, 2, 2]);
}

#[test]
fn store_and_forward_when_cut_through_is_off() {
    let mut p = pack();
    p.gateway.set_cut_through(false);
    for n in 0..3u8 {
        assert_eq!(telemetry(&mut p, &[n; 8]), (vec![0, 2], Some(vec![n; 8])));
    }
    assert_eq!(p.gateway.stats().ahead, 0);
}

#[test]
fn forged_data_frames_on_new_streams_start_no_outbound_counters() {
    // Only streams that verified a message are predicted, so garbage on fresh ids never goes
    // ahead (and never reserves an outbound value).
    let mut p = pack();
    for low in 0..64u32 {
        let id = (0x500 << 18 | low) | 0x2_0000 | 0x8000; // E set, fmt = pair data
        assert!(step_one(
            &mut p.gateway,
            CAN2,
            &_core::Frame::new(id, &[0; 8]).unwrap()
        )
        .is_empty());
    }
    assert_eq!(p.gateway.stats().ahead, 0);
}
