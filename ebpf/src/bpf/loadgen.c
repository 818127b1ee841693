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

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

char LICENSE[] SEC("license") = "GPL";
