//! `tap`: a kernel TAP device as a pollable monopole.
//!
//! The brick opens `/dev/net/tun` and attaches a TAP interface with `IFF_TAP | IFF_NO_PI`
//! (Linux `Documentation/networking/tuntap.rst`): every `read` returns one Ethernet frame
//! the kernel sent out of the interface, every `write` hands one frame to the kernel as
//! if it had been received on the interface. The descriptor is non-blocking: a poll reads
//! until the device has nothing left (`EAGAIN`) or a burst of 64 frames is full.
//!
//! The device lives in the network namespace of the thread that called [`Tap::new`] and
//! disappears when the brick is dropped. The brick does not set the interface up or
//! give it an address: that is the administrator's (or the test's) job, with `ip link`.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::{BURST_SIZE, Burst};
use crate::error::BrickError;
use crate::packet::{Packet, Pool};

/// Path of the TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`), in bytes.
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

mod ioctl {
    nix::ioctl_write_ptr_bad!(
        /// `TUNSETIFF`: attaches the descriptor to the TUN/TAP interface in the `ifreq`.
        tun_set_iff,
        libc::TUNSETIFF,
        libc::ifreq
    );
}
use ioctl::tun_set_iff;

/// Errors when creating a [`Tap`].
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` does not exist (the `tun` module is not loaded, or a container
    /// without the device node).
    #[error("{TUN_DEVICE} not found: load the tun module (modprobe tun) or create the device node")]
    NoTunDevice,
    /// The caller lacks CAP_NET_ADMIN (opening `/dev/net/tun` or TUNSETIFF gave EPERM/EACCES).
    #[error("creating TAP device '{name}' is not permitted: needs CAP_NET_ADMIN (run as root)")]
    PermissionDenied {
        /// Requested interface name (empty: kernel-chosen).
        name: String,
    },
    /// The interface name is longer than [`IFNAME_MAX`] bytes.
    #[error("TAP name '{name}' is {len} bytes long, at most {IFNAME_MAX} allowed")]
    NameTooLong {
        /// The rejected name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The interface name contains a byte the kernel rejects (NUL, '/', ':' or whitespace).
    #[error("TAP name '{0}' contains a forbidden character (NUL, '/', ':' or whitespace)")]
    BadName(String),
    /// An interface of that name exists and is not a TAP device this process may attach to.
    #[error("TAP device '{name}' cannot be attached: {source}")]
    Busy {
        /// Requested name.
        name: String,
        /// The OS error (EBUSY, EINVAL for a name used by another kind of interface).
        #[source]
        source: io::Error,
    },
    /// Another OS error while opening or configuring the device.
    #[error("{op}: {source}")]
    Io {
        /// What failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<TapError> for BrickError {
    fn from(e: TapError) -> BrickError {
        match e {
            TapError::Io { op, source } => BrickError::io(op, source),
            TapError::Busy { name, source } => {
                BrickError::io(format!("attach TAP device '{name}'"), source)
            }
            other => BrickError::Config(other.to_string()),
        }
    }
}

/// Counters of a [`Tap`] brick.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TapCounters {
    /// Frames read from the device (the kernel sent them out of the interface).
    pub rx_packets: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames written to the device (the kernel received them on the interface).
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Polls cut short because the pool had no free frame (the frames wait in the
    /// kernel's queue for the next poll).
    pub rx_no_buffer: u64,
    /// Frames from the graph that the device did not take (EAGAIN, interface down: EIO).
    pub tx_drops: u64,
    /// Read errors other than EAGAIN.
    pub rx_errors: u64,
    /// Write errors other than EAGAIN/EIO, and short writes.
    pub tx_errors: u64,
}

/// A TAP device brick: frames the kernel sends out of the interface enter the graph,
/// bursts from the graph are written to the kernel.
pub struct Tap {
    file: File,
    name: String,
    pool: Pool,
    /// A frame kept between polls so that an empty poll takes no pool lock.
    spare: Option<Packet>,
    counters: TapCounters,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("name", &self.name)
            .field("fd", &self.file.as_raw_fd())
            .field("counters", &self.counters)
            .finish()
    }
}

fn check_name(name: &str) -> Result<(), TapError> {
    if name.len() > IFNAME_MAX {
        return Err(TapError::NameTooLong {
            name: name.into(),
            len: name.len(),
        });
    }
    if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
        || name == "."
        || name == ".."
    {
        return Err(TapError::BadName(name.into()));
    }
    Ok(())
}

impl Tap {
    /// Creates (or attaches to a persistent) TAP device named `name` in the calling
    /// thread's network namespace; an empty `name` lets the kernel choose (`tap0`, ...).
    /// Frames read are stored in packets of `pool`; frames longer than
    /// [`Pool::max_data`] (1792 bytes with the default pool) are cut by the kernel, so
    /// keep the interface MTU at or below `max_data - 14`.
    ///
    /// # Errors
    /// [`TapError::NameTooLong`] / [`TapError::BadName`] for an invalid name,
    /// [`TapError::NoTunDevice`] without `/dev/net/tun`, [`TapError::PermissionDenied`]
    /// without CAP_NET_ADMIN, [`TapError::Busy`] when the name is taken by another
    /// interface, [`TapError::Io`] otherwise.
    pub fn new(name: &str, pool: Pool) -> Result<Tap, TapError> {
        Tap::create(Path::new(TUN_DEVICE), name, pool)
    }

    /// [`Tap::new`] with another clone device path (tests use a missing one).
    fn create(device: &Path, name: &str, pool: Pool) -> Result<Tap, TapError> {
        check_name(name)?;
        let denied = || TapError::PermissionDenied { name: name.into() };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(device)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    TapError::NoTunDevice
                }
                Some(libc::EPERM) | Some(libc::EACCES) => denied(),
                _ => TapError::Io {
                    op: "open /dev/net/tun",
                    source: e,
                },
            })?;

        // SAFETY: ifreq is a plain C struct (arrays, integers, a union of them) for which
        // all-zero bytes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: the descriptor is an open /dev/net/tun; `req` is a valid ifreq with a
        // NUL-terminated name (at most IFNAMSIZ-1 bytes were copied into a zeroed array),
        // which the kernel reads and updates with the final name.
        unsafe { tun_set_iff(file.as_raw_fd(), &req) }.map_err(|errno| {
            let source = io::Error::from(errno);
            match errno {
                nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => denied(),
                nix::errno::Errno::EBUSY | nix::errno::Errno::EINVAL => TapError::Busy {
                    name: name.into(),
                    source,
                },
                _ => TapError::Io {
                    op: "TUNSETIFF",
                    source,
                },
            }
        })?;
        // SAFETY: the kernel wrote a NUL-terminated name of at most IFNAMSIZ-1 bytes into
        // the zero-initialised array; c_char and u8 have the same size and alignment.
        let raw = unsafe {
            std::slice::from_raw_parts(req.ifr_name.as_ptr().cast::<u8>(), req.ifr_name.len())
        };
        let name = CStr::from_bytes_until_nul(raw)
            .map_err(|_| TapError::Io {
                op: "TUNSETIFF returned a name without NUL",
                source: io::Error::from(io::ErrorKind::InvalidData),
            })?
            .to_string_lossy()
            .into_owned();
        tracing::debug!(tap = %name, "TAP device attached");
        Ok(Tap {
            file,
            name,
            pool,
            spare: None,
            counters: TapCounters::default(),
        })
    }

    /// The interface name the kernel gave the device (the requested one, or `tapN`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The brick's counters.
    pub fn stats(&self) -> TapCounters {
        self.counters
    }

    fn take_buffer(&mut self) -> Option<Packet> {
        match self.spare.take() {
            Some(p) => Some(p),
            None => self.pool.alloc(),
        }
    }

    /// Reads one frame into a fresh packet. `Ok(None)` when the device is empty.
    fn read_one(&mut self, mut p: Packet) -> io::Result<Option<Packet>> {
        p.reset();
        let room = p.tailroom();
        let buf = p
            .append(room)
            .expect("a reset packet has its whole tailroom");
        let n = loop {
            // SAFETY: `buf` is a writable slice of `buf.len()` bytes owned by `p`; the
            // descriptor is open for the lifetime of `self.file`.
            let r = unsafe {
                libc::read(
                    self.file.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    p.truncate(0);
                    self.spare = Some(p);
                    return Ok(None);
                }
                _ => {
                    p.truncate(0);
                    self.spare = Some(p);
                    return Err(e);
                }
            }
        };
        p.truncate(n);
        Ok(Some(p))
    }

    fn write_one(&mut self, p: &Packet) {
        let data = p.data();
        loop {
            // SAFETY: `data` is a readable slice owned by `p`; the descriptor is open.
            let r = unsafe {
                libc::write(
                    self.file.as_raw_fd(),
                    data.as_ptr().cast::<libc::c_void>(),
                    data.len(),
                )
            };
            if r >= 0 {
                if r as usize == data.len() {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += data.len() as u64;
                } else {
                    self.counters.tx_errors += 1;
                }
                return;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EIO) => self.counters.tx_drops += 1,
                _ => {
                    self.counters.tx_errors += 1;
                    tracing::debug!(tap = %self.name, "write: {e}");
                }
            }
            return;
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Brick for Tap {
    fn kind(&self) -> &'static str {
        "tap"
    }

    fn poles(&self) -> Poles {
        Poles::Monopole
    }

    fn pollable(&self) -> bool {
        true
    }

    fn burst(
        &mut self,
        _from: Side,
        _edge: usize,
        pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        for p in pkts.iter() {
            self.write_one(p);
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut Emit) -> Result<usize, BrickError> {
        let mut b = Burst::new();
        let mut err = None;
        while b.len() < BURST_SIZE {
            let Some(p) = self.take_buffer() else {
                // The frames stay queued in the kernel until frames come back.
                self.counters.rx_no_buffer += 1;
                break;
            };
            match self.read_one(p) {
                Ok(Some(p)) => {
                    self.counters.rx_packets += 1;
                    self.counters.rx_bytes += p.len() as u64;
                    let _ = b.push(p);
                }
                Ok(None) => break,
                Err(e) => {
                    self.counters.rx_errors += 1;
                    err = Some(e);
                    break;
                }
            }
        }
        let n = b.len();
        if n > 0 {
            out.send_peer(b);
        }
        match err {
            Some(e) => Err(BrickError::io(format!("read from {}", self.name), e)),
            None => Ok(n),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("rx_no_buffer", c.rx_no_buffer),
            ("tx_drops", c.tx_drops),
            ("rx_errors", c.rx_errors),
            ("tx_errors", c.tx_errors),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolConfig;

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn rejects_bad_names_before_touching_the_kernel() {
        assert!(check_name("a-name-of-15-ch").is_ok());
        assert!(check_name("").is_ok(), "empty: the kernel chooses");
        match Tap::new("a-name-of-16-chr", pool()) {
            Err(TapError::NameTooLong { len: 16, .. }) => {}
            other => panic!("expected NameTooLong, got {other:?}"),
        }
        for bad in ["a/b", "a b", "a:b", ".."] {
            assert!(
                matches!(Tap::new(bad, pool()), Err(TapError::BadName(_))),
                "{bad}"
            );
        }
        let msg = TapError::NameTooLong {
            name: "x".repeat(16),
            len: 16,
        }
        .to_string();
        assert!(msg.contains("at most 15"), "{msg}");
    }

    #[test]
    fn a_missing_clone_device_is_reported_as_such() {
        match Tap::create(Path::new("/nonexistent/net/tun"), "t0", pool()) {
            Err(TapError::NoTunDevice) => {}
            other => panic!("expected NoTunDevice, got {other:?}"),
        }
    }

    /// Linux capabilities are per thread: a thread that drops CAP_NET_ADMIN from its
    /// effective set gets EPERM from TUNSETIFF, which must come out as PermissionDenied.
    #[test]
    fn without_cap_net_admin_creation_is_denied_clearly() {
        if !nix::unistd::geteuid().is_root() {
            panic!("needs root: run as root / via cargo xtask test");
        }
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Default, Clone, Copy)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        const CAP_NET_ADMIN: u32 = 12;
        let pool = pool();
        let r = std::thread::spawn(move || {
            let mut hdr = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            // SAFETY: capget with a v3 header and two data structs, as capget(2) says;
            // both are valid for writes for the duration of the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_capget,
                    &mut hdr as *mut CapHeader,
                    data.as_mut_ptr(),
                )
            };
            assert_eq!(rc, 0, "capget: {}", io::Error::last_os_error());
            data[0].effective &= !(1 << CAP_NET_ADMIN);
            // SAFETY: capset on the calling thread (pid 0) with the structs capget filled;
            // it only lowers this thread's effective set.
            let rc = unsafe {
                libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr())
            };
            assert_eq!(rc, 0, "capset: {}", io::Error::last_os_error());
            Tap::new("", pool).map(|t| t.name().to_string())
        })
        .join()
        .unwrap();
        match r {
            Err(e @ TapError::PermissionDenied { .. }) => {
                assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}")
            }
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
    }

    #[test]
    fn errors_convert_to_brick_errors_with_the_reason() {
        let e: BrickError = TapError::NoTunDevice.into();
        assert!(e.to_string().contains("/dev/net/tun"), "{e}");
        let e: BrickError = TapError::PermissionDenied { name: "t0".into() }.into();
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    }

    /// Needs root: creates a real TAP device (in the test's own network namespace when
    /// possible) and checks the empty-poll path; the traffic path is tested end to end
    /// in `tests/tests/engine_tap.rs`.
    #[test]
    fn empty_device_polls_nothing_and_never_emits_an_empty_burst() {
        if !nix::unistd::geteuid().is_root() {
            panic!("needs root: run as root / via cargo xtask test");
        }
        let pool = pool();
        let mut tap = Tap::new("", pool.clone()).expect("create TAP device");
        assert!(tap.name().starts_with("tap"), "{}", tap.name());
        let mut out = Emit::new();
        // The interface is down: nothing can be read.
        assert_eq!(tap.poll(&mut out).unwrap(), 0);
        assert!(out.pending().is_empty());
        assert_eq!(out.empty_bursts(), 0);
        // Writing to a down interface drops and counts, never fails.
        let mut b = Burst::new();
        b.push(pool.packet_from(&[0xff; 60]).unwrap()).unwrap();
        tap.burst(Side::West, 0, b, &mut out).unwrap();
        let c = tap.stats();
        assert_eq!(c.tx_packets + c.tx_drops, 1, "{c:?}");
        assert_eq!(out.empty_bursts(), 0);
        // Only the spare frame is out of the pool.
        assert_eq!(pool.available(), 255);
        drop(tap);
        assert_eq!(pool.available(), 256);
    }
}
