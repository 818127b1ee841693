//! The vhost-user protocol side: the Unix socket, message framing with file descriptors,
//! and the handling of each frontend request on the shared [`DeviceState`].
//!
//! Message codes and payload layouts come from the `vhost` crate
//! (`vhost::vhost_user::message`); the handling is ours, so that the order QEMU 10 uses
//! works: it sends `SET_VRING_ENABLE` before the first `SET_FEATURES`, which the released
//! rust-vmm request handler refuses. A ring's enable bit is simply recorded whenever it
//! arrives and takes effect once the ring is started.
//!
//! Spec: vhost-user protocol (QEMU `docs/interop/vhost-user.rst`): "Message format",
//! "Communication", "Ring states", "Front-end message types", "REPLY_ACK".

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserConfigFlags, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVringAddr, VhostUserVringState,
};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

use crate::device::{DeviceState, MAX_QUEUE_SIZE, MIN_MTU, MemRegion, NUM_QUEUES, VringAddrs};

/// vhost-user header length in bytes (request, flags, size: three u32).
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted, in bytes (the spec's `MAX_MSG_SIZE`).
pub const MAX_PAYLOAD: usize = vhost::vhost_user::message::MAX_MSG_SIZE;
/// Most file descriptors accepted with one message.
pub const MAX_FDS: usize = 32;
/// Memory slots advertised with `GET_MAX_MEM_SLOTS`.
pub const MAX_MEM_SLOTS: u64 = 32;
/// Queue pairs advertised with `GET_QUEUE_NUM`.
pub const QUEUE_PAIRS: u64 = 1;

/// Header flag: protocol version 1.
const FLAG_VERSION_1: u32 = 0x1;
/// Header flag: this is a reply.
const FLAG_REPLY: u32 = 0x4;
/// Header flag: the sender wants a reply (REPLY_ACK).
const FLAG_NEED_REPLY: u32 = 0x8;
/// `SET_VRING_KICK`/`CALL`/`ERR` payload: no file descriptor attached.
const VRING_NOFD_MASK: u64 = 0x100;
/// `SET_VRING_KICK`/`CALL`/`ERR` payload: the vring index.
const VRING_IDX_MASK: u64 = 0xff;

/// vhost-user protocol features offered (without an MTU configured).
pub fn offered_protocol_features() -> u64 {
    (VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE)
        .bits()
}

/// vhost-user protocol features offered for `st`: [`offered_protocol_features`], plus
/// `CONFIG` (`GET_CONFIG` serves the config space with the `mtu` field) and `MTU`
/// (`NET_SET_MTU` accepted) when an MTU is configured.
pub fn protocol_features_for(st: &DeviceState) -> u64 {
    if st.mtu.is_some() {
        offered_protocol_features()
            | (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MTU).bits()
    } else {
        offered_protocol_features()
    }
}

/// Errors of the vhost-user control path. Each one ends the connection (the frontend
/// reconnects); none reaches the packet path.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Socket I/O failed.
    #[error("vhost-user socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The frontend closed the connection.
    #[error("frontend disconnected")]
    Disconnected,
    /// A message could not be parsed.
    #[error("malformed vhost-user message: {0}")]
    Malformed(String),
}

/// One vhost-user message as received.
#[derive(Debug)]
pub struct Message {
    /// Request code (`FrontendReq` value).
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// Payload.
    pub body: Vec<u8>,
    /// File descriptors that came with it.
    pub files: Vec<File>,
}

impl Message {
    fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    /// Reads a payload struct at the start of the body.
    fn body_as<T: ByteValued + Default>(&self) -> Result<T, ProtocolError> {
        self.body_at(0)
    }

    fn body_at<T: ByteValued + Default>(&self, off: usize) -> Result<T, ProtocolError> {
        let n = std::mem::size_of::<T>();
        let src = self.body.get(off..off + n).ok_or_else(|| {
            ProtocolError::Malformed(format!("request {} payload too short", self.request))
        })?;
        let mut v = T::default();
        v.as_mut_slice().copy_from_slice(src);
        Ok(v)
    }
}

/// Receives one message (header, payload, file descriptors) from `sock`.
///
/// # Errors
/// [`ProtocolError::Disconnected`] at end of stream, `Io` or `Malformed` otherwise.
pub fn recv_message(sock: &UnixStream) -> Result<Message, ProtocolError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut hdr = [0u8; HEADER_LEN];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut files = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io_err(std::io::Error::from(e)))?;
        for c in msg.cmsgs().map_err(|e| io_err(std::io::Error::from(e)))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed `fd` in our table for this message;
                    // nothing else owns it.
                    files.push(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        msg.bytes
    };
    if got == 0 {
        return Err(ProtocolError::Disconnected);
    }
    let mut s = sock;
    if got < HEADER_LEN {
        s.read_exact(&mut hdr[got..]).map_err(read_err)?;
    }
    let word = |i: usize| u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8) as usize);
    if size > MAX_PAYLOAD {
        return Err(ProtocolError::Malformed(format!("payload of {size} bytes")));
    }
    let mut body = vec![0u8; size];
    s.read_exact(&mut body).map_err(read_err)?;
    Ok(Message {
        request,
        flags,
        body,
        files,
    })
}

