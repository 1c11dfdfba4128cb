/* See shim.h. Compiled by build.rs with exactly the flags `pkg-config --cflags libdpdk`
 * gives (which include `-include rte_config.h`); no -march=native. */
#include <string.h>
#include "shim.h"

int shim_rte_errno(void) { return rte_errno; }

unsigned shim_lcore_id(void) { return rte_lcore_id(); }

uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *pool) { return rte_pktmbuf_alloc(pool); }

int shim_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned n) {
    return rte_pktmbuf_alloc_bulk(pool, mbufs, n);
}

void shim_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void shim_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n) { rte_pktmbuf_free_bulk(mbufs, n); }

char *shim_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }

void *shim_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint16_t shim_pktmbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }

uint32_t shim_pktmbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }

uint16_t shim_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

uint64_t shim_pktmbuf_ol_flags(const struct rte_mbuf *m) { return m->ol_flags; }

unsigned shim_mempool_avail(const struct rte_mempool *pool) { return rte_mempool_avail_count(pool); }

int shim_port_setup(uint16_t port, uint16_t queues, struct rte_mempool *pool, uint16_t rx_desc,
                    uint16_t tx_desc, uint16_t mtu, struct shim_port_info *info) {
    struct rte_eth_dev_info dev;
    struct rte_eth_conf conf;
    struct rte_ether_addr mac;
    int ret;
    uint16_t q;

    memset(info, 0, sizeof(*info));
    ret = rte_eth_dev_info_get(port, &dev);
    if (ret != 0)
        return ret;
    info->max_rx_queues = dev.max_rx_queues;
    info->max_tx_queues = dev.max_tx_queues;
    if (dev.driver_name != NULL)
        strncpy(info->driver, dev.driver_name, sizeof(info->driver) - 1);
    if (queues > dev.max_rx_queues || queues > dev.max_tx_queues)
        return -EINVAL;

    memset(&conf, 0, sizeof(conf));
    /* The MTU ethdev lets us set: bounded by max_mtu and by the longest frame the device
     * receives (max_rx_pktlen less the L2 overhead ethdev assumes, 18 bytes). */
    uint32_t frame_cap = dev.max_rx_pktlen > 18 ? dev.max_rx_pktlen - 18 : 0;
    uint32_t settable = dev.max_mtu < frame_cap ? dev.max_mtu : frame_cap;
    info->max_mtu = settable > UINT16_MAX ? UINT16_MAX : (uint16_t)settable;
    if (mtu != 0) {
        if (mtu >= dev.min_mtu && mtu <= settable) {
            conf.rxmode.mtu = mtu;
        } else if (dev.driver_name != NULL && strcmp(dev.driver_name, "net_memif") == 0) {
            /* memif reports a standard frame limit but carries any length: the transmit side
             * spreads a frame over chained descriptors and the receive side gathers them
             * (into one mbuf when its data room is at least the `bsize` argument). Its
             * ethdev MTU stays as it is; the stack uses the asked MTU. */
            info->mtu_unlimited = 1;
        } else {
            return -EINVAL;
        }
    }
    if (queues > 1 && dev.flow_type_rss_offloads != 0) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf =
            (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP) & dev.flow_type_rss_offloads;
        info->rss = 1;
    }
    /* Checksum offloads only where the device really has them. */
    if (dev.rx_offload_capa & RTE_ETH_RX_OFFLOAD_IPV4_CKSUM) {
        conf.rxmode.offloads |= RTE_ETH_RX_OFFLOAD_IPV4_CKSUM;
        info->rx_ip_cksum = 1;
    }
    if (dev.rx_offload_capa & RTE_ETH_RX_OFFLOAD_TCP_CKSUM) {
        conf.rxmode.offloads |= RTE_ETH_RX_OFFLOAD_TCP_CKSUM;
        info->rx_tcp_cksum = 1;
    }
    /* Transmit offloads need per-mbuf l2/l3 lengths and a pseudo-header checksum; the stack
     * computes transmit checksums in software, so none are requested. */
    info->tx_ip_cksum = 0;
    info->tx_tcp_cksum = 0;

    ret = rte_eth_dev_configure(port, queues, queues, &conf);
    if (ret != 0)
        return ret;
    ret = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx_desc, &tx_desc);
    if (ret != 0)
        return ret;
    int socket = rte_eth_dev_socket_id(port);
    if (socket < 0)
        socket = (int)rte_socket_id();
    for (q = 0; q < queues; q++) {
        struct rte_eth_rxconf rxc = dev.default_rxconf;
        rxc.offloads = conf.rxmode.offloads;
        ret = rte_eth_rx_queue_setup(port, q, rx_desc, (unsigned)socket, &rxc, pool);
        if (ret != 0)
            return ret;
        struct rte_eth_txconf txc = dev.default_txconf;
        txc.offloads = conf.txmode.offloads;
        ret = rte_eth_tx_queue_setup(port, q, tx_desc, (unsigned)socket, &txc);
        if (ret != 0)
            return ret;
    }
    ret = rte_eth_dev_start(port);
    if (ret != 0)
        return ret;
    /* Promiscuous mode is best effort (virtual devices may not support it). */
    (void)rte_eth_promiscuous_enable(port);
    ret = rte_eth_macaddr_get(port, &mac);
    if (ret != 0)
        return ret;
    memcpy(info->mac, mac.addr_bytes, 6);
    uint16_t dev_mtu = 0;
    if (rte_eth_dev_get_mtu(port, &dev_mtu) != 0)
        dev_mtu = 1500;
    info->mtu = info->mtu_unlimited ? mtu : dev_mtu;
    return 0;
}

