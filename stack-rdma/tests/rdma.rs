//! Integration tests of the messenger over real verbs (Soft-RoCE `rxe0` inside the VM of
//! `scripts/test-rdma-vm.sh`). Without an RDMA device each test prints
//! "skipped: no RDMA device" and passes, so `cargo test --workspace` passes on a laptop; with
//! `DATAPLANE_RDMA_REQUIRED=1` (set by the VM script) a missing device fails them loudly.
//!
//! The messengers bind to `DATAPLANE_RDMA_ADDR` (the address of the netdev under `rxe0`),
//! 127.0.0.1 when unset.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{
    Buf, BufPool, Config, Connection, Dispatcher, Message, Messenger, Policy, PoolConfig,
};
use dataplane_stack_rdma::{Misbehave, RdmaConfig, RdmaStack, NO_DEVICE};
use dataplane_test_support::{payload, start_messenger, wait_until, Backoff, Checker};

const T: Duration = Duration::from_secs(120);

/// The stack, or `None` (with a message) when this machine has no RDMA device.
fn stack_with(cfg: RdmaConfig) -> Option<RdmaStack> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    match RdmaStack::with_config(cfg) {
        Ok(s) => Some(s),
        Err(e) if std::env::var_os("DATAPLANE_RDMA_REQUIRED").is_some() => {
            panic!("DATAPLANE_RDMA_REQUIRED is set but the RDMA stack failed: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no RDMA device ({e})");
            None
        }
    }
}

fn stack() -> Option<RdmaStack> {
    stack_with(RdmaConfig::default())
}