fn io_err(source: std::io::Error) -> ProtocolError {
    ProtocolError::Io {
        path: PathBuf::new(),
        source,
    }
}

fn read_err(e: std::io::Error) -> ProtocolError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtocolError::Disconnected
    } else {
        io_err(e)
    }
}

/// Sends a reply to `request` with `payload`.
///
/// # Errors
/// `Io` when the socket write fails.
pub fn send_reply(sock: &UnixStream, request: u32, payload: &[u8]) -> Result<(), ProtocolError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&request.to_ne_bytes());
    buf.extend_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_ne_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    buf.extend_from_slice(payload);
    let mut s = sock;
    s.write_all(&buf).map_err(io_err)
}

/// Result of handling one request: an explicit reply payload, or a success/failure for
/// REPLY_ACK.
enum Outcome {
    Reply(Vec<u8>),
    Ack(bool),
}

fn lock(shared: &Mutex<DeviceState>) -> MutexGuard<'_, DeviceState> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn ring_index(i: u64) -> Result<usize, ProtocolError> {
    let i = i as usize;
    if i < NUM_QUEUES {
        Ok(i)
    } else {
        Err(ProtocolError::Malformed(format!(
            "vring {i} (one queue pair only)"
        )))
    }
}

/// Handles one request on `shared` and returns the reply to send, if any.
///
/// # Errors
/// `Malformed` for a payload that does not parse; the caller ends the connection.
pub fn handle(
    shared: &Mutex<DeviceState>,
    mut msg: Message,
) -> Result<Option<Vec<u8>>, ProtocolError> {
    let req = FrontendReq::try_from(msg.request).ok();
    tracing::debug!(request = ?req, code = msg.request, size = msg.body.len(), fds = msg.files.len(), "vhost-user request");
    let outcome = match req {
        Some(FrontendReq::GET_FEATURES) => Outcome::Reply(
            VhostUserU64::new(lock(shared).offered_features())
                .as_slice()
                .to_vec(),
        ),
        Some(FrontendReq::SET_FEATURES) => {
            let v: VhostUserU64 = msg.body_as()?;
            let f = v.value;
            let mut st = lock(shared);
            let offered = st.offered_features();
            if f & !offered != 0 {
                tracing::warn!(features = f, "frontend acked features not offered");
            }
            st.set_features(f & offered);
            Outcome::Ack(f & !offered == 0)
        }
        Some(FrontendReq::GET_PROTOCOL_FEATURES) => Outcome::Reply(
            VhostUserU64::new(protocol_features_for(&lock(shared)))
                .as_slice()
                .to_vec(),
        ),
        Some(FrontendReq::SET_PROTOCOL_FEATURES) => {
            let v: VhostUserU64 = msg.body_as()?;
            let mut st = lock(shared);
            st.protocol_features = v.value & protocol_features_for(&st);
            Outcome::Ack(true)
        }
        Some(FrontendReq::GET_CONFIG) => {
            // Reply: the same header with the requested bytes of the config space, or a
            // zero size on failure (vhost-user spec, GET_CONFIG).
            let c: VhostUserConfig = msg.body_as()?;
            let space = lock(shared).config_space();
            let (off, size) = (c.offset as usize, c.size as usize);
            let mut reply = VhostUserConfig::new(c.offset, c.size, VhostUserConfigFlags::empty());
            let mut data = vec![0u8; size.min(MAX_PAYLOAD)];
            let ok = size <= MAX_PAYLOAD - std::mem::size_of::<VhostUserConfig>()
                && off.checked_add(size).is_some();
            if ok {
                // Bytes past the fields we define read as zero.
                for (i, b) in data.iter_mut().enumerate() {
                    *b = space.get(off + i).copied().unwrap_or(0);
                }
            } else {
                reply.size = 0;
                data.clear();
            }
            let mut p = reply.as_slice().to_vec();
            p.extend_from_slice(&data);
            Outcome::Reply(p)
        }
        Some(FrontendReq::NET_SET_MTU) => {
            // The frontend's MTU (QEMU `host_mtu`): accepted up to the MTU we advertise.
            let v: VhostUserU64 = msg.body_as()?;
            let mut st = lock(shared);
            let ok = st
                .mtu
                .is_some_and(|m| v.value >= u64::from(MIN_MTU) && v.value <= u64::from(m));
            if ok {
                st.frontend_mtu = Some(v.value as u16);
            } else {
                tracing::warn!(mtu = v.value, "refused NET_SET_MTU");
            }
            Outcome::Ack(ok)
        }
        Some(FrontendReq::GET_QUEUE_NUM) => {
            Outcome::Reply(VhostUserU64::new(QUEUE_PAIRS).as_slice().to_vec())
        }
        Some(FrontendReq::GET_MAX_MEM_SLOTS) => {
            Outcome::Reply(VhostUserU64::new(MAX_MEM_SLOTS).as_slice().to_vec())
        }
        Some(FrontendReq::SET_OWNER) => Outcome::Ack(true),
        Some(FrontendReq::RESET_OWNER) | Some(FrontendReq::RESET_DEVICE) => {
            let old = lock(shared).reset(true);
            drop(old);
            Outcome::Ack(true)
        }
        Some(FrontendReq::SET_MEM_TABLE) => {
            let m: VhostUserMemory = msg.body_as()?;
            let n = m.num_regions as usize;
            if n == 0 || n > MAX_FDS || msg.files.len() != n {
                return Err(ProtocolError::Malformed(format!(
                    "SET_MEM_TABLE with {n} regions and {} fds",
                    msg.files.len()
                )));
            }
            let mut regions = Vec::with_capacity(n);
            let files = std::mem::take(&mut msg.files);
            for (i, file) in files.into_iter().enumerate() {
                let r: VhostUserMemoryRegion = msg.body_at(
                    std::mem::size_of::<VhostUserMemory>()
                        + i * std::mem::size_of::<VhostUserMemoryRegion>(),
                )?;
                regions.push(map_region(&r, file)?);
            }
            let mut st = lock(shared);
            let old_regions = std::mem::replace(&mut st.regions, regions);
            let res = st.rebuild_memory();
            drop(st);
            drop(old_regions);
            match res {
                Ok(old) => {
                    drop(old);
                    Outcome::Ack(true)
                }
                Err(e) => return Err(ProtocolError::Malformed(e)),
            }
        }
        Some(FrontendReq::ADD_MEM_REG) => {
            let r: VhostUserSingleMemoryRegion = msg.body_as()?;
            let Some(file) = msg.files.pop() else {
                return Err(ProtocolError::Malformed("ADD_MEM_REG without fd".into()));
            };
            let region = map_region(&r, file)?;
            let mut st = lock(shared);
            st.regions.push(region);
            match st.rebuild_memory() {
                Ok(old) => {
                    drop(st);
                    drop(old);
                    Outcome::Ack(true)
                }
                Err(e) => {
                    st.regions.pop();
                    let _ = st.rebuild_memory();
                    tracing::warn!("ADD_MEM_REG: {e}");
                    Outcome::Ack(false)
                }
            }
        }
        Some(FrontendReq::REM_MEM_REG) => {
            let r: VhostUserSingleMemoryRegion = msg.body_as()?;
            let mut st = lock(shared);
            let before = st.regions.len();
            let mut removed = Vec::new();
            let mut i = 0;
            while i < st.regions.len() {
                let x = &st.regions[i];
                if x.gpa == r.guest_phys_addr && x.size == r.memory_size && x.uaddr == r.user_addr {
                    removed.push(st.regions.remove(i));
                } else {
                    i += 1;
                }
            }
            let ok = st.regions.len() < before;
            let old = st.rebuild_memory();
            drop(st);
            drop(old);
            drop(removed);
            Outcome::Ack(ok)
        }
        Some(FrontendReq::SET_VRING_NUM) => {
            let s: VhostUserVringState = msg.body_as()?;
            let i = ring_index(u64::from(s.index))?;
            let ok = s.num <= u32::from(MAX_QUEUE_SIZE)
                && lock(shared).vrings[i]
                    .queue
                    .try_set_size(s.num as u16)
                    .is_ok();
            if !ok {
                let size = s.num;
                tracing::warn!(ring = i, size, "refused vring size");
            }
            Outcome::Ack(ok)
        }
        Some(FrontendReq::SET_VRING_ADDR) => {
            let a: VhostUserVringAddr = msg.body_as()?;
            let i = ring_index(u64::from(a.index))?;
            let mut st = lock(shared);
            st.vrings[i].addrs = Some(VringAddrs {
                desc: a.descriptor,
                avail: a.available,
                used: a.used,
            });
            if st.vrings[i].started {
                st.place_ring(i);
            }
            Outcome::Ack(true)
        }
        Some(FrontendReq::SET_VRING_BASE) => {
            let s: VhostUserVringState = msg.body_as()?;
            let i = ring_index(u64::from(s.index))?;
            let mut st = lock(shared);
            let q = &mut st.vrings[i].queue;
            q.set_next_avail(s.num as u16);
            q.set_next_used(s.num as u16);
            Outcome::Ack(true)
        }
        Some(FrontendReq::GET_VRING_BASE) => {
            let s: VhostUserVringState = msg.body_as()?;
            let i = ring_index(u64::from(s.index))?;
            let base = lock(shared).stop_ring(i);
            Outcome::Reply(
                VhostUserVringState::new(s.index, u32::from(base))
                    .as_slice()
                    .to_vec(),
            )
        }
        Some(FrontendReq::SET_VRING_KICK) => {
            let v: VhostUserU64 = msg.body_as()?;
            let i = ring_index(v.value & VRING_IDX_MASK)?;
            let fd = if v.value & VRING_NOFD_MASK == 0 {
                msg.files.pop()
            } else {
                None
            };
            let mut st = lock(shared);
            st.vrings[i].kick = fd;
            st.vrings[i].started = true;
            let event_idx = st.features & crate::device::VIRTIO_RING_F_EVENT_IDX != 0;
            st.vrings[i].queue.set_event_idx(event_idx);
            let ready = st.place_ring(i);
            if ready {
                // The brick polls both queues: ask the driver not to kick (with EVENT_IDX
                // `avail_event` is left alone and it kicks at most once per index wrap).
                let DeviceState { mem, vrings, .. } = &mut *st;
                if let Some(m) = mem.as_ref() {
                    let _ = vrings[i].queue.disable_notification(m);
                }
            }
            tracing::debug!(ring = i, ready, "vring started");
            Outcome::Ack(true)
        }
        Some(FrontendReq::SET_VRING_CALL) => {
            let v: VhostUserU64 = msg.body_as()?;
            let i = ring_index(v.value & VRING_IDX_MASK)?;
            let fd = if v.value & VRING_NOFD_MASK == 0 {
                msg.files.pop()
            } else {
                None
            };
            lock(shared).vrings[i].call = fd;
            Outcome::Ack(true)
        }
        Some(FrontendReq::SET_VRING_ERR) => {
            let v: VhostUserU64 = msg.body_as()?;
            let i = ring_index(v.value & VRING_IDX_MASK)?;
            let fd = if v.value & VRING_NOFD_MASK == 0 {
                msg.files.pop()
            } else {
                None
            };
            lock(shared).vrings[i].err = fd;
            Outcome::Ack(true)
        }
        Some(FrontendReq::SET_VRING_ENABLE) => {
            // Accepted before SET_FEATURES (QEMU 10 order); takes effect when started.
            let s: VhostUserVringState = msg.body_as()?;
            let i = ring_index(u64::from(s.index))?;
            lock(shared).vrings[i].enabled = s.num != 0;
            Outcome::Ack(true)
        }
        _ => {
            tracing::warn!(code = msg.request, "unsupported vhost-user request");
            Outcome::Ack(false)
        }
    };
    let reply_ack =
        lock(shared).protocol_features & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
    Ok(match outcome {
        Outcome::Reply(p) => Some(p),
        Outcome::Ack(ok) if reply_ack && msg.need_reply() => {
            Some(VhostUserU64::new(u64::from(!ok)).as_slice().to_vec())
        }
        Outcome::Ack(_) => None,
    })
}

