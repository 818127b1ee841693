//! # butterfly-ebpf
//!
//! Butterfly's XDP steering program and its typed loader (on `aya` 0.14).
//!
//! The program (`src/bpf/steer.c`, compiled by `build.rs` with clang) sends VXLAN
//! (RFC 7348 §5: UDP to the VXLAN port) addressed to one of our VTEP addresses, or to a
//! multicast group the VTEP joined, to the AF_XDP socket of the receiving RX queue
//! (`bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS)`), and passes everything else to
//! the kernel untouched. Its configuration lives in maps, so changing the VTEP addresses or
//! the port needs no reload.
//!
//! ```no_run
//! use butterfly_ebpf::{AttachMode, Steering, Variant};
//! let mut s = Steering::load(Variant::Linear)?;
//! s.set_vxlan_port(4789)?;
//! s.add_vtep_addr("192.0.2.1".parse().unwrap())?;
//! let mode = s.attach("eth0", AttachMode::Auto, false)?; // native, else generic
//! println!("attached in {mode:?} mode, {:?}", s.counters()?);
//! # Ok::<(), butterfly_ebpf::SteerError>(())
//! ```

mod netlink;

use std::ffi::CString;
use std::net::IpAddr;
use std::os::fd::RawFd;

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};

pub use netlink::{AttachedXdp, XdpAttachment, query_xdp};

/// 8-byte aligned storage for the embedded ELF object (the ELF parser needs aligned data).
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

const STEER_ALIGNED: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/steer.o")));

/// The compiled steering object (ELF, BPF target) with both program variants.
pub const STEER_OBJECT: &[u8] = &STEER_ALIGNED.0;

const LOADGEN_ALIGNED: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/loadgen.o")));

/// The compiled load generator object (one program, `butterfly_loadgen`, returns XDP_TX).
pub const LOADGEN_OBJECT: &[u8] = &LOADGEN_ALIGNED.0;

/// Name of the single-buffer program (ELF section `xdp`).
pub const PROG_LINEAR: &str = "butterfly_steer";
/// Name of the multi-buffer program (ELF section `xdp.frags`).
pub const PROG_FRAGS: &str = "butterfly_steer_frags";

/// Slots in the XSKMAP: RX queue indices 0 ..= 255 can be steered.
pub const MAX_QUEUES: u32 = 256;
/// Most VTEP addresses plus multicast groups per address family.
pub const MAX_VTEP_ADDRS: u32 = 256;
/// IANA VXLAN UDP port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;

/// XDP actions as returned by the program (`enum xdp_action`, linux/bpf.h).
pub mod action {
    /// The frame is dropped.
    pub const XDP_DROP: u32 = 1;
    /// The frame goes to the kernel stack.
    pub const XDP_PASS: u32 = 2;
    /// The frame is redirected (here: to an AF_XDP socket).
    pub const XDP_REDIRECT: u32 = 4;
}

/// Which program variant to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Section `xdp`: frames in one buffer (MTU up to 3506 on veth, ~3.5 KiB).
    Linear,
    /// Section `xdp.frags`: multi-buffer frames (jumbo MTUs); AF_XDP sockets must bind with
    /// `XDP_USE_SG`.
    Frags,
}

/// How to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only.
    Generic,
    /// Native, falling back to generic (with a warning in the log) if the driver refuses.
    Auto,
}

/// The mode an attached program runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver.
    Native,
    /// In the generic skb path (slower; works on every interface).
    Generic,
}

