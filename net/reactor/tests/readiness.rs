//! The readiness poller's choice between polling and sleeping: it keeps polling while
//! requests are outstanding on its thread (up to a cap), and sleeps soon after they are
//! all answered. And a socket emptied by a short read is read again only after an edge,
//! without losing one.

use std::time::{Duration, Instant};

use std::io::Write;
use std::os::unix::io::AsRawFd;

use futures_lite::AsyncReadExt;
use hotshard_reactor::{Outstanding, Readiness, ReadySocket};

fn on_executor<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("join");
}

/// Waits `d` on the executor; false when the thread was held up so long (a loaded test
/// machine) that the window says nothing about the poller.
async fn wait_undisturbed(d: Duration) -> bool {
    let t = Instant::now();
    glommio::timer::sleep(d).await;
    t.elapsed() < d + Duration::from_micros(500)
}

/// Runs `window` up to 20 times, each with a request outstanding, and asserts (`slept`)
/// that the poller did not sleep in any window `window` says was undisturbed (true); at
/// most 3 are judged, and at least one must be.
async fn never_sleeps_in(set: &Readiness, slept: &str, mut window: impl AsyncFnMut() -> bool) {
    let mut judged = 0;
    for _ in 0..20 {
        let request = Outstanding::for_this_thread();
        request.add(1);
        let before = set.sleeps();
        if !window().await {
            continue;
        }
        assert_eq!(set.sleeps(), before, "{slept}");
        judged += 1;
        if judged == 3 {
            break;
        }
    }
    assert!(judged > 0, "the executor never got an undisturbed window");
}

#[test]
fn the_poller_keeps_polling_while_a_request_is_outstanding() {
    on_executor(|| async {
        let set = Readiness::for_this_thread().expect("readiness set");
        // Six times the idle spin (50 µs), well inside the busy spin (1 ms).
        never_sleeps_in(
            &set,
            "the poller slept while a request was outstanding",
            async || wait_undisturbed(Duration::from_micros(300)).await,
        )
        .await;
    });
}

#[test]
fn an_idle_poller_sleeps() {
    on_executor(|| async {
        let set = Readiness::for_this_thread().expect("readiness set");
        glommio::timer::sleep(Duration::from_millis(5)).await;
        assert!(set.sleeps() >= 1, "an idle poller never slept");
    });
}

#[test]
fn the_poller_sleeps_when_nothing_changes_for_long_even_with_a_request_outstanding() {
    on_executor(|| async {
        let set = Readiness::for_this_thread().expect("readiness set");
        // A request whose answer never comes (a peer that stopped reading, say).
        let request = Outstanding::for_this_thread();
        request.add(1);
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert!(set.sleeps() >= 1, "kept polling 20 ms with nothing changing");
    });
}

#[test]
fn a_counter_dropped_with_requests_leaves_the_threads_total() {
    on_executor(|| async {
        let set = Readiness::for_this_thread().expect("readiness set");
        let a = Outstanding::for_this_thread();
        let b = Outstanding::for_this_thread();
        a.add(3);
        b.add(2);
        b.sub(1);
        assert_eq!((a.get(), b.get(), set.outstanding()), (3, 1, 4));
        a.sub(10); // more than it holds: takes only its own
        assert_eq!((a.get(), set.outstanding()), (0, 1));
        a.add(2);
        drop(a); // a connection that ended with two requests unanswered
        assert_eq!(set.outstanding(), 1);
        drop(b);
        assert_eq!(set.outstanding(), 0);
    });
}

/// A reader waiting for its peer's next message, one message per round trip (a client
/// that sends one command and waits for its reply): each message costs one `recv`, not a
/// second one that finds the socket empty, and no message waits for a wake-up that never
/// comes (each is read within a second).
#[test]
fn a_socket_emptied_by_a_short_read_is_read_again_only_after_an_edge() {
    on_executor(|| async {
        let set = Readiness::for_this_thread().expect("readiness set");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        let fd = ours.as_raw_fd();
        let mut sock = ReadySocket::new(ours, fd, set)
            .map_err(|(e, _)| e)
            .expect("register");
        const ROUNDS: u64 = 200;
        let mut buf = [0u8; 64];
        for round in 0..ROUNDS {
            let message = format!("message {round:04}");
            // The reader waits first, then the message comes (from another thread, as a
            // client's would), now at once and now after a pause.
            let delay = Duration::from_micros(round % 4 * 100);
            let bytes = message.clone().into_bytes();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(delay);
                peer.write_all(&bytes).expect("write");
                peer
            });
            let read =
                glommio::timer::timeout(Duration::from_secs(1), async { Ok(sock.read(&mut buf).await) })
                    .await;
            peer = writer.join().expect("writer");
            let n = read
                .expect("a message waited over a second for its wake-up")
                .expect("read");
            assert_eq!(&buf[..n], message.as_bytes(), "round {round}");
        }
        // One recv per message (a few more for edges that came with data already read).
        assert!(
            sock.recvs() <= ROUNDS + ROUNDS / 10,
            "{} recvs for {ROUNDS} messages",
            sock.recvs()
        );
        drop(peer);
        let n = glommio::timer::timeout(Duration::from_secs(1), async { Ok(sock.read(&mut buf).await) })
            .await
            .expect("the peer's close woke the reader")
            .expect("read");
        assert_eq!(n, 0, "end of stream after the peer closed");
    });
}

/// While another poller on the thread says it is busy (the device's, with I/O in flight),
/// the poller never sleeps: its wake-up would come through glommio's reactor, which a busy
/// executor reaps only at its preemption timer (issue 36: requests waited 50-70 ms). Once
/// the other poller is idle, it sleeps as before.
#[test]
fn the_poller_keeps_polling_while_another_poller_is_busy() {
    on_executor(|| async {
        let set = Readiness::for_this_thread().expect("readiness set");
        let busy = std::rc::Rc::new(std::cell::Cell::new(true));
        let probe = busy.clone();
        set.set_busy_probe(move || probe.get());
        let before = set.sleeps();
        // No request outstanding: an idle poller sleeps after 50 µs; this is 400 times that.
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            set.sleeps(),
            before,
            "the poller slept while the device poller was busy"
        );
        busy.set(false);
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert!(
            set.sleeps() > before,
            "the poller never slept once the device was idle"
        );
    });
}

/// A long turn of other work (a GC step copying records, with no await) is not idleness:
/// with a request outstanding, the poller must not take a 3 ms turn as 3 ms without traffic
/// and go to sleep at its next pass.
#[test]
fn a_long_turn_of_other_work_does_not_count_as_idle() {
    on_executor(|| async {
        let set = Readiness::for_this_thread().expect("readiness set");
        never_sleeps_in(
            &set,
            "the poller slept right after another task's 3 ms turn",
            async || {
                // Let the poller see the new request and start an idle spell.
                for _ in 0..4 {
                    futures_lite::future::yield_now().await;
                }
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(3) {
                    std::hint::spin_loop();
                }
                let passes = Instant::now();
                for _ in 0..4 {
                    futures_lite::future::yield_now().await;
                }
                // Held up longer: the thread was disturbed and the window says nothing.
                passes.elapsed() <= Duration::from_micros(300)
            },
        )
        .await;
    });
}