/// Maps a region the frontend shares (its fd, at `mmap_offset`).
fn map_region(r: &VhostUserMemoryRegion, file: File) -> Result<MemRegion, ProtocolError> {
    let (gpa, size, uaddr, off) = (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
    if size == 0 || gpa.checked_add(size).is_none() || uaddr.checked_add(size).is_none() {
        return Err(ProtocolError::Malformed(format!(
            "memory region {gpa:#x}+{size:#x}"
        )));
    }
    let mapping = MmapRegion::from_file(FileOffset::new(file, off), size as usize)
        .map_err(|e| ProtocolError::Malformed(format!("mmap of region {gpa:#x}+{size:#x}: {e}")))?;
    let region = GuestRegionMmap::new(mapping, GuestAddress(gpa))
        .ok_or_else(|| ProtocolError::Malformed(format!("memory region {gpa:#x}+{size:#x}")))?;
    tracing::debug!(gpa, size, uaddr, "mapped guest memory region");
    Ok(MemRegion {
        gpa,
        size,
        uaddr,
        mapping: Arc::new(region),
    })
}

/// Where the vhost-user socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Butterfly listens on this path; the frontend (QEMU `-chardev socket,path=...`)
    /// connects. A stale socket file is replaced.
    Server(PathBuf),
    /// Butterfly connects to a frontend listening on this path (QEMU `server=on`),
    /// retrying every 100 ms until it is there and after each disconnection.
    Client(PathBuf),
}

