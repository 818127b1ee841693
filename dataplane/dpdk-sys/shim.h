/* C shim over DPDK's static-inline fast-path functions and macro constants, so that
 * they can be called from Rust (bindgen cannot bind inline functions or RTE_BIT64
 * macros). Every function is a thin wrapper; see shim.c. */
#ifndef BUTTERFLY_DPDK_SHIM_H
#define BUTTERFLY_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_dev.h>
#include <rte_lcore.h>

/* Checksum offloads, as shim bits (independent of the RTE_ETH_TX_OFFLOAD_* values). */
enum bf_csum {
    BF_CSUM_IPV4 = 1, /* IPv4 header checksum */
    BF_CSUM_UDP = 2,  /* UDP checksum (IPv4 and IPv6) */
    BF_CSUM_TCP = 4,  /* TCP checksum (IPv4 and IPv6) */
};

/* Packet kinds for bf_mbuf_tx_csum. */
enum bf_l3 {
    BF_L3_IPV4 = 1,
    BF_L3_IPV6 = 2,
};

int bf_errno(void);
uint16_t bf_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t bf_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t bf_tx_prepare(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
int bf_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int n);
struct rte_mbuf *bf_pktmbuf_alloc(struct rte_mempool *mp);
void bf_pktmbuf_free(struct rte_mbuf *m);
char *bf_pktmbuf_mtod(struct rte_mbuf *m);
char *bf_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint16_t bf_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t bf_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t bf_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* Copies the frame (all segments) into dst; returns its length, or -1 (nothing copied)
 * when it is longer than cap. */
int32_t bf_pktmbuf_copy_out(const struct rte_mbuf *m, uint8_t *dst, uint32_t cap);
/* Copies len bytes of src into m, which must be freshly allocated (rte_pktmbuf_alloc or
 * _alloc_bulk: empty, reset); returns 0, or -1 when they do not fit in the data room after
 * the headroom. */
int bf_pktmbuf_copy_in(struct rte_mbuf *m, const uint8_t *src, uint16_t len);
/* Asks the port to compute checksums `csum` (bf_csum bits) of m: sets l2_len, l3_len and
 * the RTE_MBUF_F_TX_* flags. l3 is a bf_l3 value. The caller writes 0 in the IPv4
 * checksum field and the pseudo-header sum in the L4 one (rte_mbuf_core.h). */
void bf_mbuf_tx_csum(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len, int l3, int csum);
/* bf_csum bits offered by tx_offload_capa (an rte_eth_dev_info field). */
int bf_tx_csum_capa(uint64_t tx_offload_capa);
/* RTE_ETH_TX_OFFLOAD_* bits for bf_csum bits (for rte_eth_conf.txmode.offloads). */
uint64_t bf_tx_offloads(int csum);
/* Link status fields of rte_eth_link (bitfields in C). */
int bf_link_up(const struct rte_eth_link *l);
int bf_link_full_duplex(const struct rte_eth_link *l);
/* RTE_MBUF_DEFAULT_BUF_SIZE and RTE_PKTMBUF_HEADROOM. */
uint16_t bf_mbuf_default_buf_size(void);
uint16_t bf_pktmbuf_headroom_default(void);

#endif
