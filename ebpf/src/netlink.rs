//! Just enough rtnetlink to ask which XDP program an interface runs, and to remove a
//! program attached through netlink (`ip link set dev X xdp off`).
//!
//! aya 0.14 attaches and detaches its own programs but cannot query what is already
//! attached. The messages follow `linux/rtnetlink.h` and `linux/if_link.h` (IFLA_XDP).

use std::io;

/// `IFLA_XDP` (linux/if_link.h).
const IFLA_XDP: u16 = 43;
/// `IFLA_XDP_FD`.
const IFLA_XDP_FD: u16 = 1;
/// `IFLA_XDP_ATTACHED`.
const IFLA_XDP_ATTACHED: u16 = 2;
/// `IFLA_XDP_FLAGS`.
const IFLA_XDP_FLAGS: u16 = 3;
/// `IFLA_XDP_PROG_ID`.
const IFLA_XDP_PROG_ID: u16 = 4;
/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// Where an XDP program runs on an interface (`XDP_ATTACHED_*`, linux/if_link.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachment {
    /// In the driver (native XDP).
    Driver,
    /// In the generic (skb) path.
    Skb,
    /// Offloaded to the NIC.
    Hardware,
    /// Several at once (e.g. generic and offloaded).
    Multi,
}

/// An XDP program attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachedXdp {
    /// Kernel id of the program (as shown by `bpftool prog`; 0 when the kernel did not say).
    pub prog_id: u32,
    /// Where it runs.
    pub mode: XdpAttachment,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IfInfoMsg {
    family: u8,
    pad: u8,
    kind: u16,
    index: i32,
    flags: u32,
    change: u32,
}

fn nl_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Sends one request and returns the reply datagram.
fn transact(msg_type: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let sock = nl_socket()?;
    let mut buf = Vec::with_capacity(64 + attrs.len());
    let info = IfInfoMsg {
        family: libc::AF_UNSPEC as u8,
        pad: 0,
        kind: 0,
        index: ifindex as i32,
        flags: 0,
        change: 0,
    };
    let total = 16 + std::mem::size_of::<IfInfoMsg>() + attrs.len();
    buf.extend_from_slice(&(total as u32).to_ne_bytes());
    buf.extend_from_slice(&msg_type.to_ne_bytes());
    buf.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    buf.push(info.family);
    buf.push(info.pad);
    buf.extend_from_slice(&info.kind.to_ne_bytes());
    buf.extend_from_slice(&info.index.to_ne_bytes());
    buf.extend_from_slice(&info.flags.to_ne_bytes());
    buf.extend_from_slice(&info.change.to_ne_bytes());
    buf.extend_from_slice(attrs);
    // SAFETY: buf is a valid readable buffer of buf.len() bytes; the socket is ours.
    let n = unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = vec![0u8; 32 * 1024];
    // SAFETY: reply is a valid writable buffer of reply.len() bytes.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    reply.truncate(n as usize);
    if reply.len() < 16 {
        return Err(io::Error::other("short netlink reply"));
    }
    let ty = u16::from_ne_bytes([reply[4], reply[5]]);
    if ty == libc::NLMSG_ERROR as u16 {
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(reply)
}

/// Iterates over the attributes in `buf` as `(type, payload)`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        let adv = len.next_multiple_of(4).min(buf.len());
        buf = &buf[adv..];
        Some((kind, payload))
    })
}

/// The XDP program attached to interface `ifindex`, if any (RTM_GETLINK, IFLA_XDP).
///
/// # Errors
/// The netlink error (ENODEV when the interface does not exist).
pub fn query_xdp(ifindex: u32) -> io::Result<Option<AttachedXdp>> {
    let reply = transact(libc::RTM_GETLINK, 0, ifindex, &[])?;
    let hdr = 16 + std::mem::size_of::<IfInfoMsg>();
    if reply.len() < hdr {
        return Err(io::Error::other("short RTM_NEWLINK reply"));
    }
    let msg_len =
        (u32::from_ne_bytes([reply[0], reply[1], reply[2], reply[3]]) as usize).min(reply.len());
    for (kind, payload) in attrs(&reply[hdr..msg_len]) {
        if kind != IFLA_XDP {
            continue;
        }
        let mut attached = 0u8;
        let mut prog_id = 0u32;
        for (k, p) in attrs(payload) {
            match k {
                IFLA_XDP_ATTACHED if !p.is_empty() => attached = p[0],
                IFLA_XDP_PROG_ID if p.len() >= 4 => {
                    prog_id = u32::from_ne_bytes([p[0], p[1], p[2], p[3]])
                }
                _ => {}
            }
        }
        let mode = match attached {
            0 => return Ok(None),
            1 => XdpAttachment::Driver,
            2 => XdpAttachment::Skb,
            3 => XdpAttachment::Hardware,
            _ => XdpAttachment::Multi,
        };
        return Ok(Some(AttachedXdp { prog_id, mode }));
    }
    Ok(None)
}

/// Removes the XDP program attached through netlink in `mode` (RTM_SETLINK with
/// IFLA_XDP_FD = -1). Fails with EBUSY when the program is held by a bpf_link.
///
/// # Errors
/// The netlink error.
pub fn remove_xdp(ifindex: u32, mode: XdpAttachment) -> io::Result<()> {
    let flags: u32 = match mode {
        XdpAttachment::Skb => 1 << 1,      // XDP_FLAGS_SKB_MODE
        XdpAttachment::Driver => 1 << 2,   // XDP_FLAGS_DRV_MODE
        XdpAttachment::Hardware => 1 << 3, // XDP_FLAGS_HW_MODE
        XdpAttachment::Multi => 0,
    };
    let mut nested = Vec::new();
    push_attr(&mut nested, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    if flags != 0 {
        push_attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    }
    let mut top = Vec::new();
    push_attr(&mut top, IFLA_XDP | NLA_F_NESTED, &nested);
    transact(libc::RTM_SETLINK, libc::NLM_F_ACK as u16, ifindex, &top).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_walk_stops_on_garbage() {
        let mut b = Vec::new();
        push_attr(&mut b, 7, &[1, 2, 3]);
        push_attr(&mut b, 9, &[4]);
        let v: Vec<_> = attrs(&b).collect();
        assert_eq!(v, vec![(7, &[1u8, 2, 3][..]), (9, &[4u8][..])]);
        // A length running past the end stops the walk instead of panicking.
        let bad = [200u8, 0, 1, 0, 0, 0];
        assert_eq!(attrs(&bad).count(), 0);
        let tiny = [3u8, 0, 1, 0];
        assert_eq!(attrs(&tiny).count(), 0);
    }

    #[test]
    fn loopback_has_no_xdp() {
        // Interface 1 is `lo` in every network namespace.
        assert_eq!(query_xdp(1).expect("RTM_GETLINK on lo"), None);
    }
}