impl Endpoint {
    /// The socket path.
    pub fn path(&self) -> &Path {
        match self {
            Endpoint::Server(p) | Endpoint::Client(p) => p,
        }
    }
}

/// The thread that serves the vhost-user socket of one device.
#[derive(Debug)]
pub struct ControlThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    server: bool,
}

/// How often the control thread checks its stop flag, in milliseconds.
const POLL_MS: u16 = 100;

impl ControlThread {
    /// Binds (server) or starts connecting (client) and serves the socket on a new thread.
    ///
    /// # Errors
    /// [`ProtocolError::Io`] when the server socket cannot be bound.
    pub fn spawn(
        endpoint: Endpoint,
        shared: Arc<Mutex<DeviceState>>,
    ) -> Result<ControlThread, ProtocolError> {
        let stop = Arc::new(AtomicBool::new(false));
        let path = endpoint.path().to_path_buf();
        let listener = match &endpoint {
            Endpoint::Server(p) => {
                // Replace a stale socket left by a previous run, never another kind of file.
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = std::fs::remove_file(p);
                }
                let l = UnixListener::bind(p).map_err(|source| ProtocolError::Io {
                    path: p.clone(),
                    source,
                })?;
                Some(l)
            }
            Endpoint::Client(_) => None,
        };
        let stop2 = stop.clone();
        let ep = endpoint.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-user-ctl".into())
            .spawn(move || serve(ep, listener, shared, stop2))
            .map_err(|source| ProtocolError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(ControlThread {
            stop,
            thread: Some(thread),
            server: matches!(endpoint, Endpoint::Server(_)),
            path,
        })
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.server {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn readable(fd: impl AsFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(POLL_MS)), Ok(n) if n > 0)
}

fn serve(
    ep: Endpoint,
    listener: Option<UnixListener>,
    shared: Arc<Mutex<DeviceState>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Acquire) {
        let sock = match (&ep, &listener) {
            (Endpoint::Server(_), Some(l)) => {
                if !readable(l) {
                    continue;
                }
                match l.accept() {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("vhost-user accept: {e}");
                        continue;
                    }
                }
            }
            (_, _) => match UnixStream::connect(ep.path()) {
                Ok(s) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(u64::from(POLL_MS)));
                    continue;
                }
            },
        };
        {
            let mut st = lock(&shared);
            st.connected = true;
            st.connections += 1;
        }
        tracing::info!(path = %ep.path().display(), "vhost-user frontend connected");
        let why = serve_connection(&sock, &shared, &stop);
        tracing::info!(path = %ep.path().display(), "vhost-user connection ended: {why}");
        let old = {
            let mut st = lock(&shared);
            st.connected = false;
            st.reset(false)
        };
        drop(old);
    }
}