impl AttachedMode {
    /// `"native"` or `"generic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

/// Steering counters, summed over CPUs. Every frame the program saw is in exactly one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteerCounters {
    /// VXLAN for one of our addresses, redirected to an AF_XDP socket.
    pub steered: u64,
    /// Well-formed frames that are not ours, passed to the kernel.
    pub passed: u64,
    /// Frames with truncated or invalid headers, passed to the kernel (which drops them).
    pub malformed: u64,
    /// VXLAN for us on a queue without a registered socket, passed to the kernel.
    pub no_socket: u64,
}

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// Loading the object or the program into the kernel failed (verifier, permissions).
    #[error("cannot load the XDP program: {0} (needs root or CAP_BPF + CAP_NET_ADMIN)")]
    Load(String),
    /// The interface does not exist in this network namespace.
    #[error("no interface named '{0}' in this network namespace")]
    NoInterface(String),
    /// Another XDP program is attached and replacing it was not asked for.
    #[error(
        "interface '{ifname}' already runs XDP program id {prog_id} ({mode:?} mode); \
         detach it (`ip link set dev {ifname} xdp off`) or ask to replace it"
    )]
    AlreadyAttached {
        /// The interface.
        ifname: String,
        /// Kernel id of the program found there.
        prog_id: u32,
        /// Where it runs.
        mode: XdpAttachment,
    },
    /// Attaching failed; the text has the mode tried and the kernel's answer.
    #[error("cannot attach the XDP program to '{ifname}' in {mode} mode: {reason}")]
    Attach {
        /// The interface.
        ifname: String,
        /// `native` or `generic`.
        mode: &'static str,
        /// What the kernel said, with a hint for the known cases.
        reason: String,
    },
    /// A map operation failed.
    #[error("map {map}: {reason}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What failed.
        reason: String,
    },
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A netlink query failed.
    #[error("netlink: {0}")]
    Netlink(#[from] std::io::Error),
}

/// The loaded steering program, its maps, and where it is attached.
///
/// Dropping it detaches the program (and the kernel also detaches it when the process
/// dies, since it is attached through a bpf_link when the kernel supports it).
pub struct Steering {
    ebpf: Ebpf,
    prog: &'static str,
    attached: Option<Attached>,
}

struct Attached {
    link: XdpLinkId,
    ifname: String,
    ifindex: u32,
    mode: AttachedMode,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> SteerError {
    move |e| SteerError::Map {
        map,
        reason: e.to_string(),
    }
}

/// Interface index of `ifname` in the calling thread's network namespace.
///
/// # Errors
/// [`SteerError::NoInterface`] when there is none.
pub fn ifindex(ifname: &str) -> Result<u32, SteerError> {
    let c = CString::new(ifname).map_err(|_| SteerError::NoInterface(ifname.to_string()))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(SteerError::NoInterface(ifname.to_string()));
    }
    Ok(idx)
}

