/* C shim of the dataplane DPDK binding: the static-inline functions and macros of DPDK's
 * headers (which have no symbol in the shared libraries) and the port set-up that fills
 * DPDK's large configuration structs, wrapped as plain exported functions. */
#ifndef DATAPLANE_DPDK_SHIM_H
#define DATAPLANE_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>

/* What the port set-up learnt about the device. */
struct shim_port_info {
    uint8_t mac[6];
    uint16_t max_rx_queues;
    uint16_t max_tx_queues;
    uint16_t mtu;
    /* Largest MTU the device accepts through ethdev (0: unknown). */
    uint16_t max_mtu;
    /* 1 if `mtu` was asked for and the device has no MTU of its own to set (net_memif: a
     * frame spans as many descriptors as it needs), so the asked MTU is used as given. */
    uint8_t mtu_unlimited;
    /* RSS was enabled (more than one queue and the device hashes). */
    uint8_t rss;
    /* The device verifies IPv4 / TCP checksums on receive and computes them on transmit. */
    uint8_t rx_ip_cksum, rx_tcp_cksum, tx_ip_cksum, tx_tcp_cksum;
    char driver[64];
};

int shim_rte_errno(void);
unsigned shim_lcore_id(void);
uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *pool);
int shim_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned n);
void shim_pktmbuf_free(struct rte_mbuf *m);
void shim_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n);
char *shim_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
void *shim_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t shim_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t shim_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t shim_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint64_t shim_pktmbuf_ol_flags(const struct rte_mbuf *m);
unsigned shim_mempool_avail(const struct rte_mempool *pool);
/* Configures and starts `port`. `mtu` 0 keeps the device's MTU; otherwise it is set before
 * the start (-EINVAL if the device cannot carry it, with `info->max_mtu` filled). */
int shim_port_setup(uint16_t port, uint16_t queues, struct rte_mempool *pool, uint16_t rx_desc,
                    uint16_t tx_desc, uint16_t mtu, struct shim_port_info *info);
/* The port's RSS hash key and redirection table: up to `*key_len` key bytes into `key` and up
 * to `*reta_size` queue numbers into `reta`; both sizes are set to what was filled. */
int shim_rss_conf(uint16_t port, uint8_t *key, uint16_t *key_len, uint16_t *reta,
                  uint16_t *reta_size);
/* 1 if the link is up, 0 if down, negative errno on error. */
int shim_link_up(uint16_t port);
/* Packet counters of the port: received, sent, missed (no RX descriptor), RX errors, no-mbuf. */
int shim_port_stats(uint16_t port, uint64_t out[5]);

#endif