fn serve_connection(
    sock: &UnixStream,
    shared: &Mutex<DeviceState>,
    stop: &AtomicBool,
) -> ProtocolError {
    while !stop.load(Ordering::Acquire) {
        if !readable(sock) {
            continue;
        }
        let msg = match recv_message(sock) {
            Ok(m) => m,
            Err(e) => return e,
        };
        let request = msg.request;
        match handle(shared, msg) {
            Ok(Some(reply)) => {
                if let Err(e) = send_reply(sock, request, &reply) {
                    return e;
                }
            }
            Ok(None) => {}
            Err(e) => return e,
        }
    }
    ProtocolError::Disconnected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{
        OFFERED_FEATURES, RX_QUEUE, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    };
    use std::io::IoSlice;
    use virtio_queue::QueueT;

    const REPLY_ACK: u64 = 0x8;

    fn msg(req: FrontendReq, flags: u32, body: &[u8], files: Vec<File>) -> Message {
        Message {
            request: req as u32,
            flags: FLAG_VERSION_1 | flags,
            body: body.to_vec(),
            files,
        }
    }

    fn u64_body(v: u64) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    fn state_body(index: u32, num: u32) -> Vec<u8> {
        VhostUserVringState::new(index, num).as_slice().to_vec()
    }

    /// A 1 MiB file standing in for the frontend's shared guest memory.
    fn shared_file(tag: &str) -> File {
        let p = std::env::temp_dir().join(format!("bf-vhost-proto-{tag}-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(1 << 20).unwrap();
        let _ = std::fs::remove_file(&p);
        f
    }

    /// QEMU 10 sends SET_VRING_ENABLE before the first SET_FEATURES (with NEED_REPLY once
    /// REPLY_ACK is negotiated): it must be accepted (ack 0), and take effect later.
    #[test]
    fn qemu10_order_enable_before_set_features_is_accepted() {
        let shared = Mutex::new(DeviceState::default());
        let r = handle(&shared, msg(FrontendReq::GET_FEATURES, 0, &[], vec![])).unwrap();
        assert_eq!(r, Some(u64_body(OFFERED_FEATURES)));
        let r = handle(
            &shared,
            msg(FrontendReq::GET_PROTOCOL_FEATURES, 0, &[], vec![]),
        )
        .unwrap();
        assert_eq!(r, Some(u64_body(offered_protocol_features())));
        let r = handle(
            &shared,
            msg(
                FrontendReq::SET_PROTOCOL_FEATURES,
                0,
                &u64_body(REPLY_ACK | 0x1),
                vec![],
            ),
        )
        .unwrap();
        assert_eq!(r, None, "no NEED_REPLY: no reply");
        for i in 0..2 {
            let r = handle(
                &shared,
                msg(
                    FrontendReq::SET_VRING_ENABLE,
                    FLAG_NEED_REPLY,
                    &state_body(i, 1),
                    vec![],
                ),
            )
            .unwrap();
            assert_eq!(
                r,
                Some(u64_body(0)),
                "SET_VRING_ENABLE before SET_FEATURES acked"
            );
        }
        let feats = VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MRG_RXBUF
            | crate::device::VHOST_USER_F_PROTOCOL_FEATURES;
        let r = handle(
            &shared,
            msg(
                FrontendReq::SET_FEATURES,
                FLAG_NEED_REPLY,
                &u64_body(feats),
                vec![],
            ),
        )
        .unwrap();
        assert_eq!(r, Some(u64_body(0)));
        let st = shared.lock().unwrap();
        assert!(st.vrings[0].enabled && st.vrings[1].enabled);
        assert_eq!(st.net.hdr_len, 12);
        assert!(st.net.mrg_rxbuf);
        let r = handle(
            &Mutex::new(DeviceState::default()),
            msg(FrontendReq::GET_QUEUE_NUM, 0, &[], vec![]),
        );
        assert_eq!(r.unwrap(), Some(u64_body(QUEUE_PAIRS)));
    }

    fn get_config_body(offset: u32, size: u32) -> Vec<u8> {
        let mut b = VhostUserConfig::new(offset, size, VhostUserConfigFlags::empty())
            .as_slice()
            .to_vec();
        b.extend(std::iter::repeat_n(0u8, size as usize));
        b
    }

    /// With an MTU set: VIRTIO_NET_F_MTU offered, GET_CONFIG answers the config space with
    /// `mtu` at offset 10 (VIRTIO 1.2 §5.1.4), NET_SET_MTU accepted up to it. Without: none
    /// of it is offered.
    #[test]
    fn mtu_is_offered_and_served_in_config_space() {
        let mut st = DeviceState::default();
        assert_eq!(st.set_mtu(Some(67)), Err(crate::device::MtuError(67)));
        assert_eq!(st.mtu, None);
        assert_eq!(st.offered_features() & VIRTIO_NET_F_MTU, 0);
        st.set_mtu(Some(1450)).unwrap();
        let shared = Mutex::new(st);
        let r = handle(&shared, msg(FrontendReq::GET_FEATURES, 0, &[], vec![])).unwrap();
        assert_eq!(r, Some(u64_body(OFFERED_FEATURES | VIRTIO_NET_F_MTU)));
        let r = handle(
            &shared,
            msg(FrontendReq::GET_PROTOCOL_FEATURES, 0, &[], vec![]),
        )
        .unwrap()
        .unwrap();
        let pf = u64::from_le_bytes(r[..8].try_into().unwrap());
        let want = (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MTU).bits();
        assert_eq!(pf & want, want);
        handle(
            &shared,
            msg(
                FrontendReq::SET_PROTOCOL_FEATURES,
                0,
                &u64_body(pf | REPLY_ACK),
                vec![],
            ),
        )
        .unwrap();
        handle(
            &shared,
            msg(
                FrontendReq::SET_FEATURES,
                0,
                &u64_body(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MTU),
                vec![],
            ),
        )
        .unwrap();
        assert_ne!(shared.lock().unwrap().features & VIRTIO_NET_F_MTU, 0);
        // Whole config space as QEMU asks for it.
        let r = handle(
            &shared,
            msg(FrontendReq::GET_CONFIG, 0, &get_config_body(0, 12), vec![]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.len(), 12 + 12);
        assert_eq!(
            &r[..8],
            &get_config_body(0, 12)[..8],
            "offset and size echoed"
        );
        assert_eq!(&r[12..18], &[0; 6], "mac");
        assert_eq!(u16::from_le_bytes([r[20], r[21]]), 1, "max_virtqueue_pairs");
        assert_eq!(u16::from_le_bytes([r[22], r[23]]), 1450, "mtu");
        // Just the mtu field.
        let r = handle(
            &shared,
            msg(FrontendReq::GET_CONFIG, 0, &get_config_body(10, 2), vec![]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(&r[12..], &1450u16.to_le_bytes());
        // NET_SET_MTU: above the advertised MTU refused, at or below accepted.
        let r = handle(
            &shared,
            msg(
                FrontendReq::NET_SET_MTU,
                FLAG_NEED_REPLY,
                &u64_body(9000),
                vec![],
            ),
        )
        .unwrap();
        assert_eq!(r, Some(u64_body(1)));
        let r = handle(
            &shared,
            msg(
                FrontendReq::NET_SET_MTU,
                FLAG_NEED_REPLY,
                &u64_body(1400),
                vec![],
            ),
        )
        .unwrap();
        assert_eq!(r, Some(u64_body(0)));
        assert_eq!(shared.lock().unwrap().frontend_mtu, Some(1400));
        // The MTU is configuration: a disconnect (reset) keeps it.
        shared.lock().unwrap().reset(false);
        assert_eq!(shared.lock().unwrap().mtu, Some(1450));
        assert_eq!(shared.lock().unwrap().frontend_mtu, None);
        // No MTU: neither the feature nor the protocol features.
        let plain = Mutex::new(DeviceState::default());
        let r = handle(
            &plain,
            msg(FrontendReq::GET_PROTOCOL_FEATURES, 0, &[], vec![]),
        )
        .unwrap();
        assert_eq!(r, Some(u64_body(offered_protocol_features())));
        assert_eq!(
            plain.lock().unwrap().offered_features() & VIRTIO_NET_F_MTU,
            0
        );
    }

    /// Memory table, ring setup with frontend virtual addresses, start, stop.
    #[test]
    fn ring_setup_translates_addresses_and_get_vring_base_stops() {
        let shared = Mutex::new(DeviceState::default());
        handle(
            &shared,
            msg(
                FrontendReq::SET_FEATURES,
                0,
                &u64_body(VIRTIO_F_VERSION_1 | crate::device::VHOST_USER_F_PROTOCOL_FEATURES),
                vec![],
            ),
        )
        .unwrap();
        // One region: GPA 0x10_0000, frontend VA 0x7f00_0000_0000, 1 MiB.
        let uaddr = 0x7f00_0000_0000u64;
        let mut body = VhostUserMemory::new(1).as_slice().to_vec();
        body.extend_from_slice(VhostUserMemoryRegion::new(0x10_0000, 1 << 20, uaddr, 0).as_slice());
        let r = handle(
            &shared,
            msg(
                FrontendReq::SET_MEM_TABLE,
                0,
                &body,
                vec![shared_file("mt")],
            ),
        )
        .unwrap();
        assert_eq!(r, None);
        handle(
            &shared,
            msg(FrontendReq::SET_VRING_NUM, 0, &state_body(0, 256), vec![]),
        )
        .unwrap();
        handle(
            &shared,
            msg(FrontendReq::SET_VRING_BASE, 0, &state_body(0, 7), vec![]),
        )
        .unwrap();
        let a = VhostUserVringAddr {
            index: 0,
            descriptor: uaddr,
            available: uaddr + 0x1000,
            used: uaddr + 0x2000,
            ..Default::default()
        };
        handle(
            &shared,
            msg(FrontendReq::SET_VRING_ADDR, 0, a.as_slice(), vec![]),
        )
        .unwrap();
        // Kick without fd (polling), then enable.
        handle(
            &shared,
            msg(
                FrontendReq::SET_VRING_KICK,
                0,
                &u64_body(VRING_NOFD_MASK),
                vec![],
            ),
        )
        .unwrap();
        assert!(
            !shared.lock().unwrap().ring_ready(RX_QUEUE),
            "not enabled yet"
        );
        handle(
            &shared,
            msg(FrontendReq::SET_VRING_ENABLE, 0, &state_body(0, 1), vec![]),
        )
        .unwrap();
        {
            let st = shared.lock().unwrap();
            assert!(st.ring_ready(RX_QUEUE));
            let q = &st.vrings[0].queue;
            assert_eq!(q.desc_table(), 0x10_0000);
            assert_eq!(q.avail_ring(), 0x10_1000);
            assert_eq!(q.used_ring(), 0x10_2000);
            assert_eq!(q.size(), 256);
        }
        let r = handle(
            &shared,
            msg(FrontendReq::GET_VRING_BASE, 0, &state_body(0, 0), vec![]),
        )
        .unwrap();
        assert_eq!(r, Some(state_body(0, 7)));
        assert!(!shared.lock().unwrap().ring_ready(RX_QUEUE), "stopped");
        // REM_MEM_REG of the region unmaps the memory; ADD_MEM_REG maps one again.
        let single = VhostUserSingleMemoryRegion::new(0x10_0000, 1 << 20, uaddr, 0);
        handle(
            &shared,
            msg(FrontendReq::REM_MEM_REG, 0, single.as_slice(), vec![]),
        )
        .unwrap();
        assert!(shared.lock().unwrap().mem.is_none());
        handle(
            &shared,
            msg(
                FrontendReq::ADD_MEM_REG,
                0,
                single.as_slice(),
                vec![shared_file("add")],
            ),
        )
        .unwrap();
        assert!(shared.lock().unwrap().mem.is_some());
        // Reset: back to a fresh device, memory kept.
        handle(&shared, msg(FrontendReq::RESET_DEVICE, 0, &[], vec![])).unwrap();
        let st = shared.lock().unwrap();
        assert_eq!(st.features, 0);
        assert!(!st.vrings[0].started);
    }

    #[test]
    fn malformed_requests_are_errors_or_nacks() {
        let shared = Mutex::new(DeviceState::default());
        handle(
            &shared,
            msg(
                FrontendReq::SET_PROTOCOL_FEATURES,
                0,
                &u64_body(REPLY_ACK),
                vec![],
            ),
        )
        .unwrap();
        // Payload too short.
        assert!(matches!(
            handle(&shared, msg(FrontendReq::SET_FEATURES, 0, &[1, 2], vec![])),
            Err(ProtocolError::Malformed(_))
        ));
        // Ring index outside the queue pair.
        assert!(
            handle(
                &shared,
                msg(FrontendReq::SET_VRING_NUM, 0, &state_body(5, 256), vec![])
            )
            .is_err()
        );
        // Queue size not a power of two: nack.
        let r = handle(
            &shared,
            msg(
                FrontendReq::SET_VRING_NUM,
                FLAG_NEED_REPLY,
                &state_body(0, 100),
                vec![],
            ),
        )
        .unwrap();
        assert_eq!(r, Some(u64_body(1)));
        // Memory table without its fd.
        let mut body = VhostUserMemory::new(1).as_slice().to_vec();
        body.extend_from_slice(VhostUserMemoryRegion::new(0, 4096, 0, 0).as_slice());
        assert!(handle(&shared, msg(FrontendReq::SET_MEM_TABLE, 0, &body, vec![])).is_err());
        // Unsupported request with NEED_REPLY: nack.
        let r = handle(
            &shared,
            msg(
                FrontendReq::SET_LOG_BASE,
                FLAG_NEED_REPLY,
                &u64_body(0),
                vec![],
            ),
        )
        .unwrap();
        assert_eq!(r, Some(u64_body(1)));
    }

    /// Framing over a real socket pair, with a file descriptor attached.
    #[test]
    fn recv_message_and_send_reply_over_a_socket() {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let (front, back) = UnixStream::pair().unwrap();
        let f = shared_file("fd");
        let mut wire = Vec::new();
        wire.extend_from_slice(&(FrontendReq::SET_VRING_CALL as u32).to_ne_bytes());
        wire.extend_from_slice(&FLAG_VERSION_1.to_ne_bytes());
        wire.extend_from_slice(&8u32.to_ne_bytes());
        wire.extend_from_slice(&1u64.to_ne_bytes());
        let fds = [f.as_raw_fd()];
        sendmsg::<()>(
            front.as_raw_fd(),
            &[IoSlice::new(&wire)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let m = recv_message(&back).unwrap();
        assert_eq!(m.request, FrontendReq::SET_VRING_CALL as u32);
        assert_eq!(m.body, 1u64.to_ne_bytes());
        assert_eq!(m.files.len(), 1);
        send_reply(&back, FrontendReq::GET_FEATURES as u32, &u64_body(5)).unwrap();
        let mut r = [0u8; 20];
        (&front).read_exact(&mut r).unwrap();
        assert_eq!(&r[0..4], &(FrontendReq::GET_FEATURES as u32).to_ne_bytes());
        assert_eq!(&r[4..8], &(FLAG_VERSION_1 | FLAG_REPLY).to_ne_bytes());
        assert_eq!(&r[8..12], &8u32.to_ne_bytes());
        assert_eq!(&r[12..20], &5u64.to_ne_bytes());
        drop(front);
        assert!(matches!(
            recv_message(&back),
            Err(ProtocolError::Disconnected)
        ));
    }

    fn get_features(s: &UnixStream) -> u64 {
        let mut w = Vec::new();
        w.extend_from_slice(&(FrontendReq::GET_FEATURES as u32).to_ne_bytes());
        w.extend_from_slice(&FLAG_VERSION_1.to_ne_bytes());
        w.extend_from_slice(&0u32.to_ne_bytes());
        (&*s).write_all(&w).unwrap();
        let mut r = [0u8; 20];
        (&*s).read_exact(&mut r).unwrap();
        u64::from_ne_bytes(r[12..20].try_into().unwrap())
    }

    fn wait_connected(shared: &Mutex<DeviceState>, want: bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lock(shared).connected != want {
            assert!(std::time::Instant::now() < deadline, "connected != {want}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The control thread as a server: answers, notices the disconnection, takes the next
    /// frontend, and removes its socket when dropped.
    #[test]
    fn control_thread_server_serves_successive_frontends() {
        let path = std::env::temp_dir().join(format!("bf-vhost-srv-{}.sock", std::process::id()));
        let shared = Arc::new(Mutex::new(DeviceState::default()));
        let ctl = ControlThread::spawn(Endpoint::Server(path.clone()), shared.clone()).unwrap();
        for round in 1..=2u64 {
            let s = UnixStream::connect(&path).unwrap();
            assert_eq!(get_features(&s), OFFERED_FEATURES);
            wait_connected(&shared, true);
            assert_eq!(lock(&shared).connections, round);
            drop(s);
            wait_connected(&shared, false);
        }
        drop(ctl);
        assert!(!path.exists(), "socket file left behind");
    }

    /// The control thread as a client: connects once the frontend listens, and again after
    /// the frontend closed the connection.
    #[test]
    fn control_thread_client_connects_and_reconnects() {
        let path = std::env::temp_dir().join(format!("bf-vhost-cli-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let shared = Arc::new(Mutex::new(DeviceState::default()));
        let ctl = ControlThread::spawn(Endpoint::Client(path.clone()), shared.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let l = UnixListener::bind(&path).unwrap();
        for round in 1..=2u64 {
            let (s, _) = l.accept().unwrap();
            assert_eq!(get_features(&s), OFFERED_FEATURES);
            assert_eq!(lock(&shared).connections, round);
            // Closing makes the backend reconnect at once (the listener is still there).
            drop(s);
        }
        drop(ctl);
        let _ = std::fs::remove_file(&path);
    }
}