impl Steering {
    /// Loads the object and the program `variant` into the kernel (not attached yet).
    /// The VXLAN port starts at 0: nothing is steered until [`Steering::set_vxlan_port`].
    ///
    /// # Errors
    /// [`SteerError::Load`] (with the verifier log) when the kernel refuses.
    pub fn load(variant: Variant) -> Result<Steering, SteerError> {
        let mut ebpf = Ebpf::load(STEER_OBJECT).map_err(|e| SteerError::Load(e.to_string()))?;
        let prog = match variant {
            Variant::Linear => PROG_LINEAR,
            Variant::Frags => PROG_FRAGS,
        };
        let p: &mut Xdp = ebpf
            .program_mut(prog)
            .ok_or_else(|| SteerError::Load(format!("no program {prog} in the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| SteerError::Load(e.to_string()))?;
        p.load().map_err(|e| SteerError::Load(format!("{e:?}")))?;
        Ok(Steering {
            ebpf,
            prog,
            attached: None,
        })
    }

    fn xdp(&mut self) -> &mut Xdp {
        let p = self.ebpf.program_mut(self.prog).expect("checked at load");
        p.try_into().expect("checked at load")
    }

    /// Attaches to `ifname` (in the calling thread's network namespace) and returns the
    /// mode it runs in. With [`AttachMode::Auto`], a refused native attach is logged as a
    /// warning and generic mode is tried.
    ///
    /// When an XDP program is already attached, fails with
    /// [`SteerError::AlreadyAttached`] unless `replace` is true, in which case it is
    /// removed first (possible for programs attached through netlink, e.g. by `ip link`).
    ///
    /// # Errors
    /// [`SteerError::NoInterface`], [`SteerError::AlreadyAttached`],
    /// [`SteerError::Attach`] (ENOSPC/ERANGE on veth come with the fix in the text),
    /// [`SteerError::Invalid`] when already attached somewhere.
    pub fn attach(
        &mut self,
        ifname: &str,
        mode: AttachMode,
        replace: bool,
    ) -> Result<AttachedMode, SteerError> {
        if let Some(a) = &self.attached {
            return Err(SteerError::Invalid(format!(
                "already attached to '{}'; detach first",
                a.ifname
            )));
        }
        let ifindex = ifindex(ifname)?;
        if let Some(found) = netlink::query_xdp(ifindex)? {
            if !replace {
                return Err(SteerError::AlreadyAttached {
                    ifname: ifname.to_string(),
                    prog_id: found.prog_id,
                    mode: found.mode,
                });
            }
            tracing::warn!(
                ifname,
                prog_id = found.prog_id,
                "replacing the XDP program already attached"
            );
            netlink::remove_xdp(ifindex, found.mode).map_err(|e| SteerError::Attach {
                ifname: ifname.to_string(),
                mode: "replace",
                reason: format!(
                    "cannot remove program id {}: {e} (EBUSY: it is held by another \
                     process's bpf_link)",
                    found.prog_id
                ),
            })?;
        }
        let try_mode = |s: &mut Steering, m: AttachedMode| {
            let xm = match m {
                AttachedMode::Native => XdpMode::Driver,
                AttachedMode::Generic => XdpMode::Skb,
            };
            s.xdp()
                .attach_to_if_index(ifindex, xm)
                .map_err(|e| SteerError::Attach {
                    ifname: ifname.to_string(),
                    mode: m.as_str(),
                    reason: explain_attach(&e),
                })
        };
        let (link, got) = match mode {
            AttachMode::Native => (try_mode(self, AttachedMode::Native)?, AttachedMode::Native),
            AttachMode::Generic => (
                try_mode(self, AttachedMode::Generic)?,
                AttachedMode::Generic,
            ),
            AttachMode::Auto => match try_mode(self, AttachedMode::Native) {
                Ok(l) => (l, AttachedMode::Native),
                Err(e) => {
                    tracing::warn!(
                        ifname,
                        "native XDP refused ({e}); falling back to generic (skb) mode, \
                         which is slower"
                    );
                    (
                        try_mode(self, AttachedMode::Generic)?,
                        AttachedMode::Generic,
                    )
                }
            },
        };
        tracing::info!(ifname, mode = got.as_str(), "XDP steering attached");
        self.attached = Some(Attached {
            link,
            ifname: ifname.to_string(),
            ifindex,
            mode: got,
        });
        Ok(got)
    }

    /// Detaches from the interface (no-op when not attached).
    ///
    /// # Errors
    /// [`SteerError::Attach`] when the kernel refuses the detach.
    pub fn detach(&mut self) -> Result<(), SteerError> {
        if let Some(a) = self.attached.take() {
            let ifname = a.ifname.clone();
            self.xdp().detach(a.link).map_err(|e| SteerError::Attach {
                ifname: ifname.clone(),
                mode: a.mode.as_str(),
                reason: format!("detach: {e}"),
            })?;
            tracing::info!(ifname, ifindex = a.ifindex, "XDP steering detached");
        }
        Ok(())
    }

    /// Where the program is attached: `(ifname, mode)`.
    pub fn attached(&self) -> Option<(&str, AttachedMode)> {
        self.attached.as_ref().map(|a| (a.ifname.as_str(), a.mode))
    }

    /// Sets the UDP destination port of VXLAN (host byte order; 0 steers nothing).
    /// Takes effect for the next frame, no reload.
    ///
    /// # Errors
    /// [`SteerError::Map`].
    pub fn set_vxlan_port(&mut self, port: u16) -> Result<(), SteerError> {
        let mut m: Array<&mut MapData, u32> =
            Array::try_from(self.ebpf.map_mut("config").expect("map in object"))
                .map_err(map_err("config"))?;
        m.set(0, u32::from(port), 0).map_err(map_err("config"))
    }

    /// The configured VXLAN port.
    ///
    /// # Errors
    /// [`SteerError::Map`].
    pub fn vxlan_port(&self) -> Result<u16, SteerError> {
        let m: Array<&MapData, u32> =
            Array::try_from(self.ebpf.map("config").expect("map in object"))
                .map_err(map_err("config"))?;
        Ok(m.get(&0, 0).map_err(map_err("config"))? as u16)
    }

    fn set_addr(&mut self, addr: IpAddr, insert: bool, kind: u8) -> Result<(), SteerError> {
        match addr {
            IpAddr::V4(a) => {
                let mut m: HashMap<&mut MapData, u32, u8> =
                    HashMap::try_from(self.ebpf.map_mut("vtep_v4").expect("map in object"))
                        .map_err(map_err("vtep_v4"))?;
                let key = u32::from_ne_bytes(a.octets());
                if insert {
                    m.insert(key, kind, 0).map_err(map_err("vtep_v4"))
                } else {
                    m.remove(&key).map_err(map_err("vtep_v4"))
                }
            }
            IpAddr::V6(a) => {
                let mut m: HashMap<&mut MapData, [u8; 16], u8> =
                    HashMap::try_from(self.ebpf.map_mut("vtep_v6").expect("map in object"))
                        .map_err(map_err("vtep_v6"))?;
                if insert {
                    m.insert(a.octets(), kind, 0).map_err(map_err("vtep_v6"))
                } else {
                    m.remove(&a.octets()).map_err(map_err("vtep_v6"))
                }
            }
        }
    }

    /// Steers VXLAN sent to `addr` (a unicast VTEP address). At most
    /// [`MAX_VTEP_ADDRS`] addresses and groups per family.
    ///
    /// # Errors
    /// [`SteerError::Invalid`] for a multicast address (use [`Steering::join_group`]),
    /// [`SteerError::Map`] when the map is full.
    pub fn add_vtep_addr(&mut self, addr: IpAddr) -> Result<(), SteerError> {
        if addr.is_multicast() {
            return Err(SteerError::Invalid(format!(
                "{addr} is multicast: use join_group"
            )));
        }
        self.set_addr(addr, true, 1)
    }

    /// Stops steering VXLAN sent to `addr`.
    ///
    /// # Errors
    /// [`SteerError::Map`] when it was not there.
    pub fn remove_vtep_addr(&mut self, addr: IpAddr) -> Result<(), SteerError> {
        self.set_addr(addr, false, 0)
    }

    /// Steers VXLAN sent to the multicast group `group` (flood list of a VNI,
    /// RFC 7348 §4.2).
    ///
    /// # Errors
    /// [`SteerError::Invalid`] for a unicast address, [`SteerError::Map`].
    pub fn join_group(&mut self, group: IpAddr) -> Result<(), SteerError> {
        if !group.is_multicast() {
            return Err(SteerError::Invalid(format!("{group} is not multicast")));
        }
        self.set_addr(group, true, 2)
    }

    /// Stops steering VXLAN sent to `group`.
    ///
    /// # Errors
    /// [`SteerError::Map`] when it was not there.
    pub fn leave_group(&mut self, group: IpAddr) -> Result<(), SteerError> {
        self.set_addr(group, false, 0)
    }

    /// Registers the AF_XDP socket `fd` for RX queue `queue` (XSKMAP slot `queue`). The
    /// socket must be bound to that queue of the attached interface.
    ///
    /// # Errors
    /// [`SteerError::Invalid`] for `queue >= MAX_QUEUES`, [`SteerError::Map`] when the
    /// kernel refuses (e.g. `fd` is not an AF_XDP socket).
    pub fn register_xsk(&mut self, queue: u32, fd: RawFd) -> Result<(), SteerError> {
        if queue >= MAX_QUEUES {
            return Err(SteerError::Invalid(format!(
                "queue {queue} >= {MAX_QUEUES} slots"
            )));
        }
        let mut m = XskMap::try_from(self.ebpf.map_mut("xsks").expect("map in object"))
            .map_err(map_err("xsks"))?;
        m.set(queue, fd, 0).map_err(map_err("xsks"))
    }

    /// Removes the socket of RX queue `queue`: its VXLAN goes to the kernel again.
    ///
    /// # Errors
    /// [`SteerError::Map`] when no socket was registered there.
    pub fn unregister_xsk(&mut self, queue: u32) -> Result<(), SteerError> {
        let mut m = XskMap::try_from(self.ebpf.map_mut("xsks").expect("map in object"))
            .map_err(map_err("xsks"))?;
        m.unset(queue).map_err(map_err("xsks"))
    }

    /// The counters, summed over all CPUs.
    ///
    /// # Errors
    /// [`SteerError::Map`].
    pub fn counters(&self) -> Result<SteerCounters, SteerError> {
        let m: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("counters").expect("map in object"))
                .map_err(map_err("counters"))?;
        let mut sum = [0u64; 4];
        for (i, s) in sum.iter_mut().enumerate() {
            *s = m
                .get(&(i as u32), 0)
                .map_err(map_err("counters"))?
                .iter()
                .sum();
        }
        Ok(SteerCounters {
            steered: sum[0],
            passed: sum[1],
            malformed: sum[2],
            no_socket: sum[3],
        })
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN (no interface involved) and
    /// returns its XDP action (see [`action`]). The counters count the run.
    ///
    /// # Errors
    /// [`SteerError::Invalid`] with the kernel's error (frames below 14 bytes are refused).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, SteerError> {
        let p = self.ebpf.program(self.prog).expect("checked at load");
        let xdp: &Xdp = p.try_into().expect("checked at load");
        let mut out = vec![0u8; frame.len() + 512];
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|e| SteerError::Invalid(format!("BPF_PROG_TEST_RUN: {e}")))?;
        Ok(r.return_value)
    }
}

/// An XDP load generator: BPF_PROG_TEST_RUN in live-frames mode of a program returning
/// XDP_TX, so each repetition sends the test frame out of a chosen interface (a veth: the
/// frame arrives at its peer), plus a counting XDP_DROP sink for the return path. For
/// benchmarks; see ENVIRONMENT.md.
pub struct LoadGen {
    ebpf: Ebpf,
    sink: Option<XdpLinkId>,
    match_sink: Option<XdpLinkId>,
}

/// What the matching sink ([`LoadGen::attach_match_sink`]) counts and drops: IPv4/UDP
/// frames (no IP options) to `udp_port`, and, when set, to `dst` and carrying VXLAN
/// (I flag set, RFC 7348 §5) with VNI `vni`. Other frames are counted apart and passed
/// to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkMatch {
    /// UDP destination port.
    pub udp_port: u16,
    /// IPv4 destination, or any.
    pub dst: Option<std::net::Ipv4Addr>,
    /// VXLAN VNI (0..=2^24−1), or do not look at a VXLAN header.
    pub vni: Option<u32>,
}

