// SPDX-License-Identifier: GPL-2.0
//
// Load generator for the AF_XDP benchmark: run through BPF_PROG_TEST_RUN in live-frames
// mode (BPF_F_TEST_XDP_LIVE_FRAMES) with ctx->ingress_ifindex set to a veth, every
// XDP_TX sends the test frame out of that veth, into its peer. One long call with a
// large `repeat` (each call costs ~25 ms of setup on 6.18).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int butterfly_loadgen(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