int shim_rss_conf(uint16_t port, uint8_t *key, uint16_t *key_len, uint16_t *reta,
                  uint16_t *reta_size) {
    struct rte_eth_dev_info dev;
    struct rte_eth_rss_conf conf;
    struct rte_eth_rss_reta_entry64 groups[RTE_ETH_RSS_RETA_SIZE_512 / RTE_ETH_RETA_GROUP_SIZE];
    uint8_t buf[256];
    int ret;
    uint16_t i, n;

    ret = rte_eth_dev_info_get(port, &dev);
    if (ret != 0)
        return ret;
    memset(&conf, 0, sizeof(conf));
    memset(buf, 0, sizeof(buf));
    conf.rss_key = buf;
    conf.rss_key_len = dev.hash_key_size ? dev.hash_key_size : 40;
    if (conf.rss_key_len > sizeof(buf))
        return -EINVAL;
    ret = rte_eth_dev_rss_hash_conf_get(port, &conf);
    if (ret != 0)
        return ret;
    n = conf.rss_key_len < *key_len ? conf.rss_key_len : *key_len;
    memcpy(key, buf, n);
    *key_len = n;

    n = dev.reta_size;
    if (n == 0 || n > RTE_ETH_RSS_RETA_SIZE_512 || n > *reta_size)
        return -ENOTSUP;
    memset(groups, 0, sizeof(groups));
    for (i = 0; i < n / RTE_ETH_RETA_GROUP_SIZE + (n % RTE_ETH_RETA_GROUP_SIZE != 0); i++)
        groups[i].mask = ~0ULL;
    ret = rte_eth_dev_rss_reta_query(port, groups, n);
    if (ret != 0)
        return ret;
    for (i = 0; i < n; i++)
        reta[i] = groups[i / RTE_ETH_RETA_GROUP_SIZE].reta[i % RTE_ETH_RETA_GROUP_SIZE];
    *reta_size = n;
    return 0;
}

int shim_link_up(uint16_t port) {
    struct rte_eth_link link;
    int ret = rte_eth_link_get_nowait(port, &link);
    if (ret != 0)
        return ret;
    return link.link_status == RTE_ETH_LINK_UP;
}

int shim_port_stats(uint16_t port, uint64_t out[5]) {
    struct rte_eth_stats s;
    int ret = rte_eth_stats_get(port, &s);
    if (ret != 0)
        return ret;
    out[0] = s.ipackets;
    out[1] = s.opackets;
    out[2] = s.imissed;
    out[3] = s.ierrors;
    out[4] = s.rx_nombuf;
    return 0;
}
