// SPDX-License-Identifier: GPL-2.0
//
// Programs for the AF_XDP benchmark.
//
// butterfly_loadgen: run through BPF_PROG_TEST_RUN in live-frames mode
// (BPF_F_TEST_XDP_LIVE_FRAMES) with ctx->ingress_ifindex set to a veth; every XDP_TX
// sends the test frame out of that veth, into its peer. Make one long call with a large
// `repeat` (each call costs ~25 ms of setup on 6.18).
//
// butterfly_sink: attached to the generating veth, counts (per CPU) and drops what comes
// back (the l2fwd return path), so the kernel stack does no work for it.
//
// butterfly_sink_match: a sink that checks what it counts. IPv4/UDP frames (no IP
// options) to the configured destination port, and when configured to one IPv4
// destination and/or one VXLAN VNI (I flag set, RFC 7348 §5), are counted as `matched`
// and dropped; everything else is counted as `other` and passed to the kernel (so ARP
// and the like keep working on the interface).
//   match_config[0]  UDP destination port, host byte order
//   match_config[1]  VNI + 1 (0: do not look at a VXLAN header)
//   match_config[2]  IPv4 destination, network byte order (0: any)
//   match_count[0]   matched (dropped), match_count[1] other (passed); per CPU

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int butterfly_loadgen(struct xdp_md *ctx)
{
	return XDP_TX;
}

SEC("xdp")
int butterfly_sink(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *c = bpf_map_lookup_elem(&sink_count, &key);
	if (c)
		*c += 1;
	return XDP_DROP;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u32);
} match_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} match_count SEC(".maps");

static __always_inline __u32 config(__u32 key)
{
	__u32 *v = bpf_map_lookup_elem(&match_config, &key);
	return v ? *v : 0;
}

static __always_inline int count(__u32 key, int action)
{
	__u64 *c = bpf_map_lookup_elem(&match_count, &key);
	if (c)
		*c += 1;
	return action;
}

SEC("xdp")
int butterfly_sink_match(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *vx = (void *)(udp + 1);
	__u32 vni1 = config(1), dst = config(2);

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    bpf_ntohs(udp->dest) != config(0) || (dst && ip->daddr != dst))
		return count(1, XDP_PASS);
	if (vni1) {
		if ((void *)(vx + 8) > end || !(vx[0] & 0x08))
			return count(1, XDP_PASS);
		if ((((__u32)vx[4] << 16) | ((__u32)vx[5] << 8) | vx[6]) + 1 != vni1)
			return count(1, XDP_PASS);
	}
	return count(0, XDP_DROP);
}

char LICENSE[] SEC("license") = "GPL";
