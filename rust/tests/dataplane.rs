//! The data plane over `socketpair(AF_UNIX, SOCK_SEQPACKET)`, which carries `struct can_frame`
//! records as a raw CAN socket does: the same frames out as `Gateway::step` gives, the same
//! counters, the tap, skipped frames, and a prompt stop.
#![cfg(target_os = "linux")]
#![allow(clippy::cast_possible_truncation)] // test data: small values by construction

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use _core::dataplane::{DataPlane, PlaneBus, CAN_EFF_FLAG, CLASSIC_MTU, FD_MTU};
use _core::{Frame, Gateway, IdRewrite, LinkKey, Rule, Session, SessionLimits};
use common::half;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{
    getsockopt, recv, send, socketpair, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
};
use nix::sys::time::TimeValLike;

const CAN1: u8 = 0;
const CAN2: u8 = 1;
const STATUS_1: u32 = 0x502 << 18 | 0x05;
const STATE_CHANGE: u32 = 0x514 << 18 | 0x05;

struct Ends {
    app: Session,
    module: Session,
}

/// A gateway with an app link (0) and a module link (1), as in tests/gateway.rs; `seed`
/// makes two of them identical.
fn gateway(seed: u8) -> (Gateway, Ends) {
    let limits = SessionLimits::default();
    let app_link =
        LinkKey::derive(&half(seed), "COMP-app", &half(seed + 1), "COMP-pack", None).unwrap();
    let module_link = LinkKey::derive(
        &half(seed + 2),
        "COMP-pack",
        &half(seed + 3),
        "COMP-module-5",
        None,
    )
    .unwrap();
    let n = |k: u8| [seed.wrapping_add(k); 16];
    let mut gateway = Gateway::new();
    gateway.install_session(
        0,
        Session::new(&app_link, "COMP-pack", "COMP-app", &n(2), &n(1), limits).unwrap(),
    );
    gateway.install_session(
        1,
        Session::new(
            &module_link,
            "COMP-pack",
            "COMP-module-5",
            &n(3),
            &n(4),
            limits,
        )
        .unwrap(),
    );
    let rule = |src_bus, match_id, dst_bus, inbound, outbound| Rule {
        src_bus,
        match_id,
        mask: 0x7F0 << 18,
        dst_bus,
        rewrite: IdRewrite::default(),
        inbound,
        outbound,
        fd: false,
    };
    gateway
        .add_rule(rule(CAN1, 0x510 << 18, CAN2, Some(0), Some(1)))
        .unwrap();
    gateway
        .add_rule(rule(CAN2, 0x500 << 18, CAN1, Some(1), Some(0)))
        .unwrap();
    gateway.set_tap(0x500 << 18, 0x7F0 << 18);
    let ends = Ends {
        app: Session::new(&app_link, "COMP-app", "COMP-pack", &n(1), &n(2), limits).unwrap(),
        module: Session::new(
            &module_link,
            "COMP-module-5",
            "COMP-pack",
            &n(4),
            &n(3),
            limits,
        )
        .unwrap(),
    };
    (gateway, ends)
}

fn seqpacket() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

/// The data plane's side of a bus: CAN 1 carries only sealed frames to the gateway (its plain
/// ones are the control channel's), CAN 2 every frame.
fn bus(socket: OwnedFd, sender: Option<OwnedFd>, sealed_only: bool) -> PlaneBus {
    PlaneBus {
        socket,
        sender,
        fd_frames: false,
        sealed_only,
    }
}

fn record(id: u32, data: &[u8]) -> Vec<u8> {
    let size = if data.len() > 8 { FD_MTU } else { CLASSIC_MTU };
    let mut out = vec![0u8; size];
    out[..4].copy_from_slice(&(id | CAN_EFF_FLAG).to_ne_bytes());
    out[4] = data.len() as u8;
    out[8..8 + data.len()].copy_from_slice(data);
    out
}

