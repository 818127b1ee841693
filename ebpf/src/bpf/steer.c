// SPDX-License-Identifier: GPL-2.0
// (GPL so the kernel lets the program use every helper; the rest of Butterfly is Apache-2.0.)
//
// Butterfly's XDP steering program.
//
// VXLAN (RFC 7348 §5: UDP to the VXLAN port, 4789 by default) addressed to one of our
// VTEP addresses, or to a multicast group the VTEP joined, is redirected to the AF_XDP
// socket registered for the receiving queue (XSKMAP slot = rx_queue_index). Everything
// else (ARP, SSH, the host's own traffic, malformed frames) goes to the kernel with
// XDP_PASS, untouched. While no socket is registered for a queue, bpf_redirect_map falls
// back to XDP_PASS, so the kernel keeps receiving.
//
// Parsed: Ethernet II, at most one 802.1Q/802.1ad tag, IPv4 with options (fragments are
// passed), IPv6 with up to MAX_IPV6_EXT extension headers (hop-by-hop, routing,
// destination options, AH; fragments are passed), then UDP.
//
// Configuration lives in maps so user space changes it without reloading:
//   config[0]  UDP destination port of VXLAN, host byte order (0 = steer nothing)
//   vtep_v4    IPv4 destinations (network byte order) to steer
//   vtep_v6    IPv6 destinations to steer
// Counters (per CPU, indices below) are summed by user space.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256
#define MAX_VTEP_ADDRS 256
#define MAX_IPV6_EXT 6

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF

enum counter {
	CNT_STEERED = 0,   // redirected to an AF_XDP socket
	CNT_PASSED = 1,    // well-formed, not for us: to the kernel
	CNT_MALFORMED = 2, // truncated or invalid headers: to the kernel (which drops them)
	CNT_NO_SOCKET = 3, // VXLAN for us, but no socket on that queue: to the kernel
	CNT_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VTEP_ADDRS);
	__type(key, __u32);
	__type(value, __u8);
} vtep_v4 SEC(".maps");

struct v6key {
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VTEP_ADDRS);
	__type(key, struct v6key);
	__type(value, __u8);
} vtep_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 idx, int action)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += 1;
	return action;
}

// Verdict of the parser before the redirect.
enum verdict { V_PASS, V_MALFORMED, V_STEER };

static __always_inline enum verdict udp_to_vxlan(struct udphdr *udp, void *data_end)
{
	if ((void *)(udp + 1) > data_end)
		return V_MALFORMED;
	__u32 key = 0;
	__u32 *port = bpf_map_lookup_elem(&config, &key);
	if (!port || *port == 0 || bpf_ntohs(udp->dest) != *port)
		return V_PASS;
	return V_STEER;
}

static __always_inline enum verdict parse_ipv4(void *l3, void *data_end)
{
	struct iphdr *ip = l3;
	if ((void *)(ip + 1) > data_end)
		return V_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return V_MALFORMED;
	__u32 hlen = ip->ihl * 4;
	if (l3 + hlen > data_end)
		return V_MALFORMED;
	if (ip->protocol != IPPROTO_UDP)
		return V_PASS;
	// A fragment has no complete UDP datagram: let the kernel reassemble it.
	if (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
		return V_PASS;
	__u32 daddr = ip->daddr;
	if (!bpf_map_lookup_elem(&vtep_v4, &daddr))
		return V_PASS;
	return udp_to_vxlan(l3 + hlen, data_end);
}

static __always_inline enum verdict parse_ipv6(void *l3, void *data_end)
{
	struct ipv6hdr *ip6 = l3;
	if ((void *)(ip6 + 1) > data_end)
		return V_MALFORMED;
	if (ip6->version != 6)
		return V_MALFORMED;
	__u8 next = ip6->nexthdr;
	void *cur = (void *)(ip6 + 1);

	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		if (next == IPPROTO_UDP)
			break;
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
		    next == IPPROTO_AH) {
			__u8 *ext = cur;
			if ((void *)(ext + 2) > data_end)
				return V_MALFORMED;
			__u32 len = next == IPPROTO_AH ? ((__u32)ext[1] + 2) * 4
						       : ((__u32)ext[1] + 1) * 8;
			next = ext[0];
			cur += len;
			if (cur > data_end)
				return V_MALFORMED;
			continue;
		}
		// Fragments, ESP, TCP, ICMPv6, no next header...: not ours.
		return V_PASS;
	}
	if (next != IPPROTO_UDP)
		return V_PASS; // more extension headers than we look through
	struct v6key key;
	__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
	if (!bpf_map_lookup_elem(&vtep_v6, &key))
		return V_PASS;
	return udp_to_vxlan(cur, data_end);
}

static __always_inline int steer_frame(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return count(CNT_MALFORMED, XDP_PASS);
	__u16 proto = eth->h_proto;
	void *l3 = (void *)(eth + 1);
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		// One tag: TCI (2 bytes) then the encapsulated EtherType.
		__be16 *tag = l3;
		if ((void *)(tag + 2) > data_end)
			return count(CNT_MALFORMED, XDP_PASS);
		proto = tag[1];
		l3 = (void *)(tag + 2);
	}
	enum verdict v;
	if (proto == bpf_htons(ETH_P_IP))
		v = parse_ipv4(l3, data_end);
	else if (proto == bpf_htons(ETH_P_IPV6))
		v = parse_ipv6(l3, data_end);
	else
		v = V_PASS;

	if (v == V_MALFORMED)
		return count(CNT_MALFORMED, XDP_PASS);
	if (v == V_PASS)
		return count(CNT_PASSED, XDP_PASS);
	int action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (action == XDP_REDIRECT)
		return count(CNT_STEERED, action);
	return count(CNT_NO_SOCKET, action);
}

// Single-buffer variant: the frame is linear (MTU up to ~3500 bytes on veth).
SEC("xdp")
int butterfly_steer(struct xdp_md *ctx)
{
	return steer_frame(ctx);
}

// Multi-buffer variant for jumbo MTUs: headers must sit in the first buffer (they do,
// drivers put at least a page there); the AF_XDP socket binds with XDP_USE_SG.
SEC("xdp.frags")
int butterfly_steer_frags(struct xdp_md *ctx)
{
	return steer_frame(ctx);
}

char LICENSE[] SEC("license") = "GPL";