/// Counts of the matching sink, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Frames that matched the [`SinkMatch`] (dropped).
    pub matched: u64,
    /// Frames that did not (passed to the kernel).
    pub other: u64,
}

impl LoadGen {
    /// Loads the generator and the sink programs.
    ///
    /// # Errors
    /// [`SteerError::Load`].
    pub fn load() -> Result<LoadGen, SteerError> {
        let mut ebpf = Ebpf::load(LOADGEN_OBJECT).map_err(|e| SteerError::Load(e.to_string()))?;
        for name in [
            "butterfly_loadgen",
            "butterfly_sink",
            "butterfly_sink_match",
        ] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| SteerError::Load(format!("no program {name}")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| SteerError::Load(e.to_string()))?;
            p.load().map_err(|e| SteerError::Load(format!("{e:?}")))?;
        }
        Ok(LoadGen {
            ebpf,
            sink: None,
            match_sink: None,
        })
    }

    /// Attaches the counting sink (native mode) to `ifname`; detached on drop.
    ///
    /// # Errors
    /// [`SteerError::NoInterface`], [`SteerError::Attach`].
    pub fn attach_sink(&mut self, ifname: &str) -> Result<(), SteerError> {
        self.sink = Some(self.attach_native("butterfly_sink", ifname)?);
        Ok(())
    }

    /// Attaches program `prog` of the object in native (driver) mode to `ifname`.
    fn attach_native(&mut self, prog: &str, ifname: &str) -> Result<XdpLinkId, SteerError> {
        let idx = ifindex(ifname)?;
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog)
            .expect("loaded")
            .try_into()
            .expect("loaded");
        p.attach_to_if_index(idx, XdpMode::Driver)
            .map_err(|e| SteerError::Attach {
                ifname: ifname.to_string(),
                mode: "native",
                reason: explain_attach(&e),
            })
    }

    /// Attaches the matching sink (native mode) to `ifname`, counting and dropping what
    /// matches `m` and passing the rest to the kernel; detached on drop.
    ///
    /// # Errors
    /// [`SteerError::Invalid`] for a VNI above 2^24−1, [`SteerError::Map`],
    /// [`SteerError::NoInterface`], [`SteerError::Attach`].
    pub fn attach_match_sink(&mut self, ifname: &str, m: SinkMatch) -> Result<(), SteerError> {
        if m.vni.is_some_and(|v| v > 0x00ff_ffff) {
            return Err(SteerError::Invalid(format!("VNI {:?} above 2^24-1", m.vni)));
        }
        {
            let mut cfg: Array<&mut MapData, u32> =
                Array::try_from(self.ebpf.map_mut("match_config").expect("map in object"))
                    .map_err(map_err("match_config"))?;
            let values = [
                u32::from(m.udp_port),
                m.vni.map_or(0, |v| v + 1),
                m.dst.map_or(0, |a| u32::from_ne_bytes(a.octets())),
            ];
            for (i, v) in values.into_iter().enumerate() {
                cfg.set(i as u32, v, 0).map_err(map_err("match_config"))?;
            }
        }
        self.match_sink = Some(self.attach_native("butterfly_sink_match", ifname)?);
        Ok(())
    }

    /// What the matching sink counted so far, summed over CPUs.
    ///
    /// # Errors
    /// [`SteerError::Map`].
    pub fn match_counts(&self) -> Result<SinkCounts, SteerError> {
        let m: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("match_count").expect("map in object"))
                .map_err(map_err("match_count"))?;
        let sum = |i: u32| -> Result<u64, SteerError> {
            Ok(m.get(&i, 0).map_err(map_err("match_count"))?.iter().sum())
        };
        Ok(SinkCounts {
            matched: sum(0)?,
            other: sum(1)?,
        })
    }

    /// Frames the sink dropped so far, summed over CPUs.
    ///
    /// # Errors
    /// [`SteerError::Map`].
    pub fn sink_packets(&self) -> Result<u64, SteerError> {
        let m: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("sink_count").expect("map in object"))
                .map_err(map_err("sink_count"))?;
        Ok(m.get(&0, 0).map_err(map_err("sink_count"))?.iter().sum())
    }

    /// Sends `frame` `repeat` times out of interface `ifindex` (in the calling thread's
    /// network namespace), `batch` frames per kernel batch (at most 256). Blocks until
    /// done; returns the time the kernel reports.
    ///
    /// # Errors
    /// [`SteerError::Invalid`] with the kernel's error.
    pub fn run(
        &self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
        batch: u32,
    ) -> Result<std::time::Duration, SteerError> {
        let p = self.ebpf.program("butterfly_loadgen").expect("loaded");
        let xdp: &Xdp = p.try_into().expect("loaded");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (u32 each); data_end must equal the frame length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(batch),
                ..TestRunOptions::new()
            })
            .map_err(|e| SteerError::Invalid(format!("BPF_PROG_TEST_RUN live frames: {e:?}")))?;
        Ok(r.duration)
    }
}