/// What the far end of a bus receives within `wait`, as (id, payload).
fn receive(socket: &OwnedFd, wait: Duration) -> Vec<(u32, Vec<u8>)> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buffer = [0u8; FD_MTU];
    while Instant::now() < deadline {
        match recv(socket.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => {
                let id = u32::from_ne_bytes(buffer[..4].try_into().unwrap());
                assert_ne!(id & CAN_EFF_FLAG, 0);
                assert!(n == CLASSIC_MTU || n == FD_MTU);
                out.push((
                    id & 0x1FFF_FFFF,
                    buffer[8..8 + usize::from(buffer[4])].to_vec(),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    out
}

struct Running {
    plane: DataPlane,
    gateway: Arc<Mutex<Gateway>>,
    can1: OwnedFd, // the far ends: the app's bus and the modules' bus
    can2: OwnedFd,
}

fn running(gateway: Gateway) -> Running {
    let (plane1, can1) = seqpacket();
    let (plane2, can2) = seqpacket();
    let gateway = Arc::new(Mutex::new(gateway));
    let plane = DataPlane::start(
        Arc::clone(&gateway),
        [bus(plane1, None, true), bus(plane2, None, false)],
        None,
    )
    .unwrap();
    Running {
        plane,
        gateway,
        can1,
        can2,
    }
}

fn send_frames(socket: &OwnedFd, frames: &[Frame]) {
    for f in frames {
        send(
            socket.as_raw_fd(),
            &record(f.id, f.payload()),
            MsgFlags::empty(),
        )
        .unwrap();
    }
}

#[test]
fn the_data_plane_forwards_what_the_gateway_step_forwards() {
    let (twin, mut twin_ends) = gateway(7);
    let (gateway, mut ends) = gateway(7);
    let mut twin = twin;
    let mut run = running(gateway);
    // telemetry CAN 2 -> CAN 1, a command CAN 1 -> CAN 2: pairs (8 bytes) and singles (3)
    let mut expected1 = Vec::new();
    let mut expected2 = Vec::new();
    for n in 0..40u8 {
        let payload: Vec<u8> = vec![n; if n % 2 == 0 { 8 } else { 3 }];
        let sealed = ends.module.seal(STATUS_1, &payload, false).unwrap();
        let twin_sealed = twin_ends.module.seal(STATUS_1, &payload, false).unwrap();
        assert_eq!(sealed.frames(), twin_sealed.frames());
        send_frames(&run.can2, sealed.frames());
        for f in twin_sealed.frames() {
            if let Ok(Some(forward)) = twin.step(CAN2, f.id, f.payload()) {
                expected1.extend(
                    forward
                        .frames
                        .frames()
                        .iter()
                        .map(|g| (g.id, g.payload().to_vec())),
                );
            }
        }
    }
    let command = ends.app.seal(STATE_CHANGE, &[5, 3], false).unwrap();
    let twin_command = twin_ends.app.seal(STATE_CHANGE, &[5, 3], false).unwrap();
    send_frames(&run.can1, command.frames());
    for f in twin_command.frames() {
        if let Ok(Some(forward)) = twin.step(CAN1, f.id, f.payload()) {
            expected2.extend(
                forward
                    .frames
                    .frames()
                    .iter()
                    .map(|g| (g.id, g.payload().to_vec())),
            );
        }
    }
    let on_can1 = receive(&run.can1, Duration::from_millis(500));
    let on_can2 = receive(&run.can2, Duration::from_millis(200));
    assert_eq!(on_can1, expected1);
    assert_eq!(on_can2, expected2);
    // the far ends open it all
    let mut opened = 0;
    for (id, data) in &on_can1 {
        if let Some(plain) = ends.app.open(*id, data).unwrap() {
            assert_eq!(plain.payload()[0], opened as u8);
            opened += 1;
        }
    }
    assert_eq!(opened, 40);
    // the same counters as the twin, and the tap kept the latest message
    let gateway = Arc::clone(&run.gateway);
    run.plane.stop();
    let mut gateway = gateway.lock().unwrap();
    assert_eq!(gateway.stats(), twin.stats());
    assert_eq!(gateway.take_tapped(), twin.take_tapped());
    let stats = run.plane.stats();
    assert_eq!(stats[1].received, on_can1.len() as u64);
    assert_eq!(stats[0].sent, on_can1.len() as u64);
    assert_eq!((stats[0].rx_overflow, stats[0].tx_queue_full), (0, 0));
}

#[test]
fn frames_that_are_not_the_gateways_are_skipped_and_counted() {
    let (gateway, mut ends) = gateway(3);
    let mut run = running(gateway);
    // an 11-bit frame, a remote frame, a record of the wrong size, and a plain frame on
    // CAN 1 (the control channel's: the plane carries only sealed frames from there)
    let mut eleven_bit = record(0x123, &[1]);
    eleven_bit[..4].copy_from_slice(&0x123u32.to_ne_bytes());
    let mut remote = record(STATUS_1, &[]);
    remote[..4].copy_from_slice(&(STATUS_1 | CAN_EFF_FLAG | 0x4000_0000).to_ne_bytes());
    for junk in [eleven_bit, remote, vec![0u8; 5]] {
        send(run.can2.as_raw_fd(), &junk, MsgFlags::empty()).unwrap();
    }
    send(
        run.can1.as_raw_fd(),
        &record(0x460 << 18, &[1, 2]),
        MsgFlags::empty(),
    )
    .unwrap();
    // ...while real traffic still flows
    send_frames(
        &run.can2,
        ends.module.seal(STATUS_1, &[9; 3], false).unwrap().frames(),
    );
    let out = receive(&run.can1, Duration::from_millis(300));
    assert_eq!(out.len(), 1);
    assert_eq!(
        ends.app
            .open(out[0].0, &out[0].1)
            .unwrap()
            .unwrap()
            .payload(),
        &[9; 3]
    );
    let stats = run.plane.stats();
    assert_eq!((stats[1].skipped, stats[0].skipped), (3, 1));
    assert_eq!(run.gateway.lock().unwrap().stats().received, 1);
    run.plane.stop();
}

#[test]
fn stopping_is_prompt_and_a_gone_peer_is_counted_not_fatal() {
    let (gateway, mut ends) = gateway(5);
    let mut run = running(gateway);
    drop(std::mem::replace(&mut run.can1, seqpacket().0)); // the app's end of CAN 1 is gone
    send_frames(
        &run.can2,
        ends.module.seal(STATUS_1, &[1; 3], false).unwrap().frames(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let stats = run.plane.stats();
    assert_eq!((stats[0].tx_failed, stats[0].tx_queue_full), (1, 0));
    // its reader sees the end of the file and waits: it neither spins nor counts it as frames
    assert_eq!((stats[0].received, stats[0].skipped), (0, 0));
    assert!(run.plane.running());
    let started = Instant::now();
    run.plane.stop();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(!run.plane.running());
}

#[test]
fn sockets_handed_over_non_blocking_are_read_blocking_with_a_timeout() {
    let (gateway, mut ends) = gateway(11);
    let nonblocking = || {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap()
    };
    let ((plane1, can1), (plane2, can2)) = (nonblocking(), nonblocking());
    let watched = plane2.try_clone().unwrap(); // the same open socket as the plane's
    let mut plane = DataPlane::start(
        Arc::new(Mutex::new(gateway)),
        [bus(plane1, None, true), bus(plane2, None, false)],
        None,
    )
    .unwrap();
    // A non-blocking read would return at once: the thread would spin instead of waiting.
    let flags = OFlag::from_bits_truncate(fcntl(&watched, FcntlArg::F_GETFL).unwrap());
    assert!(!flags.contains(OFlag::O_NONBLOCK));
    let timeout = getsockopt(&watched, sockopt::ReceiveTimeout).unwrap();
    // the stop flag's wake-up, 50 ms, as the kernel keeps it (in jiffies: 52 ms at HZ=250)
    assert!((50..=60).contains(&timeout.num_milliseconds()), "{timeout}");
    send_frames(
        &can2,
        ends.module.seal(STATUS_1, &[4; 8], false).unwrap().frames(),
    );
    assert_eq!(receive(&can1, Duration::from_millis(300)).len(), 2);
    let started = Instant::now();
    plane.stop();
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[test]
fn frames_go_out_on_the_sender_when_one_is_given_and_nowhere_else() {
    let (gateway, mut ends) = gateway(9);
    let (plane1, can1) = seqpacket();
    let (plane2, can2) = seqpacket();
    let (sender1, listener1) = seqpacket(); // the program's own listener's socket on CAN 1
    let plane = DataPlane::start(
        Arc::new(Mutex::new(gateway)),
        [bus(plane1, Some(sender1), true), bus(plane2, None, false)],
        None,
    )
    .unwrap();
    let sealed = ends.module.seal(STATUS_1, &[7; 8], false).unwrap();
    send_frames(&can2, sealed.frames());
    let via_sender = receive(&listener1, Duration::from_millis(300));
    assert_eq!(via_sender.len(), 2, "a resealed pair, on the sender");
    assert!(receive(&can1, Duration::from_millis(100)).is_empty());
    let [bus1, _] = plane.stats();
    assert_eq!(bus1.sent, 2);
    let mut plane = plane;
    plane.stop();
}

#[test]
fn a_real_time_priority_outside_1_to_99_is_refused() {
    for priority in [0, 100, -1] {
        let (plane1, _can1) = seqpacket();
        let (plane2, _can2) = seqpacket();
        let refused = DataPlane::start(
            Arc::new(Mutex::new(Gateway::new())),
            [bus(plane1, None, true), bus(plane2, None, false)],
            Some(priority),
        );
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("1 to 99")),
            "{priority} accepted"
        );
    }
}
