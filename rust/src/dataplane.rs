//! The data plane: routed frames carried between two raw CAN sockets by the [`Gateway`], one
//! thread per bus, without Python.
//!
//! Each thread waits in `recvmmsg` for its bus's next frame and takes whatever else is queued
//! behind it, up to [`BATCH`] frames, in the same call (`MSG_WAITFORONE`: one system call per
//! wake-up, not a `poll` and then a read), steps them all through the gateway under one lock,
//! and sends what comes out with one `sendmmsg` per destination bus. So that the wait ends
//! for the stop flag too, the plane reads its sockets blocking with a receive timeout
//! (`SO_RCVTIMEO`): they are the plane's alone from then on. The gateway is the one Python
//! configures (sessions, rules, the tap, the counters): the data plane only moves its frames. The
//! sockets carry `struct can_frame` (16 bytes) and `struct canfd_frame` (72 bytes) as a
//! SocketCAN raw socket does; in tests they are `socketpair(AF_UNIX, SOCK_SEQPACKET)`, which
//! carries the same records.
//!
//! What the kernel drops for a full receive queue is reported with each frame as
//! `SO_RXQ_OVFL` (the plane turns it on); a send the kernel refuses because the transmit queue
//! is full (`ENOBUFS`), or that would block, is a lost frame, counted (any other send failure
//! is counted apart). None of them stops a thread.
//! A frame that is not a 29-bit data frame is not the gateway's (as on the Python path) and is
//! counted as `skipped`; so is a plain frame on a bus that carries only sealed ones to the
//! gateway (CAN 1, where plain frames are the control channel's).
//!
//! The threads can run at a real-time priority (`SCHED_FIFO`), as the kernel's own gateway
//! runs in softirq context ahead of every thread: a routed frame then waits for no thread
//! below that priority. The price: each frame that arrives preempts whoever sent it, so
//! batches shrink and the CPU per frame grows (docs/PERFORMANCE.md measured both). Where it
//! is not permitted (no `CAP_SYS_NICE`, or `RLIMIT_RTPRIO` below it) the threads run at
//! normal priority, and [`DataPlane::realtime`] says so.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::error::{Error, Result};
use crate::frame::{Frame, MAX_DATA_LEN};
use crate::gateway::Gateway;
use crate::ids::ENCRYPTION_FLAG;

/// Frames taken from a socket in one system call at most.
pub const BATCH: usize = 64;
/// `sizeof(struct can_frame)`.
pub const CLASSIC_MTU: usize = 16;
/// `sizeof(struct canfd_frame)`.
pub const FD_MTU: usize = 72;
/// The id's flag of a 29-bit frame in `struct can_frame`.
pub const CAN_EFF_FLAG: u32 = 0x8000_0000;
const CAN_RTR_FLAG: u32 = 0x4000_0000;
const CAN_ERR_FLAG: u32 = 0x2000_0000;
const CAN_EFF_MASK: u32 = 0x1FFF_FFFF;
const CANFD_BRS: u8 = 0x01;
/// How long a thread waits for its socket before it looks at the stop flag again.
const WAKE_MS: i64 = 50;
/// How long a thread waits before reading again a socket that fails at once.
const QUIET: std::time::Duration = std::time::Duration::from_millis(WAKE_MS.unsigned_abs());

/// One bus of the data plane.
#[derive(Debug)]
pub struct PlaneBus {
    /// A raw CAN socket (or a `SOCK_SEQPACKET` socket carrying the same records).
    pub socket: OwnedFd,
    /// Where frames for this bus are sent, when not on `socket`: the socket of the program's
    /// own listener on the bus, so that what the plane sends is that listener's own frames,
    /// which the kernel does not deliver back to it (the pack must not take the commands it
    /// forwards for another sender's).
    pub sender: Option<OwnedFd>,
    /// Whether frames sent on this bus are CAN FD (`struct canfd_frame`) even when they would
    /// fit a classic frame. A payload over 8 bytes is always sent as CAN FD.
    pub fd_frames: bool,
    /// Whether only sealed frames (E = 1) received here go to the gateway.
    pub sealed_only: bool,
}

/// Counters of one bus of the data plane.
#[derive(Debug, Default)]
struct BusCounters {
    received: AtomicU64,
    sent: AtomicU64,
    skipped: AtomicU64,
    rx_overflow: AtomicU64,
    tx_queue_full: AtomicU64,
    tx_failed: AtomicU64,
    batches: AtomicU64,
}

/// A snapshot of one bus's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlaneStats {
    /// Frames read from the socket.
    pub received: u64,
    /// Frames the socket took.
    pub sent: u64,
    /// Frames read that are not the gateway's (see the module's documentation).
    pub skipped: u64,
    /// Frames the kernel dropped for this socket's full receive queue (`SO_RXQ_OVFL`).
    pub rx_overflow: u64,
    /// Frames lost because the transmit queue was full (`ENOBUFS`, or a buffer that stays
    /// full).
    pub tx_queue_full: u64,
    /// Frames lost to any other send failure (an interface gone or down).
    pub tx_failed: u64,
    /// `recvmmsg` calls that returned frames.
    pub batches: u64,
}

