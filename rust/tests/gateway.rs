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
    let mut p = pack();
    p.gateway.remove_session(1);
    let command = p.app.seal(STATE_CHANGE, &[1], false).unwrap();
    let f = command.frames()[0];
    assert_eq!(
        p.gateway
            .step(CAN1, f.id, f.payload())
            .unwrap_err()
            .drop_reason(),
        DropReason::NoSession
    );
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
    // a secured frame on a plain route is malformed; so is a long payload for classic CAN
    assert!(gateway.step(CAN2, STATUS_1 | 0x2_0000, &[0; 8]).is_err());
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
