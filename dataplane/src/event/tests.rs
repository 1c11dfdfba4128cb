use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn timers_fire_in_deadline_order() {
    let mut c = EventCenter::new(EventConfig::default()).unwrap();
    let now = Instant::now();
    c.add_timer(now + Duration::from_millis(20), 2);
    c.add_timer(now + Duration::from_millis(5), 1);
    let mut out = Vec::new();
    while out.len() < 2 {
        c.wait(&mut out, Some(Duration::from_millis(50)), &|| false)
            .unwrap();
    }
    assert_eq!(out, vec![Fired::Timer { key: 1 }, Fired::Timer { key: 2 }]);
    assert!(Instant::now() >= now + Duration::from_millis(20));
}

#[test]
fn doorbell_wakes_parked_loop_and_only_when_parked() {
    let mut c = EventCenter::new(EventConfig::default()).unwrap();
    let bell = c.doorbell().clone();
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    let t = std::thread::spawn(move || {
        // Wait until the loop parks, then publish work and ring.
        while !bell.is_parked() {
            std::thread::yield_now();
        }
        f2.store(true, Ordering::SeqCst);
        assert!(bell.ring(), "a parked loop must be woken");
        // Not parked any more (or again later): ringing without a parked consumer must not
        // fire the eventfd while the loop is busy.
        bell
    });
    let mut out = Vec::new();
    let start = Instant::now();
    let has = || flag.load(Ordering::SeqCst);
    while !has() {
        c.wait(&mut out, Some(Duration::from_secs(5)), &has)
            .unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "woken by the doorbell, not the timeout"
    );
    let bell = t.join().unwrap();
    assert!(!bell.is_parked());
    assert!(
        !bell.ring(),
        "ringing a running loop must not fire a wake-up"
    );
    assert_eq!(bell.wakeups(), 1);
    assert!(c.parks() >= 1);
}

#[test]
fn pending_external_work_never_parks() {
    let mut c = EventCenter::new(EventConfig::default()).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    c.wait(&mut out, Some(Duration::from_secs(5)), &|| true)
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(c.parks(), 0);
}

/// A poller with no file descriptor bounds the sleep with `max_wait`: the loop comes back to
/// poll it even with no timer and no `max_wait` from the caller.
#[test]
fn poller_max_wait_bounds_the_sleep() {
    struct Idle(u32);
    impl Poller for Idle {
        fn poll(&mut self, _now: Instant, _ready: &mut Vec<Fired>) -> bool {
            self.0 += 1;
            false
        }
        fn max_wait(&self) -> Option<Duration> {
            Some(Duration::from_millis(2))
        }
    }
    let mut c = EventCenter::new(EventConfig::default()).unwrap();
    c.add_poller(Box::new(Idle(0)));
    let mut out = Vec::new();
    let start = Instant::now();
    for _ in 0..5 {
        c.wait(&mut out, None, &|| false).unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "each wait slept about 2 ms, not forever"
    );
    assert_eq!(c.parks(), 5, "it did sleep (parked) rather than spin");
}

/// A busy poller keeps the loop spinning: the files are looked at once every
/// `FILES_EVERY_BUSY_ROUNDS` rounds (not a system call per round), and a readable file is
/// still reported within that many rounds.
#[test]
fn busy_poller_looks_at_files_every_few_rounds() {
    struct Busy;
    impl Poller for Busy {
        fn poll(&mut self, _now: Instant, _ready: &mut Vec<Fired>) -> bool {
            true
        }
    }
    let mut c = EventCenter::new(EventConfig::default()).unwrap();
    c.add_poller(Box::new(Busy));
    let (mut a, mut b) = mio::net::UnixStream::pair().unwrap();
    c.registry()
        .register(&mut b, Token(7), mio::Interest::READABLE)
        .unwrap();
    let mut out = Vec::new();
    let rounds = 10 * FILES_EVERY_BUSY_ROUNDS;
    for _ in 0..rounds {
        c.wait(&mut out, None, &|| false).unwrap();
    }
    assert!(out.is_empty(), "nothing to report yet: {out:?}");
    assert_eq!(c.parks(), 0, "a busy loop never parks");
    assert_eq!(u64::from(rounds / FILES_EVERY_BUSY_ROUNDS), c.file_polls());
    std::io::Write::write_all(&mut a, b"x").unwrap();
    let mut waited = 0;
    while !out.iter().any(|f| {
        matches!(
            f,
            Fired::File {
                token: Token(7),
                readable: true,
                ..
            }
        )
    }) {
        waited += 1;
        assert!(
            waited <= FILES_EVERY_BUSY_ROUNDS,
            "not seen within {waited} rounds"
        );
        c.wait(&mut out, None, &|| false).unwrap();
    }
}
