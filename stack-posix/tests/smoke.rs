//! Smoke test: two messengers on loopback.
mod common;
use common::*;
use dataplane::Message;
use std::time::Duration;

#[test]
fn smoke_two_messengers_exchange_messages() {
    let srv_d = Checker::fast();
    let server = messenger("server", test_config(), srv_d.clone(), true);
    let cli_d = Checker::fast();
    let client = messenger("client", test_config(), cli_d.clone(), false);
    let conn = client.connect(addr(&server)).unwrap();
    for i in 0..1000u64 {
        send_retry(&conn, Message::new(1, payload(0, i, 100)));
    }
    assert!(
        wait_until(Duration::from_secs(10), || srv_d.count() == 1000),
        "got {}",
        srv_d.count()
    );
    srv_d.assert_clean();
    assert!(
        wait_until(Duration::from_secs(5), || conn.queued() == (0, 0)),
        "acks release the queue: {:?}",
        conn.queued()
    );
}