fn explain_attach(e: &aya::programs::ProgramError) -> String {
    let text = format!("{e}");
    let mut src: Option<&dyn std::error::Error> = Some(e);
    let mut code = None;
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            code = io.raw_os_error();
        }
        src = s.source();
    }
    let detail = format!("{e:?}");
    let has = |c: i32| code == Some(c) || detail.contains(&format!("code: {c}"));
    if has(libc::ENOSPC) {
        format!(
            "{text} (ENOSPC: on veth, native XDP needs at least as many RX queues here as the \
             peer has TX queues: `ethtool -L <dev> rx N tx N` or create the pair with \
             `numrxqueues`/`numtxqueues`)"
        )
    } else if has(libc::ERANGE) {
        format!(
            "{text} (ERANGE: the MTU is too large for single-buffer XDP (veth: peer MTU above \
             3506); load Variant::Frags and bind the sockets with XDP_USE_SG, or lower the MTU)"
        )
    } else if has(libc::EBUSY) || has(libc::EEXIST) {
        format!("{text} (another XDP program or mode is active on the interface)")
    } else if has(libc::EOPNOTSUPP) {
        format!("{text} (the driver has no native XDP: use generic mode)")
    } else {
        format!("{text} [{detail}]")
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        if let Some(link) = self.match_sink.take() {
            let p: &mut Xdp = self
                .ebpf
                .program_mut("butterfly_sink_match")
                .expect("loaded")
                .try_into()
                .expect("loaded");
            let _ = p.detach(link);
        }
        if let Some(link) = self.sink.take() {
            let p: &mut Xdp = self
                .ebpf
                .program_mut("butterfly_sink")
                .expect("loaded")
                .try_into()
                .expect("loaded");
            let _ = p.detach(link);
        }
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests;

/// `Steering` moves between threads and is shared by the AF_XDP sockets of one interface
/// (behind a mutex): check it stays `Send + Sync`.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Steering>();
    send_sync::<LoadGen>();
};