impl BusCounters {
    fn snapshot(&self) -> PlaneStats {
        PlaneStats {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            rx_overflow: self.rx_overflow.load(Ordering::Relaxed),
            tx_queue_full: self.tx_queue_full.load(Ordering::Relaxed),
            tx_failed: self.tx_failed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    gateway: Arc<Mutex<Gateway>>,
    buses: [PlaneBus; 2],
    counters: [BusCounters; 2],
    stop: AtomicBool,
}

/// The running data plane: a thread per bus, until [`DataPlane::stop`] (or drop).
pub struct DataPlane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    realtime: bool,
}

/// Move `thread` to `SCHED_FIFO` at `priority`.
#[allow(unsafe_code)]
fn run_at_fifo(thread: &JoinHandle<()>, priority: i32) -> std::io::Result<()> {
    use std::os::unix::thread::JoinHandleExt;
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: the thread is not joined yet (its handle is borrowed here), so its pthread_t is
    // valid; `param` is a valid sched_param that the call only reads.
    let status =
        unsafe { libc::pthread_setschedparam(thread.as_pthread_t(), libc::SCHED_FIFO, &param) };
    match status {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

impl DataPlane {
    /// Start carrying frames between `buses` (index = the gateway's bus number) through
    /// `gateway`, at the real-time `priority` (`SCHED_FIFO`, 1 to 99) where it is
    /// permitted, or at normal priority (None).
    pub fn start(
        gateway: Arc<Mutex<Gateway>>,
        buses: [PlaneBus; 2],
        priority: Option<i32>,
    ) -> Result<DataPlane> {
        if let Some(priority) = priority {
            if !(1..=99).contains(&priority) {
                return Err(Error::InvalidArgument(format!(
                    "a real-time priority is 1 to 99, not {priority}"
                )));
            }
        }
        for bus in &buses {
            read_by_the_plane(&bus.socket).map_err(|e| {
                Error::InvalidArgument(format!("not a socket the data plane can read: {e}"))
            })?;
        }
        let shared = Arc::new(Shared {
            gateway,
            buses,
            counters: Default::default(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::with_capacity(2);
        for bus in 0..2u8 {
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("modbatt-plane-{}", bus + 1))
                .spawn(move || carry(&shared, bus))
                .map_err(|e| Error::InvalidArgument(format!("cannot start a thread: {e}")))?;
            threads.push(thread);
        }
        let realtime = priority.is_some_and(|priority| {
            threads
                .iter()
                .all(|thread| run_at_fifo(thread, priority).is_ok())
        });
        Ok(DataPlane {
            shared,
            threads,
            realtime,
        })
    }

    /// Whether the threads run at the real-time priority asked for.
    pub fn realtime(&self) -> bool {
        self.realtime
    }

    /// Each bus's counters.
    pub fn stats(&self) -> [PlaneStats; 2] {
        [
            self.shared.counters[0].snapshot(),
            self.shared.counters[1].snapshot(),
        ]
    }

    /// Whether the threads run.
    pub fn running(&self) -> bool {
        !self.threads.is_empty()
    }

    /// Stop both threads and wait for them (within about 50 ms: they wake that often).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Set `socket` up for [`carry`]: blocking reads that give up after [`WAKE_MS`], and the
/// kernel's drop count with every frame received (`SO_RXQ_OVFL`).
fn read_by_the_plane(socket: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(socket, FcntlArg::F_GETFL)?);
    if flags.contains(OFlag::O_NONBLOCK) {
        fcntl(
            socket,
            FcntlArg::F_SETFL(flags.difference(OFlag::O_NONBLOCK)),
        )?;
    }
    setsockopt(
        socket,
        sockopt::ReceiveTimeout,
        &TimeVal::milliseconds(WAKE_MS),
    )?;
    setsockopt(socket, sockopt::RxqOvfl, &1)
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A frame read from a socket: (id, payload), or why it is not the gateway's.
fn parse(record: &[u8], sealed_only: bool) -> Option<(u32, &[u8])> {
    if record.len() != CLASSIC_MTU && record.len() != FD_MTU {
        return None;
    }
    let raw_id = u32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
    if raw_id & CAN_EFF_FLAG == 0 || raw_id & (CAN_RTR_FLAG | CAN_ERR_FLAG) != 0 {
        return None; // 11-bit, remote or error frames: no payload for the frame path
    }
    let id = raw_id & CAN_EFF_MASK;
    if sealed_only && id & ENCRYPTION_FLAG == 0 {
        return None;
    }
    let capacity = record.len() - 8;
    let len = usize::from(record[4]).min(capacity);
    Some((id, &record[8..8 + len]))
}

/// `frame` as the record a socket of `bus` sends.
fn record(frame: &Frame, fd_frames: bool, out: &mut [u8; FD_MTU]) -> usize {
    let len = usize::from(frame.len);
    let size = if fd_frames || len > 8 {
        FD_MTU
    } else {
        CLASSIC_MTU
    };
    out[..size].fill(0);
    out[..4].copy_from_slice(&(frame.id | CAN_EFF_FLAG).to_ne_bytes());
    out[4] = frame.len;
    if size == FD_MTU {
        out[5] = CANFD_BRS; // as the Python path sends CAN FD (python-can's bitrate_switch)
    }
    out[8..8 + len].copy_from_slice(frame.payload());
    size
}

fn carry(shared: &Shared, bus: u8) {
    let index = usize::from(bus);
    let socket = &shared.buses[index].socket;
    let sealed_only = shared.buses[index].sealed_only;
    let counters = &shared.counters[index];
    let mut buffers = vec![[0u8; FD_MTU]; BATCH];
    let mut headers = MultiHeaders::<()>::preallocate(BATCH, Some(nix::cmsg_space!(u32)));
    let mut outgoing: [Vec<Frame>; 2] = [Vec::with_capacity(BATCH), Vec::with_capacity(BATCH)];
    let mut received: Vec<(usize, usize)> = Vec::with_capacity(BATCH); // (buffer, bytes)
    while !shared.stop.load(Ordering::Relaxed) {
        received.clear();
        let mut peer_gone = false;
        {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
                .iter_mut()
                .map(|buffer| [IoSliceMut::new(buffer)])
                .collect();
            // Blocks for the first frame (at most WAKE_MS), then takes what is queued.
            let messages = match recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(messages) => messages,
                Err(Errno::EAGAIN | Errno::EINTR) => continue, // quiet: look at the stop flag
                Err(_) => {
                    // The interface is gone or down: wait as long as a quiet read would.
                    std::thread::sleep(QUIET);
                    continue;
                }
            };
            for (slot, message) in messages.enumerate() {
                if message.bytes == 0 {
                    peer_gone = true; // end of file: only a socketpair's peer closing does this
                    continue;
                }
                if let Ok(cmsgs) = message.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::RxqOvfl(dropped) = cmsg {
                            counters
                                .rx_overflow
                                .fetch_max(u64::from(dropped), Ordering::Relaxed);
                        }
                    }
                }
                received.push((slot, message.bytes));
            }
        }
        if received.is_empty() {
            if peer_gone {
                std::thread::sleep(QUIET); // every read would end at once
            }
            continue;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .received
            .fetch_add(received.len() as u64, Ordering::Relaxed);
        {
            let mut gateway = shared
                .gateway
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for &(slot, bytes) in &received {
                let Some((id, data)) = parse(&buffers[slot][..bytes], sealed_only) else {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Ok(Some(forward)) = gateway.step(bus, id, data) {
                    if let Some(out) = outgoing.get_mut(usize::from(forward.bus)) {
                        out.extend_from_slice(forward.frames.frames());
                    }
                }
            }
        }
        for (dst, frames) in outgoing.iter_mut().enumerate() {
            if !frames.is_empty() {
                send_all(shared, dst, frames);
                frames.clear();
            }
        }
    }
}

/// Send `frames` on bus `dst`; what the socket cannot take is counted as lost.
fn send_all(shared: &Shared, dst: usize, frames: &[Frame]) {
    let bus = &shared.buses[dst];
    let socket = bus.sender.as_ref().unwrap_or(&bus.socket);
    let counters = &shared.counters[dst];
    let mut records = vec![[0u8; FD_MTU]; frames.len()];
    let sizes: Vec<usize> = frames
        .iter()
        .zip(records.iter_mut())
        .map(|(frame, out)| record(frame, bus.fd_frames, out))
        .collect();
    let mut headers = MultiHeaders::<()>::preallocate(frames.len(), None);
    let mut next = 0;
    while next < frames.len() {
        let slices: Vec<[IoSlice<'_>; 1]> = records[next..]
            .iter()
            .zip(&sizes[next..])
            .map(|(out, &size)| [IoSlice::new(&out[..size])])
            .collect();
        let addresses = vec![None; slices.len()];
        let result = sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter(),
            addresses,
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map(Iterator::count);
        match result {
            Ok(sent) if sent > 0 => {
                counters.sent.fetch_add(sent as u64, Ordering::Relaxed);
                next += sent;
            }
            Err(Errno::EAGAIN) if writable_soon(socket) => {}
            Err(Errno::EINTR) => {}
            Err(Errno::ENOBUFS | Errno::EAGAIN) => {
                // The transmit queue is full (or its buffer stays full): this frame is lost,
                // the rest are tried.
                counters.tx_queue_full.fetch_add(1, Ordering::Relaxed);
                next += 1;
            }
            _ => {
                // The interface is down or gone: lost too, and counted apart.
                counters.tx_failed.fetch_add(1, Ordering::Relaxed);
                next += 1;
            }
        }
    }
}

/// Whether the socket can take a frame within a millisecond (a burst filled its buffer).
fn writable_soon(socket: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::from(1u16)), Ok(n) if n > 0)
}

const _: () = assert!(FD_MTU - 8 == MAX_DATA_LEN);