fn ip() -> IpAddr {
    std::env::var("DATAPLANE_RDMA_ADDR")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn config() -> Config {
    Config {
        workers: 1,
        backend: "rdma".into(),
        rx_buffers: 64,
        hugepages: false,
        keepalive_interval_ms: 500,
        peer_timeout_ms: 20_000,
        handshake_timeout_ms: 20_000,
        reconnect_min_ms: 5,
        reconnect_max_ms: 200,
        ..Config::default()
    }
}

fn messenger(name: &str, s: &RdmaStack, d: Arc<dyn Dispatcher>, bind: bool) -> Messenger {
    messenger_cfg(name, s, d, bind, config())
}

fn messenger_cfg(
    name: &str,
    s: &RdmaStack,
    d: Arc<dyn Dispatcher>,
    bind: bool,
    cfg: Config,
) -> Messenger {
    let bind = bind.then(|| SocketAddr::new(ip(), 0));
    start_messenger(
        name,
        cfg,
        Arc::new(s.clone()),
        d,
        Policy::lossless_client(),
        bind,
    )
}

/// Sends, retrying while backpressure refuses the message (for up to `T`).
fn send_retry(conn: &Connection, m: Message) {
    dataplane_test_support::send_retry(conn, m, T, Backoff::Sleep(Duration::from_micros(200)));
}

/// [`payload`]'s bytes in a buffer of `pool` (waiting while every buffer is in use: the
/// messenger holds sent messages until they are acknowledged).
fn pool_payload(pool: &BufPool, stream: u32, seq: u64, len: usize) -> Buf {
    let end = Instant::now() + T;
    let mut b = loop {
        match pool.alloc() {
            Ok(b) => break b,
            Err(e) => {
                assert!(Instant::now() < end, "pool never had a free buffer: {e}");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    };
    let p = payload(stream, seq, len);
    assert_eq!(b.extend_from_slice(&p), p.len(), "pool buffer too small");
    b.freeze()
}

/// A pool for [`pool_payload`]: `count` buffers of `size` bytes.
fn test_pool(size: usize, count: usize) -> BufPool {
    BufPool::new(&PoolConfig {
        buf_size: size,
        count,
        hugepages: false,
        lock: false,
        prefault: false,
    })
    .expect("buffer pool")
}

/// Client and server messengers, each on its own stack (own PD, CQs, registered memory).
struct Pair {
    srv_stack: RdmaStack,
    cli_stack: RdmaStack,
    srv_d: Arc<Checker>,
    server: Messenger,
    client: Messenger,
    conn: Connection,
}

fn pair() -> Option<Pair> {
    pair_with(RdmaConfig::default())
}

fn pair_with(cfg: RdmaConfig) -> Option<Pair> {
    let srv_stack = stack_with(cfg.clone())?;
    let cli_stack = stack_with(cfg)?;
    let srv_d = Checker::fast();
    let server = messenger("server", &srv_stack, srv_d.clone(), true);
    let client = messenger("client", &cli_stack, Checker::fast(), false);
    let conn = client
        .connect(server.addr().expect("bound"))
        .expect("connect");
    Some(Pair {
        srv_stack,
        cli_stack,
        srv_d,
        server,
        client,
        conn,
    })
}

fn assert_torn_down(p: Pair) {
    let Pair {
        srv_stack,
        cli_stack,
        server,
        client,
        conn,
        ..
    } = p;
    drop(conn);
    client.shutdown();
    server.shutdown();
    drop(client);
    drop(server);
    assert_released("client", &cli_stack);
    assert_released("server", &srv_stack);
    assert_no_kernel_objects(&["qp", "cq", "srq"]);
}

/// The server saw no failure, the pair tears down clean, and every buffer the server's stack
/// lent came back.
fn assert_torn_down_lent_returned(p: Pair, srv: &RdmaStack) {
    let s = srv.stats();
    assert_eq!(s.failures.load(Ordering::Relaxed), 0);
    assert_torn_down(p);
    assert_eq!(
        s.lent_outstanding.load(Ordering::Relaxed),
        0,
        "lent buffers not given back"
    );
}

/// Asserts that `s`, the stack of `who`, whose messengers are shut down, lets go of every QP
/// (within 10 s) and of every registered slot.
fn assert_released(who: &str, s: &RdmaStack) {
    assert!(
        wait_until(Duration::from_secs(10), || s
            .stats()
            .live_qps
            .load(Ordering::Relaxed)
            == 0),
        "{who}: {} QPs still alive after shutdown",
        s.stats().live_qps.load(Ordering::Relaxed)
    );
    let (arenas, in_use) = s.memory_usage();
    assert_eq!(
        in_use, 0,
        "{who}: {in_use} registered slots still in use ({arenas} arenas)"
    );
}

/// How many user-space `kind` objects (`qp`, `cq`, `mr`, `pd`) the kernel lists
/// (`rdma resource show`; kernel-owned ones carry no pid); `None` without the iproute2 `rdma`
/// tool. The kernel records the creating *thread*, so this counts every user process's
/// objects: in the VM the tests run one at a time and nothing else uses RDMA.
fn kernel_objects(kind: &str) -> Option<usize> {
    let pid = " pid ";
    let out = std::process::Command::new("rdma")
        .args(["resource", "show", kind])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().filter(|l| l.contains(pid)).count())
}

/// Only the protection domains and arena MRs of the still-open stacks may remain.
fn assert_no_kernel_objects(kinds: &[&str]) {
    for kind in kinds {
        if let Some(n) = kernel_objects(kind) {
            assert_eq!(n, 0, "the kernel still lists {n} {kind}s of this process");
        }
    }
}

#[test]
fn no_device_is_a_clear_error_not_a_crash() {
    match RdmaStack::new() {
        Ok(s) => eprintln!("RDMA device present: {}", s.describe()),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("skipped: no RDMA device; the stack said: {msg}");
            assert!(msg.contains(NO_DEVICE), "unexpected error: {msg}");
            assert!(
                std::env::var_os("DATAPLANE_RDMA_REQUIRED").is_none(),
                "DATAPLANE_RDMA_REQUIRED is set but: {msg}"
            );
        }
    }
}

#[test]
fn rdma_connect_and_small_messages_byte_for_byte() {
    let Some(p) = pair() else { return };
    for i in 0..1000u64 {
        send_retry(
            &p.conn,
            Message::new(1, payload(0, i, 16 + (i % 200) as usize)),
        );
    }
    p.srv_d.assert_delivered(1000, T);
    assert_eq!(p.cli_stack.stats().failures.load(Ordering::Relaxed), 0);
    assert_eq!(p.srv_stack.stats().failures.load(Ordering::Relaxed), 0);
    assert!(p.cli_stack.stats().sends.load(Ordering::Relaxed) > 0);
    // The leak check below can see our objects: while connected, the kernel lists our QPs.
    if let Some(n) = kernel_objects("qp") {
        assert!(
            n >= 2,
            "the kernel lists {n} QPs of this process while connected"
        );
    }
    // The client's shutdown reaches the server as a close, so the server ends the session
    // (after a reset a lossless server keeps it, waiting for the client to come back).
    p.client.shutdown();
    assert!(
        wait_until(Duration::from_secs(5), || p
            .server
            .worker_loads()
            .iter()
            .sum::<usize>()
            == 0),
        "the server still holds the session of a client that shut down: loads {:?}",
        p.server.worker_loads()
    );
    assert_torn_down(p);
}

#[test]
fn rdma_sixteen_mib_messages_byte_for_byte() {
    let Some(p) = pair() else { return };
    for i in 0..3 {
        send_retry(&p.conn, Message::new(1, payload(0, i, 16 << 20)));
    }
    p.srv_d.assert_delivered(3, T);
    assert_eq!(p.srv_d.bytes(), 3 * (16 << 20));
    // Both ends are RDMA: the payload crcs were left to the transport (the checker
    // compared every byte above).
    for (end, m) in [("client", &p.client), ("server", &p.server)] {
        let n = m.counters().transport_crc_sessions;
        assert!(n >= 1, "{end}: payload crcs not left to the transport");
    }
    // Zero-copy receive of frames larger than a write chunk: each message spans 32 chunks,
    // which are lent and gathered into its payload list instead of copied together.
    let srv = p.srv_stack.clone();
    let s = srv.stats();
    let c = p.server.counters();
    let copied = s.recv_copied_bytes.load(Ordering::Relaxed);
    eprintln!(
        "16 MiB messages: {} gathered, {} write chunks lent, {} bytes decoded in place, \
         {copied} bytes copied",
        c.msgs_gathered,
        s.lent_write_chunks.load(Ordering::Relaxed),
        c.bytes_lent
    );
    if srv.uses_memory_windows() {
        assert!(c.msgs_gathered >= 1, "no 16 MiB message was gathered");
        assert!(
            c.bytes_lent >= 3 * (16 << 20) / 2,
            "only {} of {} bytes decoded where they landed",
            c.bytes_lent,
            3 * (16 << 20)
        );
    }
    assert_torn_down_lent_returned(p, &srv);
}

#[test]
fn rdma_payload_crcs_stay_when_one_end_keeps_them() {
    // The server keeps end-to-end payload crcs (`trust_transport_crc = false`): the
    // handshake then keeps them both ways, and everything arrives byte for byte.
    let Some(srv_stack) = stack() else { return };
    let Some(cli_stack) = stack() else { return };
    let srv_d = Checker::fast();
    let strict = Config {
        trust_transport_crc: false,
        ..config()
    };
    let server = messenger_cfg("server", &srv_stack, srv_d.clone(), true, strict);
    let client = messenger("client", &cli_stack, Checker::fast(), false);
    let conn = client
        .connect(server.addr().expect("bound"))
        .expect("connect");
    for i in 0..200u64 {
        let len = if i % 50 == 0 {
            1 << 20
        } else {
            16 + (i % 300) as usize
        };
        send_retry(&conn, Message::new(1, payload(0, i, len)));
    }
    srv_d.assert_delivered(200, T);
    assert_eq!(client.counters().transport_crc_sessions, 0);
    assert_eq!(server.counters().transport_crc_sessions, 0);
    assert_eq!(server.counters().malformed, 0);
    drop(conn);
    client.shutdown();
    server.shutdown();
}

#[test]
fn rdma_thousands_of_messages_never_exceed_credits() {
    thousands_of_messages(true);
}

#[test]
fn rdma_thousands_of_messages_never_exceed_credits_per_qp_receive_queue() {
    thousands_of_messages(false);
}

fn thousands_of_messages(shared_rq: bool) {
    // A small window so that the sender really runs out of credits and waits.
    // Busy polling on: this test also covers the worker's CQ poller and its arming.
    let cfg = RdmaConfig {
        recv_depth: 8,
        srq_share: 8,
        shared_rq,
        send_depth: 16,
        slot_size: 8 << 10,
        busy_poll: Duration::from_micros(200),
        ..RdmaConfig::default()
    };
    let Some(p) = pair_with(cfg) else { return };
    const N: u64 = 20_000;
    for i in 0..N {
        send_retry(
            &p.conn,
            Message::new(1, payload(0, i, 64 + (i % 3000) as usize)),
        );
    }
    p.srv_d.assert_delivered(N, T);
    let (c, s) = (p.cli_stack.stats(), p.srv_stack.stats());
    let max = s.max_recv_outstanding.load(Ordering::Relaxed);
    eprintln!(
        "credits ({}): {} sends, {} doorbells, {} stalls, {} credit messages, max outstanding {max}/8",
        if shared_rq { "SRQ" } else { "per-QP RQ" },
        c.sends.load(Ordering::Relaxed),
        c.doorbells.load(Ordering::Relaxed),
        c.credit_stalls.load(Ordering::Relaxed),
        s.credit_messages.load(Ordering::Relaxed),
    );
    assert!(max <= 8, "receiver had {max} > 8 receives outstanding");
    assert_eq!(p.srv_stack.uses_srq(), shared_rq);
    if shared_rq {
        let low = s.srq_posted_min.load(Ordering::Relaxed);
        assert!(low >= 0, "SRQ posted count went negative ({low})");
        assert!(
            s.srq_granted_max.load(Ordering::Relaxed) <= s.srq_buffers_max.load(Ordering::Relaxed)
        );
    }
    assert!(
        c.credit_stalls.load(Ordering::Relaxed) > 0,
        "the sender never ran out of credits: the test did not exercise flow control"
    );
    assert_eq!(c.failures.load(Ordering::Relaxed), 0);
    assert_eq!(s.failures.load(Ordering::Relaxed), 0);
    assert!(
        c.doorbells.load(Ordering::Relaxed) < c.sends.load(Ordering::Relaxed),
        "work requests were batched under one doorbell"
    );
    assert_torn_down(p);
}

/// Sends `rounds` rounds of `per_round` messages (payload `make(seq)`), forcing every QP of
/// the client to error after each round while messages are still in flight, then checks that
/// every message arrived exactly once, in order, and was acknowledged. Returns (QPs forced to
/// error, messages sent).
fn reconnect_rounds(
    p: &Pair,
    rounds: u64,
    per_round: u64,
    mut make: impl FnMut(u64) -> Buf,
) -> (usize, u64) {
    let mut sent = 0u64;
    let mut forced = 0;
    for round in 0..rounds {
        for _ in 0..per_round {
            send_retry(&p.conn, Message::new(1, make(sent)));
            sent += 1;
        }
        // Let traffic flow on a live QP, then break every QP of the client (as a NIC or
        // link failure would) while messages are still in flight.
        let live = &p.cli_stack.stats().live_qps;
        assert!(
            wait_until(T, || p.srv_d.count() >= sent - per_round / 2
                && live.load(Ordering::Relaxed) >= 1),
            "round {round}: delivered {} of {sent}",
            p.srv_d.count()
        );
        let n = p.cli_stack.force_qp_errors();
        assert!(n >= 1, "round {round}: no QP to fail");
        forced += n;
        assert!(
            wait_until(T, || p.client.counters().reconnects > round),
            "round {round}: the client never reconnected"
        );
    }
    p.srv_d
        .assert_delivered_exactly_once(sent, T, Duration::from_millis(200));
    let c = p.client.counters();
    assert!(c.reconnects >= rounds, "reconnected {} times", c.reconnects);
    assert!(p.cli_stack.stats().failures.load(Ordering::Relaxed) >= rounds);
    assert!(
        wait_until(T, || p.conn.queued() == (0, 0)),
        "everything acknowledged: {:?}",
        p.conn.queued()
    );
    (forced, sent)
}

#[test]
fn rdma_lossless_reconnect_after_qp_forced_to_error() {
    let Some(p) = pair() else { return };
    let (forced, n) = reconnect_rounds(&p, 4, 1500, |seq| {
        payload(0, seq, 100 + (seq % 900) as usize)
    });
    eprintln!(
        "reconnect: {forced} QPs forced to error, {} reconnects, {n} delivered exactly once in order",
        p.client.counters().reconnects
    );
    assert_torn_down(p);
}

#[test]
fn rdma_ping_pong_echo_round_trips() {
    // Client busy-polls its CQ, server sleeps on its completion channel: both paths.
    let busy = RdmaConfig {
        busy_poll: Duration::from_micros(200),
        ..RdmaConfig::default()
    };
    let sleeping = RdmaConfig {
        busy_poll: Duration::ZERO,
        ..RdmaConfig::default()
    };
    let Some(srv_stack) = stack_with(sleeping) else {
        return;
    };
    let Some(cli_stack) = stack_with(busy) else {
        return;
    };
    let echo = Checker::echo();
    let server = messenger("server", &srv_stack, echo, true);
    let back = Checker::fast();
    let client = messenger("client", &cli_stack, back.clone(), false);
    let conn = client
        .connect(server.addr().expect("bound"))
        .expect("connect");
    for i in 0..500u64 {
        send_retry(&conn, Message::new(1, payload(0, i, 64)));
        assert!(
            wait_until(T, || back.count() == i + 1),
            "echo {i} never came back"
        );
    }
    back.assert_clean();
    // Each ping and each echo went alone, a 108-byte frame: inline in its work request, read
    // by the post straight from the messenger's slices, never copied into a send slot first.
    for (end, s) in [("client", &cli_stack), ("server", &srv_stack)] {
        let inlined = s.stats().inline_sends.load(Ordering::Relaxed);
        assert!(inlined >= 500, "{end}: only {inlined} of 500 SENDs inline");
        let copied = s.stats().copied_bytes.load(Ordering::Relaxed);
        assert!(
            copied < 500 * 108 / 10,
            "{end}: {copied} bytes copied into send slots for 500 inline frames"
        );
    }
    drop(conn);
    client.shutdown();
    server.shutdown();
}

/// A server that echoes what it receives sends large messages back from the very memory they
/// arrived in: receive slots (SENDs) and write chunks (RDMA WRITEs) it lent to the messenger
/// are its own registered memory, so the echo goes out zero-copy, and the client gets every
/// message back byte for byte.
#[test]
fn rdma_echoed_messages_go_back_zero_copy_from_lent_memory() {
    let Some(srv_stack) = stack() else { return };
    let Some(cli_stack) = stack() else { return };
    let server = messenger("server", &srv_stack, Checker::echo(), true);
    let back = Checker::fast();
    let client = messenger("client", &cli_stack, back.clone(), false);
    let conn = client
        .connect(server.addr().expect("bound"))
        .expect("connect");
    const N: u64 = 40;
    let mut big = 0u64;
    for i in 0..N {
        let len = if i % 2 == 0 { 64 << 10 } else { 300 << 10 };
        big += len as u64;
        send_retry(&conn, Message::new(1, payload(0, i, len)));
        assert!(
            wait_until(T, || back.count() == i + 1),
            "echo {i} never came back"
        );
    }
    back.assert_clean();
    let s = srv_stack.stats();
    let (lent, zc, copied) = (
        s.lent_bytes.load(Ordering::Relaxed),
        s.zero_copy_bytes.load(Ordering::Relaxed),
        s.copied_bytes.load(Ordering::Relaxed),
    );
    eprintln!(
        "echo from lent memory: {lent} bytes received in lent buffers, {zc} bytes echoed \
         zero-copy, {copied} copied ({big} payload bytes)"
    );
    assert!(lent >= big / 2, "only {lent} of {big} bytes were lent");
    assert!(
        zc >= lent / 2,
        "only {zc} bytes went back zero-copy ({lent} received in lent buffers)"
    );
    assert_eq!(s.failures.load(Ordering::Relaxed), 0);
    drop(conn);
    client.shutdown();
    server.shutdown();
    drop((client, server));
    assert_released("server", &srv_stack);
    assert_released("client", &cli_stack);
    assert_eq!(s.lent_outstanding.load(Ordering::Relaxed), 0);
}

#[test]
fn rdma_bad_side_channel_peer_is_refused_and_others_continue() {
    use std::io::{Read, Write};
    let Some(p) = pair() else { return };
    let addr = p.server.addr().expect("bound");
    // A peer that speaks garbage instead of the queue-pair hello.
    let mut bad = std::net::TcpStream::connect(addr).expect("tcp connect");
    bad.write_all(&[0xAB; 64]).expect("write");
    bad.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut sink = Vec::new();
    // The server closes it: read returns EOF (after our hello bytes) or an error.
    let _ = bad.read_to_end(&mut sink);
    // The good connection is unaffected.
    for i in 0..200u64 {
        send_retry(&p.conn, Message::new(1, payload(0, i, 300)));
    }
    p.srv_d.assert_delivered(200, T);
    assert!(p.srv_stack.stats().failures.load(Ordering::Relaxed) >= 1);
    assert_torn_down(p);
}

/// A server and two clients of it, one misbehaving and one good, each on its own stack.
struct Trio {
    stacks: [(&'static str, RdmaStack); 3],
    server: Messenger,
    bad: Messenger,
    good: Messenger,
    bad_conn: Connection,
    good_conn: Connection,
}

impl Trio {
    fn new(srv: RdmaStack, bad: RdmaStack, good: RdmaStack, srv_d: Arc<dyn Dispatcher>) -> Trio {
        let server = messenger("server", &srv, srv_d, true);
        let addr = server.addr().expect("bound");
        let bad_m = messenger("bad", &bad, Checker::fast(), false);
        let good_m = messenger("good", &good, Checker::fast(), false);
        let bad_conn = bad_m.connect(addr).expect("connect");
        let good_conn = good_m.connect(addr).expect("connect");
        Trio {
            stacks: [("server", srv), ("bad", bad), ("good", good)],
            server,
            bad: bad_m,
            good: good_m,
            bad_conn,
            good_conn,
        }
    }

    fn stack(&self, i: usize) -> &RdmaStack {
        &self.stacks[i].1
    }

    /// Waits until the stack `detector` (0 server, 1 bad) failed a connection, and returns why.
    fn failure(&self, detector: usize, what: &str) -> String {
        let s = self.stack(detector);
        assert!(
            wait_until(T, || s.stats().last_failure.lock().is_some()),
            "{what} was never detected"
        );
        s.stats().last_failure.lock().clone().unwrap_or_default()
    }

    /// Shuts everything down and checks that no QP, slot or kernel object is left.
    /// `release` runs once the messengers are gone (no more deliveries), before the checks:
    /// a test whose application keeps messages lets go of them there.
    fn finish(self, release: impl FnOnce()) {
        let Trio {
            stacks,
            server,
            bad,
            good,
            bad_conn,
            good_conn,
        } = self;
        assert_eq!(stacks[2].1.stats().failures.load(Ordering::Relaxed), 0);
        drop((bad_conn, good_conn));
        for m in [&bad, &good, &server] {
            m.shutdown();
        }
        drop((bad, good, server));
        release();
        for (who, s) in &stacks {
            assert_released(who, s);
        }
        assert_no_kernel_objects(&["qp", "cq", "srq"]);
    }
}

/// A misbehaving client (`misbehave`) and a good one talk to the same server: the bad
/// connection is torn down with one of `want` in the reason (on the side that detects it),
/// the good one delivers everything, and nothing leaks.
fn bad_peer_case(misbehave: Misbehave, want: &[&str], detector_is_server: bool, shared_rq: bool) {
    // A narrow receive window of small buffers and a deep send ring of small slots on the
    // bad side: an overrun cannot hide behind the receiver re-posting fast enough.
    let Some(srv_stack) = stack_with(RdmaConfig {
        recv_depth: 4,
        srq_share: 4,
        shared_rq,
        slot_size: 8 << 10,
        ..RdmaConfig::default()
    }) else {
        return;
    };
    let Some(bad_stack) = stack_with(RdmaConfig {
        misbehave,
        send_depth: 64,
        slot_size: 8 << 10,
        // The bad WRITE case must write: any backlog of 16 KiB goes by RDMA WRITE.
        write_min: if misbehave == Misbehave::WriteOutsideWindow {
            16 << 10
        } else {
            RdmaConfig::default().write_min
        },
        ..RdmaConfig::default()
    }) else {
        return;
    };
    let Some(good_stack) = stack() else { return };
    let srv_d = Checker::fast();
    let t = Trio::new(srv_stack, bad_stack, good_stack, srv_d.clone());
    // The bad client streams enough to overrun any window; failures only queue, never panic.
    for i in 0..400u64 {
        let _ = t.bad_conn.send(Message::new(1, payload(1, i, 16 << 10)));
    }
    const N: u64 = 2000;
    for i in 0..N {
        send_retry(&t.good_conn, Message::new(1, payload(0, i, 500)));
    }
    let why = t.failure(usize::from(!detector_is_server), "the bad peer");
    eprintln!("bad peer ({misbehave:?}): torn down with \"{why}\"");
    assert!(
        want.iter().any(|w| why.contains(w)),
        "unexpected reason: {why}"
    );
    let good_done = || srv_d.next_seq(0) == Some(N);
    assert!(wait_until(T, good_done), "the good connection stalled");
    srv_d.assert_clean();
    t.finish(|| {});
}

#[test]
fn rdma_peer_exceeding_credits_is_torn_down_and_others_continue() {
    // Shared receive queue: the overrunning peer's SENDs land in SRQ buffers that back the
    // other connection's credits; the receiver counts every SEND against the credits it
    // granted that peer and tears it down; the good peer's SENDs wait (RNR retry) meanwhile.
    bad_peer_case(Misbehave::OverrunCredits, &["credits exceeded"], true, true);
}

#[test]
fn rdma_peer_exceeding_credits_is_torn_down_and_others_continue_per_qp_receive_queue() {
    // The receiver has no buffer posted: RNR, and with rnr_retry 0 the overrunning sender's
    // connection fails at once instead of retrying forever. When the receiver had re-posted
    // a buffer just in time, the overrunning SEND lands instead: the receiver tears the
    // connection down for it, and the sender, whose credit count never went below zero for
    // the SENDs it had no credit for, sees those credits come back above its window
    // ("more than it posted"). The sender's stack keeps reconnecting and overrunning, so its
    // latest failure is either (seen once in a CI run).
    bad_peer_case(
        Misbehave::OverrunCredits,
        &["credits exceeded", "more than it posted"],
        false,
        false,
    );
}

#[test]
fn rdma_write_outside_the_advertised_buffer_is_torn_down_and_others_continue() {
    // The bad peer RDMA-WRITEs into the chunk after the one the receiver's ring expects
    // (inside the registered buffer, outside the window it granted): the receiver checks
    // every WRITE's chunk and length against what it advertised and tears that connection
    // down; the good peer (which also writes: 16 KiB messages in bulk) is unaffected.
    bad_peer_case(
        Misbehave::WriteOutsideWindow,
        &["RDMA write outside the advertised buffer"],
        true,
        true,
    );
}

#[test]
fn rdma_write_chunks_granted_out_of_order_are_torn_down_and_others_continue() {
    // Memory-window mode: the bad client grants its write chunks out of ring order (it
    // receives too: acks); the server checks every grant and fails that connection alone.
    bad_peer_case(
        Misbehave::GrantOutOfOrder,
        &["peer granted write chunk 1, expected chunk 0"],
        true,
        true,
    );
}

/// Large messages go by RDMA WRITE-with-immediate into the receiver's advertised buffer
/// (several send slots gathered into one work request), interleaved with SENDs for the small
/// frames, and arrive byte for byte.
#[test]
fn rdma_large_messages_use_rdma_write_byte_for_byte() {
    let Some(p) = pair() else { return };
    const N: u64 = 48;
    for i in 0..N {
        let len = match i % 3 {
            0 => 1 << 20,
            1 => (300 << 10) + 7,
            _ => 100,
        };
        send_retry(&p.conn, Message::new(1, payload(0, i, len)));
    }
    p.srv_d.assert_delivered(N, T);
    let (c, s) = (p.cli_stack.stats(), p.srv_stack.stats());
    let writes = c.writes.load(Ordering::Relaxed);
    let wbytes = c.write_bytes.load(Ordering::Relaxed);
    eprintln!(
        "write: {writes} RDMA WRITEs ({wbytes} bytes), {} received, {} WRs in all, {} failures",
        s.writes_received.load(Ordering::Relaxed),
        c.sends.load(Ordering::Relaxed),
        s.failures.load(Ordering::Relaxed),
    );
    assert!(writes > 0, "no RDMA WRITE was used");
    assert_eq!(s.writes_received.load(Ordering::Relaxed), writes);
    // Large pieces go by WRITE while a chunk is free, by SENDs otherwise (never waiting).
    assert!(
        wbytes >= 8 << 20,
        "a good part of the bytes went by RDMA WRITE ({wbytes})"
    );
    assert_eq!(c.failures.load(Ordering::Relaxed), 0);
    assert_eq!(s.failures.load(Ordering::Relaxed), 0);
    assert_torn_down(p);
}

#[test]
fn rdma_bad_immediate_is_torn_down_and_others_continue() {
    bad_peer_case(
        Misbehave::BadImmediate,
        &["bad immediate value"],
        true,
        true,
    );
}

/// Client side of a ping-pong the workers run alone: each echo sends the next ping (stream 2)
/// from the client's worker thread, until `limit` echoes came back.
#[derive(Default)]
struct Relay {
    got: std::sync::atomic::AtomicU64,
    limit: std::sync::atomic::AtomicU64,
}

impl Dispatcher for Relay {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, conn: &Connection, _m: Message) {
        let got = self.got.fetch_add(1, Ordering::SeqCst) + 1;
        if got < self.limit.load(Ordering::SeqCst) {
            let _ = conn.send(Message::new(1, payload(2, got, 64)));
        }
    }
}

/// The worker's busy rounds poll only the CQs of connections with recent completions: with
/// sixteen connections on the server's one worker and traffic on one, the server's poller
/// makes about one CQ poll per round, not sixteen. A connection that went quiet (armed,
/// left to its completion channel) comes back into the busy rounds when traffic resumes.
#[test]
fn rdma_idle_connections_cost_busy_rounds_nothing() {
    const CONNS: usize = 16;
    const N: u64 = 20_000;
    let (Some(srv_stack), Some(cli_stack)) = (stack(), stack()) else {
        return;
    };
    // Keepalives far apart, so idle connections stay idle while the stream runs.
    let cfg = || Config {
        keepalive_interval_ms: 10_000,
        ..config()
    };
    let d = Checker::fast();
    let server = messenger_cfg("server", &srv_stack, d.clone(), true, cfg());
    let addr = server.addr().expect("bound");
    let clients: Vec<(Messenger, Connection)> = (0..CONNS)
        .map(|i| {
            let m = messenger_cfg(
                &format!("client{i}"),
                &cli_stack,
                Checker::fast(),
                false,
                cfg(),
            );
            let c = m.connect(addr).expect("connect");
            (m, c)
        })
        .collect();
    for (s, (_, c)) in clients.iter().enumerate() {
        send_retry(c, Message::new(1, payload(s as u32, 0, 64)));
    }
    d.assert_delivered(CONNS as u64, T);
    // Well past the busy-poll window (1 ms): every connection has gone quiet.
    std::thread::sleep(Duration::from_millis(200));
    let st = srv_stack.stats();
    let snap = || {
        (
            st.poller_rounds.load(Ordering::Relaxed),
            st.poller_cq_polls.load(Ordering::Relaxed),
        )
    };
    let (r0, p0) = snap();
    let (_, busy) = &clients[0];
    for i in 1..=N {
        send_retry(busy, Message::new(1, payload(0, i, 64)));
    }
    d.assert_delivered(CONNS as u64 + N, T);
    let (r1, p1) = snap();
    let (rounds, polls) = (r1 - r0, p1 - p0);
    eprintln!(
        "poller: {CONNS} connections, one streaming {N} messages: {rounds} busy rounds, {polls} \
         CQ polls ({:.2} per round)",
        polls as f64 / rounds.max(1) as f64
    );
    assert!(
        rounds >= 100,
        "the server's worker hardly polled ({rounds} rounds)"
    );
    assert!(
        polls <= rounds + rounds / 2 + 100,
        "idle connections polled in busy rounds: {polls} CQ polls in {rounds} rounds \
         ({CONNS} connections, one busy)"
    );
    // A quiet connection that gets traffic again stays in the busy rounds: after a quiet
    // spell, a ping-pong run by the two workers alone (each echo sends the next ping from the
    // client's worker, a round trip far inside the busy-poll window). Each end's channel wakes
    // its worker once; a socket armed again after each wake-up takes an event per message.
    let echo = messenger_cfg("echo", &srv_stack, Checker::echo(), true, cfg());
    let relay = Arc::new(Relay::default());
    let pinger = messenger_cfg("pinger", &cli_stack, relay.clone(), false, cfg());
    let conn = pinger
        .connect(echo.addr().expect("bound"))
        .expect("connect");
    relay.limit.store(1, Ordering::SeqCst);
    send_retry(&conn, Message::new(1, payload(2, 0, 64)));
    assert!(
        wait_until(T, || relay.got.load(Ordering::SeqCst) == 1),
        "no first echo"
    );
    std::thread::sleep(Duration::from_millis(200));
    const M: u64 = 200;
    let ce = cli_stack.stats();
    let (s0, c0) = (
        st.cq_events.load(Ordering::Relaxed),
        ce.cq_events.load(Ordering::Relaxed),
    );
    relay.limit.store(1 + M, Ordering::SeqCst);
    send_retry(&conn, Message::new(1, payload(2, 1, 64)));
    assert!(
        wait_until(T, || relay.got.load(Ordering::SeqCst) == 1 + M),
        "the ping-pong stalled after {} echoes",
        relay.got.load(Ordering::SeqCst)
    );
    let (srv_events, cli_events) = (
        st.cq_events.load(Ordering::Relaxed) - s0,
        ce.cq_events.load(Ordering::Relaxed) - c0,
    );
    eprintln!(
        "poller: {M} round trips after a quiet spell: {srv_events} channel events on the \
         echoing end, {cli_events} on the pinging end"
    );
    assert!(
        srv_events <= M / 4 && cli_events <= M / 4,
        "{srv_events} / {cli_events} completion-channel events for {M} round trips: a woken \
         connection left the busy rounds again"
    );
    drop(conn);
    pinger.shutdown();
    echo.shutdown();
    drop(pinger);
    drop(echo);
    assert_eq!(st.failures.load(Ordering::Relaxed), 0);
    for (m, _) in &clients {
        m.shutdown();
    }
    server.shutdown();
    drop(clients);
    drop(server);
    assert_released("server", &srv_stack);
    assert_released("client", &cli_stack);
}

/// Sixteen connections into one server stack share its SRQ: every message arrives exactly
/// once and in order, no connection ever has more receives outstanding than its share, the
/// SRQ never runs dry, it holds far fewer buffers than sixteen per-QP receive queues would,
/// and it is gone (with every QP, CQ and buffer) after shutdown.
#[test]
fn rdma_sixteen_connections_share_one_srq() {
    const CONNS: usize = 16;
    const N: u64 = 2000;
    let share = 8;
    let srv_cfg = RdmaConfig {
        srq_share: share,
        slot_size: 16 << 10,
        ..RdmaConfig::default()
    };
    let per_qp_depth = u64::from(srv_cfg.recv_depth);
    let Some(srv_stack) = stack_with(srv_cfg) else {
        return;
    };
    assert!(srv_stack.uses_srq(), "Soft-RoCE supports SRQs");
    let Some(cli_stack) = stack_with(RdmaConfig {
        slot_size: 16 << 10,
        ..RdmaConfig::default()
    }) else {
        return;
    };
    let d = Checker::fast();
    let server = messenger("server", &srv_stack, d.clone(), true);
    let addr = server.addr().expect("bound");
    let clients: Vec<(Messenger, Connection)> = (0..CONNS)
        .map(|i| {
            let m = messenger(&format!("client{i}"), &cli_stack, Checker::fast(), false);
            let c = m.connect(addr).expect("connect");
            (m, c)
        })
        .collect();
    for i in 0..N {
        for (s, (_, c)) in clients.iter().enumerate() {
            send_retry(
                c,
                Message::new(1, payload(s as u32, i, 100 + (i % 2000) as usize)),
            );
        }
    }
    let total = N * CONNS as u64;
    d.assert_delivered(total, T);
    let st = srv_stack.stats();
    let (bufs, granted) = srv_stack.srq_usage().expect("SRQ mode");
    let bufs_max = st.srq_buffers_max.load(Ordering::Relaxed);
    let granted_max = st.srq_granted_max.load(Ordering::Relaxed);
    let low = st.srq_posted_min.load(Ordering::Relaxed);
    let max_out = st.max_recv_outstanding.load(Ordering::Relaxed);
    eprintln!(
        "srq: {CONNS} connections, {total} messages, {} receives, SRQ {bufs} buffers ({granted} \
         credits granted; peak {bufs_max} buffers, {granted_max} credits) vs {} for per-QP \
         receive queues, lowest posted {low}, max outstanding per connection {max_out}/{share}",
        st.recvs.load(Ordering::Relaxed),
        CONNS as u64 * per_qp_depth,
    );
    assert_eq!(
        granted,
        CONNS as u32 * share,
        "one share per live connection"
    );
    assert!(
        granted_max <= bufs_max,
        "credits granted beyond posted buffers"
    );
    assert!(low >= 0, "SRQ posted count went negative ({low})");
    assert!(
        max_out <= u64::from(share),
        "a peer exceeded its share ({max_out})"
    );
    assert!(
        bufs_max < CONNS as u64 * per_qp_depth,
        "SRQ ({bufs_max} buffers) not smaller than per-QP receive queues"
    );
    assert_eq!(st.failures.load(Ordering::Relaxed), 0);
    assert_eq!(cli_stack.stats().failures.load(Ordering::Relaxed), 0);
    for (m, _) in &clients {
        m.shutdown();
    }
    server.shutdown();
    drop(clients);
    drop(server);
    for (who, s) in [("server", &srv_stack), ("client", &cli_stack)] {
        assert_released(who, s);
        assert_eq!(
            s.srq_usage(),
            Some((0, 0)),
            "{who}: SRQ left after shutdown"
        );
    }
    assert_no_kernel_objects(&["qp", "cq", "srq"]);
}

/// A server whose SRQ may back only two connections' credits refuses the third with a
/// clear reason and keeps serving the first two.
#[test]
fn rdma_srq_budget_exhausted_refuses_new_connections() {
    let Some(srv_stack) = stack_with(RdmaConfig {
        srq_share: 8,
        srq_max_wr: 16,
        ..RdmaConfig::default()
    }) else {
        return;
    };
    let Some(cli_stack) = stack() else { return };
    let d = Checker::fast();
    let server = messenger("server", &srv_stack, d.clone(), true);
    let addr = server.addr().expect("bound");
    let mut clients = Vec::new();
    for i in 0..2 {
        let m = messenger(&format!("client{i}"), &cli_stack, Checker::fast(), false);
        let c = m.connect(addr).expect("connect");
        send_retry(&c, Message::new(1, payload(i, 0, 100)));
        clients.push((m, c));
    }
    assert!(wait_until(T, || d.count() == 2), "first two connections up");
    let third = messenger("client2", &cli_stack, Checker::fast(), false);
    let c3 = third.connect(addr).expect("connect");
    let _ = c3.send(Message::new(1, payload(2, 0, 100)));
    let st = srv_stack.stats();
    assert!(
        wait_until(T, || st.srq_refused.load(Ordering::Relaxed) >= 1),
        "the third connection was not refused"
    );
    eprintln!(
        "srq budget: {} refused",
        st.srq_refused.load(Ordering::Relaxed)
    );
    for i in 1..200u64 {
        for (s, (_, c)) in clients.iter().enumerate() {
            send_retry(c, Message::new(1, payload(s as u32, i, 300)));
        }
    }
    let done = || (0..2).all(|s| d.next_seq(s) == Some(200));
    assert!(wait_until(T, done), "the admitted connections stalled");
    d.assert_clean();
    assert_eq!(srv_stack.srq_usage().map(|u| u.1), Some(16));
    drop(c3);
    third.shutdown();
    for (m, _) in &clients {
        m.shutdown();
    }
    server.shutdown();
    drop((clients, third, server));
    assert_released("server", &srv_stack);
    assert_released("client", &cli_stack);
    assert_no_kernel_objects(&["qp", "cq", "srq"]);
}

#[test]
fn rdma_sockets_handed_to_another_worker_deliver_everything() {
    // Two server workers: accepted sockets go to the least-loaded worker (`Adopt`), so some
    // QPs are created on one thread and driven from another.
    let Some(srv_stack) = stack() else { return };
    let d = Checker::fast();
    let server = messenger_cfg(
        "server",
        &srv_stack,
        d.clone(),
        true,
        Config {
            workers: 2,
            ..config()
        },
    );
    let addr = server.addr().expect("bound");
    let mut clients = Vec::new();
    for i in 0..4 {
        let Some(st) = stack() else { return };
        let m = messenger(&format!("client{i}"), &st, Checker::fast(), false);
        let c = m.connect(addr).expect("connect");
        clients.push((st, m, c));
    }
    const N: u64 = 1500;
    for i in 0..N {
        for (s, (_, _, c)) in clients.iter().enumerate() {
            send_retry(
                c,
                Message::new(1, payload(s as u32, i, 200 + (i % 700) as usize)),
            );
        }
    }
    let total = N * clients.len() as u64;
    d.assert_delivered(total, T);
    let loads = server.worker_loads();
    eprintln!("server worker loads: {loads:?}");
    assert!(
        loads.iter().all(|l| *l >= 1),
        "connections on both workers: {loads:?}"
    );
    assert_eq!(srv_stack.stats().failures.load(Ordering::Relaxed), 0);
    for (_, m, _) in &clients {
        m.shutdown();
    }
    server.shutdown();
    drop(server);
    let stacks: Vec<RdmaStack> = clients.into_iter().map(|(st, _, _)| st).collect();
    for (i, s) in stacks.iter().enumerate() {
        assert_released(&format!("client{i}"), s);
    }
    assert_released("server", &srv_stack);
    assert_no_kernel_objects(&["qp", "cq"]);
}

/// Large messages whose payloads live in a `BufPool` go out zero-copy (SEND and RDMA WRITE
/// gather SGEs straight from the pool's arena, registered once per protection domain): the
/// zero-copy byte counter covers every large payload, the copied bytes are only frame
/// headers, checksums and the small messages; heap payloads are still copied. Delivery is
/// byte for byte, and every pool buffer comes back once everything is acknowledged.
#[test]
fn rdma_pool_buffers_go_out_zero_copy_byte_for_byte() {
    let Some(p) = pair() else { return };
    let pool = test_pool((1 << 20) + 4096, 8);
    const N: u64 = 60;
    let (mut large, mut small) = (0u64, 0u64);
    for i in 0..N {
        let len = match i % 4 {
            0 => 1 << 20,
            1 => (300 << 10) + 7,
            2 => 64 << 10,
            _ => 100,
        };
        if len >= 4096 {
            large += len as u64;
        } else {
            small += len as u64;
        }
        send_retry(&p.conn, Message::new(1, pool_payload(&pool, 0, i, len)));
    }
    p.srv_d.assert_delivered(N, T);
    let c = p.cli_stack.stats();
    let zc = c.zero_copy_bytes.load(Ordering::Relaxed);
    let copied = c.copied_bytes.load(Ordering::Relaxed);
    eprintln!(
        "zero-copy: {zc} bytes zero-copy, {copied} copied ({large} large payload bytes, \
         {small} small), {} RDMA WRITEs, {} pool arenas registered",
        c.writes.load(Ordering::Relaxed),
        p.cli_stack.registered_pools()
    );
    // Every large payload went zero-copy (resends after a fault could only add to it).
    assert!(
        zc >= large,
        "zero-copy bytes {zc} < large payload bytes {large}"
    );
    // Copied: small payloads, ~48 bytes of framing per message, the handshake.
    assert!(
        copied < small + N * 256 + (16 << 10),
        "{copied} bytes copied: payload bytes were copied"
    );
    assert!(
        c.writes.load(Ordering::Relaxed) > 0,
        "no RDMA WRITE was used"
    );
    assert_eq!(
        p.cli_stack.registered_pools(),
        1,
        "one pool, registered once"
    );

    // Heap payloads are copied, not sent zero-copy.
    let before = (
        c.zero_copy_bytes.load(Ordering::Relaxed),
        c.copied_bytes.load(Ordering::Relaxed),
    );
    for i in N..N + 4 {
        send_retry(&p.conn, Message::new(1, payload(0, i, 64 << 10)));
    }
    p.srv_d.assert_delivered(N + 4, T);
    assert_eq!(c.zero_copy_bytes.load(Ordering::Relaxed), before.0);
    assert!(c.copied_bytes.load(Ordering::Relaxed) >= before.1 + 4 * (64 << 10));
    assert!(
        wait_until(T, || p.conn.queued() == (0, 0)),
        "everything acknowledged: {:?}",
        p.conn.queued()
    );
    assert_eq!(c.failures.load(Ordering::Relaxed), 0);
    assert_torn_down(p);
    // The sockets let go of every pool buffer they held for their sends.
    assert_eq!(pool.available(), pool.capacity(), "pool buffers still held");
}

/// Zero-copy receive: SENDs of 16 KiB or more land in receive buffers that are lent to the
/// messenger as they are (a fresh one posted in their place), so their frames are decoded
/// where the NIC put them; frames larger than a SEND still come by RDMA WRITE and are copied.
/// Every message arrives byte for byte, and every lent buffer goes back to the registered pool.
#[test]
fn rdma_receive_buffers_are_lent_zero_copy_byte_for_byte() {
    let Some(p) = pair() else { return };
    let pool = test_pool((1 << 20) + 4096, 8);
    const N: u64 = 100;
    let mut fits = 0u64;
    for i in 0..N {
        let len = match i % 5 {
            0 => 64 << 10,
            1 => 100,
            2 => 20_000,
            3 => (300 << 10) + 7,
            _ => 1 << 20,
        };
        if (16 << 10..128 << 10).contains(&len) {
            fits += len as u64;
        }
        send_retry(&p.conn, Message::new(1, pool_payload(&pool, 0, i, len)));
    }
    p.srv_d.assert_delivered(N, T);
    let srv = p.srv_stack.clone();
    let s = srv.stats();
    let (lent, lent_bytes, copied) = (
        s.lent_buffers.load(Ordering::Relaxed),
        s.lent_bytes.load(Ordering::Relaxed),
        s.recv_copied_bytes.load(Ordering::Relaxed),
    );
    let in_place = p.server.counters().bytes_lent;
    eprintln!(
        "lent receive: {lent} buffers lent ({lent_bytes} bytes), {copied} bytes copied, \
         {in_place} bytes decoded in place; {fits} payload bytes in frames that fit a SEND, \
         {} RDMA WRITEs received",
        s.writes_received.load(Ordering::Relaxed)
    );
    // Frames that fit one SEND start a SEND of their own (the sender knows the peer lends),
    // so nearly all of them are decoded in place; one cut by the end of an RDMA WRITE is
    // copied.
    assert!(
        in_place >= fits / 2,
        "only {in_place} bytes decoded in lent buffers ({fits} payload bytes fit a SEND)"
    );
    assert!(lent > 0 && lent_bytes >= in_place);
    assert!(
        s.writes_received.load(Ordering::Relaxed) > 0,
        "frames larger than a SEND came by RDMA WRITE"
    );
    assert_torn_down_lent_returned(p, &srv);
}

/// An application that holds its messages holds the lent buffers under them: at most
/// `lend_max` are lent, past that the stack copies, everything still arrives, and the lent
/// buffers come back when the application drops the messages (on its own thread).
#[test]
fn rdma_lent_receive_buffers_are_capped_and_come_back_when_dropped() {
    let cfg = RdmaConfig {
        lend_max: 4,
        ..RdmaConfig::default()
    };
    let Some(srv_stack) = stack_with(cfg.clone()) else {
        return;
    };
    let Some(cli_stack) = stack_with(cfg) else {
        return;
    };
    let keep = Checker::keeping();
    let server = messenger("server", &srv_stack, keep.clone(), true);
    let client = messenger("client", &cli_stack, Checker::fast(), false);
    let conn = client
        .connect(server.addr().expect("bound"))
        .expect("connect");
    const N: u64 = 40;
    for i in 0..N {
        send_retry(&conn, Message::new(1, payload(0, i, 64 << 10)));
    }
    keep.assert_delivered(N, T);
    let s = srv_stack.stats();
    let outstanding = s.lent_outstanding.load(Ordering::Relaxed);
    eprintln!(
        "lent cap: {} lent, {outstanding} held by the application (cap 4), {} bytes copied",
        s.lent_buffers.load(Ordering::Relaxed),
        s.recv_copied_bytes.load(Ordering::Relaxed)
    );
    assert!(
        (1..=4).contains(&outstanding),
        "{outstanding} lent buffers held (cap 4)"
    );
    assert!(
        s.recv_copied_bytes.load(Ordering::Relaxed) > 0,
        "nothing copied past the cap"
    );
    // Dropping the messages (here, on the test thread) gives the buffers back.
    keep.clear_kept();
    assert!(
        wait_until(T, || s.lent_outstanding.load(Ordering::Relaxed) == 0),
        "{} lent buffers still out after the messages were dropped",
        s.lent_outstanding.load(Ordering::Relaxed)
    );
    assert_torn_down(Pair {
        srv_stack,
        cli_stack,
        srv_d: keep,
        server,
        client,
        conn,
    });
}

/// Lossless reconnect while zero-copy sends are in flight: QPs forced to error with pool
/// payloads posted but not completed; the messenger resends what was not acknowledged on
/// the new QP (again zero-copy), every message arrives exactly once and in order, the held
/// buffers of the failed QPs are released, and no QP, CQ, SRQ, MR or PD outlives the stacks.
#[test]
fn rdma_lossless_reconnect_with_zero_copy_sends_in_flight() {
    let Some(p) = pair() else { return };
    let pool = test_pool(320 << 10, 32);
    let (forced, n) = reconnect_rounds(&p, 4, 200, |seq| {
        let len = [64 << 10, 8 << 10, (300 << 10) + 3, 5000][(seq % 4) as usize];
        pool_payload(&pool, 0, seq, len)
    });
    let c = p.cli_stack.stats();
    let zc = c.zero_copy_bytes.load(Ordering::Relaxed);
    assert!(zc > 0, "nothing went zero-copy");
    eprintln!(
        "zero-copy reconnect: {forced} QPs forced to error, {n} delivered exactly once in \
         order, {zc} bytes zero-copy, {} copied",
        c.copied_bytes.load(Ordering::Relaxed)
    );
    let (srv_stack, cli_stack) = (p.srv_stack.clone(), p.cli_stack.clone());
    assert_torn_down(p);
    assert_eq!(pool.available(), pool.capacity(), "pool buffers still held");
    // The pool's memory region goes with the stack; the kernel lists no MR or PD after.
    drop(srv_stack);
    drop(cli_stack);
    for kind in ["mr", "pd"] {
        assert!(
            wait_until(Duration::from_secs(10), || kernel_objects(kind)
                .unwrap_or(0)
                == 0),
            "the kernel still lists {:?} {kind}s of this process",
            kernel_objects(kind)
        );
    }
}

/// Memory-window mode: frames larger than a SEND but within a write chunk arrive by RDMA
/// WRITE, each starting a chunk of its own, and go to the application where the NIC put them
/// (the chunk's window moves to fresh memory first), byte for byte; every chunk comes back.
#[test]
fn rdma_write_chunks_are_lent_zero_copy_through_memory_windows() {
    let Some(p) = pair() else { return };
    let srv = p.srv_stack.clone();
    assert!(
        p.srv_stack.uses_memory_windows(),
        "the device has type 2 memory windows (rxe does)"
    );
    let pool = test_pool((512 << 10) + 4096, 8);
    const N: u64 = 60;
    let mut by_write = 0u64;
    for i in 0..N {
        let len = match i % 4 {
            0 => 200 << 10,
            1 => 100,
            2 => (300 << 10) + 7,
            _ => 500 << 10,
        };
        if len > 128 << 10 {
            by_write += len as u64;
        }
        send_retry(&p.conn, Message::new(1, pool_payload(&pool, 0, i, len)));
    }
    p.srv_d.assert_delivered(N, T);
    let s = srv.stats();
    let (binds, chunks, writes) = (
        s.window_binds.load(Ordering::Relaxed),
        s.lent_write_chunks.load(Ordering::Relaxed),
        s.writes_received.load(Ordering::Relaxed),
    );
    let in_place = p.server.counters().bytes_lent;
    eprintln!(
        "memory windows: {binds} bindings, {writes} RDMA WRITEs received, {chunks} write \
         chunks lent, {in_place} bytes decoded in place ({by_write} payload bytes in frames \
         larger than a SEND), {} bytes copied",
        s.recv_copied_bytes.load(Ordering::Relaxed)
    );
    assert!(writes > 0, "frames larger than a SEND came by RDMA WRITE");
    assert!(chunks > 0, "no write chunk was lent");
    // Set-up binds every chunk once; each lent chunk's window is bound again.
    assert!(
        binds >= chunks + 2,
        "{binds} bindings for {chunks} chunks lent"
    );
    // Every lent chunk carried a WRITE ending at a frame too large for a SEND, decoded where
    // the peer wrote it. (How many of the large frames find a chunk free, rather than going
    // as SENDs while the application still holds both, depends on how the sender's pace and
    // the chunks' return line up: a share of all large frames would test timing, not this.)
    assert!(
        in_place >= chunks * (128 << 10),
        "only {in_place} bytes decoded in place for {chunks} lent write chunks \
         ({by_write} bytes in WRITE-sized frames)"
    );
    assert_torn_down_lent_returned(p, &srv);
}

/// Zero-copy on both sides for frames larger than a write chunk: a pool payload goes out
/// zero-copy in several RDMA WRITEs, each chunk is lent to the messenger on arrival, and the
/// messenger hands the message on as a list of slices of those chunks (`msgs_gathered`)
/// instead of copying them together. Byte for byte; every chunk comes back.
#[test]
fn rdma_frames_larger_than_a_write_chunk_are_gathered_zero_copy() {
    let Some(p) = pair() else { return };
    let srv = p.srv_stack.clone();
    assert!(
        srv.uses_memory_windows(),
        "the device has type 2 memory windows (rxe does)"
    );
    let pool = test_pool((2 << 20) + 4096, 8);
    const N: u64 = 12;
    let mut big = 0u64;
    for i in 0..N {
        let len = if i % 2 == 0 { (1 << 20) + 7 } else { 2 << 20 };
        big += len as u64;
        send_retry(&p.conn, Message::new(1, pool_payload(&pool, 0, i, len)));
    }
    p.srv_d.assert_delivered(N, T);
    let s = srv.stats();
    let c = p.server.counters();
    let sent_zc = p.cli_stack.stats().zero_copy_bytes.load(Ordering::Relaxed);
    eprintln!(
        "frames over a write chunk: {} of {N} messages gathered, {} write chunks lent, {} \
         bytes decoded in place, {} bytes copied by the stack; {sent_zc} bytes sent \
         zero-copy; {big} payload bytes",
        c.msgs_gathered,
        s.lent_write_chunks.load(Ordering::Relaxed),
        c.bytes_lent,
        s.recv_copied_bytes.load(Ordering::Relaxed)
    );
    assert!(sent_zc >= big / 2, "the sender copied its pool payloads");
    assert!(c.msgs_gathered >= 1, "no message was gathered");
    assert!(
        c.bytes_lent >= big / 2,
        "only {} of {big} bytes decoded where they landed",
        c.bytes_lent
    );
    assert_torn_down_lent_returned(p, &srv);
    assert_eq!(pool.available(), pool.capacity(), "pool buffers still held");
}

/// A peer that RDMA-WRITEs through a window the receiver revoked (the key of a chunk it lent
/// to the application) is refused by the NIC: its connection is torn down with a remote
/// access error, the lent memory keeps the bytes the application was given, and another
/// connection to the same server is unaffected.
#[test]
fn rdma_write_through_a_revoked_window_is_refused_and_lent_memory_is_untouched() {
    let Some(srv_stack) = stack() else { return };
    let Some(bad_stack) = stack_with(RdmaConfig {
        misbehave: Misbehave::WriteRevokedWindow,
        ..RdmaConfig::default()
    }) else {
        return;
    };
    let Some(good_stack) = stack() else { return };
    let keep = Checker::keeping();
    let t = Trio::new(srv_stack, bad_stack, good_stack, keep.clone());
    // Frames larger than a SEND: each goes by RDMA WRITE into a chunk the server lends (and
    // the keeping application holds); a write after the server re-keyed a chunk uses the
    // stale key. The server lends a chunk only when its send queue has room for the re-bind
    // (else it copies, and the key stays valid), so the frames are spread out and sent until
    // the bad write happened.
    let mut i = 0u64;
    while i < 64 && t.stack(1).stats().last_failure.lock().is_none() {
        let _ = t.bad_conn.send(Message::new(1, payload(1, i, 300 << 10)));
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let why = t.failure(1, "the write through a revoked window");
    eprintln!("revoked window: the bad peer's connection failed with \"{why}\"");
    assert!(why.contains("RemoteAccess"), "unexpected reason: {why}");
    let lent = t.stack(0).stats().lent_write_chunks.load(Ordering::Relaxed);
    assert!(lent > 0, "the server lent no write chunk");
    // What the application holds is what arrived: lent memory was never written again.
    let kept = keep.kept();
    assert!(!kept.is_empty());
    for m in &kept {
        let bytes = m.payload.to_vec();
        let data: &[u8] = &bytes;
        let (_, seq) = dataplane_test_support::payload::header(data).expect("payload header");
        assert!(
            dataplane_test_support::payload::body_intact(seq, data),
            "message {seq} changed after delivery"
        );
    }
    const N: u64 = 500;
    for i in 0..N {
        send_retry(&t.good_conn, Message::new(1, payload(0, i, 500)));
    }
    assert!(
        wait_until(T, || keep.next_seq(0) == Some(N)),
        "the good connection stalled"
    );
    drop(kept);
    // Messages of the bad stream may still be delivered (and kept) until the server shuts
    // down; they hold lent memory, so they are let go only after that.
    t.finish(|| keep.clear_kept());
}
