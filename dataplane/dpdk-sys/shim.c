/* Wrappers of DPDK's static-inline functions; see shim.h. */
#include <string.h>
#include "shim.h"

int bf_errno(void) { return rte_errno; }

uint16_t bf_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t bf_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_tx_burst(port, queue, pkts, n);
}

uint16_t bf_tx_prepare(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_tx_prepare(port, queue, pkts, n);
}

int bf_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int n)
{
    return rte_pktmbuf_alloc_bulk(mp, mbufs, n);
}

struct rte_mbuf *bf_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

void bf_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

char *bf_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, char *); }

char *bf_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }

uint16_t bf_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint32_t bf_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }

uint16_t bf_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

int32_t bf_pktmbuf_copy_out(const struct rte_mbuf *m, uint8_t *dst, uint32_t cap)
{
    uint32_t len = rte_pktmbuf_pkt_len(m);
    if (len > cap)
        return -1;
    if (m->nb_segs == 1) {
        memcpy(dst, rte_pktmbuf_mtod(m, const uint8_t *), len);
        return (int32_t)len;
    }
    uint32_t off = 0;
    for (const struct rte_mbuf *s = m; s != NULL && off < len; s = s->next) {
        uint32_t n = s->data_len;
        if (n > len - off)
            n = len - off;
        memcpy(dst + off, rte_pktmbuf_mtod(s, const uint8_t *), n);
        off += n;
    }
    return (int32_t)off;
}

int bf_pktmbuf_copy_in(struct rte_mbuf *m, const uint8_t *src, uint16_t len)
{
    /* m comes from rte_pktmbuf_alloc[_bulk], which reset it (empty, one segment, default
     * headroom): no second reset on the TX hot path. */
    if (len > rte_pktmbuf_tailroom(m))
        return -1;
    m->data_len = len;
    m->pkt_len = len;
    memcpy(rte_pktmbuf_mtod(m, char *), src, len);
    return 0;
}

void bf_mbuf_tx_csum(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len, int l3, int csum)
{
    uint64_t f = 0;
    m->l2_len = l2_len;
    m->l3_len = l3_len;
    if (l3 == BF_L3_IPV4)
        f |= RTE_MBUF_F_TX_IPV4;
    else if (l3 == BF_L3_IPV6)
        f |= RTE_MBUF_F_TX_IPV6;
    if (csum & BF_CSUM_IPV4)
        f |= RTE_MBUF_F_TX_IP_CKSUM;
    if (csum & BF_CSUM_UDP)
        f |= RTE_MBUF_F_TX_UDP_CKSUM;
    else if (csum & BF_CSUM_TCP)
        f |= RTE_MBUF_F_TX_TCP_CKSUM;
    m->ol_flags |= f;
}

int bf_tx_csum_capa(uint64_t capa)
{
    int c = 0;
    if (capa & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM)
        c |= BF_CSUM_IPV4;
    if (capa & RTE_ETH_TX_OFFLOAD_UDP_CKSUM)
        c |= BF_CSUM_UDP;
    if (capa & RTE_ETH_TX_OFFLOAD_TCP_CKSUM)
        c |= BF_CSUM_TCP;
    return c;
}

uint64_t bf_tx_offloads(int csum)
{
    uint64_t o = 0;
    if (csum & BF_CSUM_IPV4)
        o |= RTE_ETH_TX_OFFLOAD_IPV4_CKSUM;
    if (csum & BF_CSUM_UDP)
        o |= RTE_ETH_TX_OFFLOAD_UDP_CKSUM;
    if (csum & BF_CSUM_TCP)
        o |= RTE_ETH_TX_OFFLOAD_TCP_CKSUM;
    return o;
}

int bf_link_up(const struct rte_eth_link *l) { return l->link_status == RTE_ETH_LINK_UP; }

int bf_link_full_duplex(const struct rte_eth_link *l)
{
    return l->link_duplex == RTE_ETH_LINK_FULL_DUPLEX;
}

uint16_t bf_mbuf_default_buf_size(void) { return RTE_MBUF_DEFAULT_BUF_SIZE; }

uint16_t bf_pktmbuf_headroom_default(void) { return RTE_PKTMBUF_HEADROOM; }
