//! The handoff conversation between two real sockets: listening TCP sockets cross over, a
//! connection queued before the handoff is accepted after it, and every failure leaves the
//! predecessor whole.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use sluice_handoff::{
    Channel, CounterSeries, DirectionMeta, Endpoint, HandoffError, Inherited, ListenerMeta,
    Message, Refusal, TunnelMeta, hand_over, refuse, take_over,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn socket_path(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-handoff-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn meta(name: &str, listener: &TcpListener) -> ListenerMeta {
    ListenerMeta {
        name: name.into(),
        configured: "127.0.0.1:0".parse().unwrap(),
        bound: listener.local_addr().unwrap(),
    }
}

/// Accepts one successor on `endpoint` (on the runtime) and runs `side` on a blocking thread.
async fn predecessor<T: Send + 'static>(
    endpoint: &Endpoint,
    side: impl FnOnce(Channel) -> T + Send + 'static,
) -> T {
    let channel = endpoint.accept(TIMEOUT).await.unwrap();
    tokio::task::spawn_blocking(move || side(channel))
        .await
        .unwrap()
}

#[tokio::test]
async fn listeners_cross_over_and_a_queued_connection_is_accepted_by_the_successor() {
    let path = socket_path("handoff.sock");
    let endpoint = Endpoint::bind(&path).unwrap();
    let ws = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = ws.local_addr().unwrap();
    // A client connects before the handoff and is never accepted by the predecessor.
    let mut early = TcpStream::connect(addr).unwrap();
    early.write_all(b"queued").unwrap();

    let metas = vec![meta("ws", &ws), meta("admin", &admin)];
    let endpoint_fd = endpoint.as_fd().try_clone_to_owned().unwrap();
    let successor_path = path.clone();
    let successor = std::thread::spawn(move || {
        let inheritance = take_over(&successor_path, TIMEOUT).unwrap();
        assert_eq!(inheritance.predecessor, std::process::id());
        let names: Vec<_> = inheritance
            .listeners
            .iter()
            .map(|(m, _)| m.name.clone())
            .collect();
        assert_eq!(names, ["ws", "admin"]);
        let (meta, fd) = inheritance.listeners.into_iter().next().unwrap();
        let inherited = TcpListener::from(fd);
        assert_eq!(inherited.local_addr().unwrap(), meta.bound);
        let (mut conn, _) = inherited.accept().unwrap();
        let mut got = [0; 6];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"queued");
        conn.write_all(b"served by the successor").unwrap();
        inheritance.endpoint
    });
    let handover = {
        let fds: Vec<(ListenerMeta, OwnedFd)> = metas
            .into_iter()
            .zip([
                ws.as_fd().try_clone_to_owned().unwrap(),
                admin.as_fd().try_clone_to_owned().unwrap(),
            ])
            .collect();
        predecessor(&endpoint, move |channel| {
            let borrowed: Vec<_> = fds.iter().map(|(m, fd)| (m.clone(), fd.as_fd())).collect();
            hand_over(channel, &borrowed, endpoint_fd.as_fd(), TIMEOUT)
        })
        .await
    };
    // take_over returned and the thread ended: it never said Ready, so hand_over fails.
    let endpoint_copy = successor.join().unwrap();
    assert!(
        matches!(handover, Err(HandoffError::Closed)),
        "{handover:?}"
    );
    let mut answer = String::new();
    early.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "served by the successor");
    // The predecessor lost nothing: it still accepts on its own listener.
    let _late = TcpStream::connect(addr).unwrap();
    let (_conn, _) = ws.accept().unwrap();
    drop(endpoint_copy);
}

fn tunnel_meta(client: &TcpStream) -> TunnelMeta {
    TunnelMeta {
        listener: "ws".into(),
        pool: "chat".into(),
        backend: client.peer_addr().unwrap(),
        client: client.local_addr().unwrap(),
        age_ms: 5,
        client_to_backend: DirectionMeta::default(),
        backend_to_client: DirectionMeta {
            spliced: 10,
            ..DirectionMeta::default()
        },
        first_eof: None,
    }
}

/// Ready, a batch of tunnels (one refused by the successor), Released, Done: the successor
/// ends up with working sockets of the tunnels it adopted and the predecessor's count.
#[tokio::test]
async fn ready_tunnels_and_done_complete_the_handover() {
    let path = socket_path("handoff.sock");
    let endpoint = Endpoint::bind(&path).unwrap();
    let ws = TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_fd = ws.as_fd().try_clone_to_owned().unwrap();
    let endpoint_fd = endpoint.as_fd().try_clone_to_owned().unwrap();
    let metas = [meta("ws", &ws)];
    // Two "tunnels": each a pair of connected sockets whose far ends the test keeps.
    let pairs: Vec<(TcpStream, TcpStream)> = (0..2)
        .map(|_| {
            let a = TcpStream::connect(ws.local_addr().unwrap()).unwrap();
            let (b, _) = ws.accept().unwrap();
            (a, b)
        })
        .collect();
    let successor_path = path.clone();
    let successor = std::thread::spawn(move || {
        let inheritance = take_over(&successor_path, TIMEOUT).unwrap();
        inheritance.ready().unwrap();
        let Inherited::Tunnels(batch) = inheritance.next().unwrap() else {
            panic!("no tunnels")
        };
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|(meta, fds)| fds.len() == meta.fds()));
        inheritance
            .adopted(vec![Refusal {
                index: 1,
                reason: "not this one".into(),
            }])
            .unwrap();
        // Counters come in as many messages as they need, then Done.
        let mut counters = Vec::new();
        let kept = loop {
            match inheritance.next().unwrap() {
                Inherited::Counters(series) => counters.extend(series),
                Inherited::Done { kept } => break kept,
                Inherited::Tunnels(_) => panic!("tunnels after the batch"),
            }
        };
        assert_eq!(counters.len(), 2_000);
        assert!(
            counters
                .iter()
                .enumerate()
                .all(|(i, c)| c.value == i as u64)
        );
        let endpoint = inheritance.endpoint.try_clone().unwrap();
        let mut adopted = batch.into_iter().next().unwrap();
        (kept, endpoint, adopted.0, adopted.1.remove(0))
    });
    let sent: Vec<TunnelMeta> = pairs.iter().map(|(a, _)| tunnel_meta(a)).collect();
    let expected = sent[0].clone();
    let fds: Vec<OwnedFd> = pairs
        .iter()
        .flat_map(|(a, b)| [a, b])
        .map(|s| s.as_fd().try_clone_to_owned().unwrap())
        .collect();
    let refused = predecessor(&endpoint, move |channel| {
        let borrowed = [(metas[0].clone(), ws_fd.as_fd())];
        let handover = hand_over(channel, &borrowed, endpoint_fd.as_fd(), TIMEOUT).unwrap();
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let refused = handover.send_tunnels(sent, &borrowed).unwrap();
        handover.release().unwrap();
        let series = (0..2_000u64)
            .map(|i| CounterSeries {
                name: "sluice_tunnel_bytes_total".into(),
                labels: vec![
                    ("pool".into(), format!("pool-{i}")),
                    ("backend".into(), "10.0.0.1:9000".into()),
                    ("direction".into(), "client_to_backend".into()),
                ],
                value: i,
            })
            .collect();
        handover.send_counters(series).unwrap();
        handover.done(3).unwrap();
        refused
    })
    .await;
    assert_eq!(refused.iter().map(|r| r.index).collect::<Vec<_>>(), [1]);
    let (kept, endpoint_fd, meta, client_fd) = successor.join().unwrap();
    assert_eq!((kept, meta), (3, expected));
    // The adopted descriptor is the tunnel's socket: bytes written through it arrive.
    let mut adopted = TcpStream::from(client_fd);
    adopted.write_all(b"moved").unwrap();
    let mut got = [0u8; 5];
    let mut far = &pairs[0].1;
    far.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"moved");

    // The successor's copy of the endpoint is the same socket: once the predecessor closed its
    // own, a third process reaches the successor at the same path.
    drop(endpoint);
    let adopted = Endpoint::adopt(endpoint_fd, &path).unwrap();
    let third_path = path.clone();
    let third = std::thread::spawn(move || take_over(&third_path, TIMEOUT));
    let channel = adopted.accept(TIMEOUT).await.unwrap();
    tokio::task::spawn_blocking(move || refuse(channel, "a handoff is under way"))
        .await
        .unwrap();
    match third.join().unwrap() {
        Err(HandoffError::Refused(reason)) => assert_eq!(reason, "a handoff is under way"),
        other => panic!("{other:?}"),
    }
    adopted.remove();
    assert!(!path.exists());
}

#[tokio::test]
async fn another_protocol_version_is_refused_and_told_why() {
    let path = socket_path("handoff.sock");
    let endpoint = Endpoint::bind(&path).unwrap();
    let successor_path = path.clone();
    let successor = std::thread::spawn(move || {
        let channel = Channel::connect(&successor_path, TIMEOUT).unwrap();
        let hello = Message::Hello {
            version: 99,
            pid: std::process::id(),
            release: "9.9.9".into(),
        };
        channel.send(&hello, &[]).unwrap();
        channel.expect("hello").unwrap_err()
    });
    let endpoint_fd = endpoint.as_fd().try_clone_to_owned().unwrap();
    let result = predecessor(&endpoint, move |channel| {
        hand_over(channel, &[], endpoint_fd.as_fd(), TIMEOUT).map(|_| ())
    })
    .await;
    assert!(
        matches!(result, Err(HandoffError::Version { theirs: 99 })),
        "{result:?}"
    );
    match successor.join().unwrap() {
        HandoffError::Refused(reason) => assert!(reason.contains("not 99"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_silent_successor_times_out_and_a_wrong_descriptor_count_is_refused() {
    let path = socket_path("handoff.sock");
    let endpoint = Endpoint::bind(&path).unwrap();
    let successor_path = path.clone();
    let successor = std::thread::spawn(move || {
        let channel = Channel::connect(&successor_path, TIMEOUT).unwrap();
        // Says nothing until the predecessor gave up.
        channel.recv().unwrap_err()
    });
    let result = predecessor(&endpoint, |channel| {
        channel.set_timeout(Duration::from_millis(200)).unwrap();
        channel.expect("hello").map(|_| ())
    })
    .await;
    match result {
        Err(HandoffError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::TimedOut);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(successor.join().unwrap(), HandoffError::Closed));

    let channel = std::thread::spawn({
        let path = path.clone();
        move || Channel::connect(&path, TIMEOUT).unwrap()
    });
    let accepted = endpoint.accept(TIMEOUT).await.unwrap();
    let channel = channel.join().unwrap();
    let error = channel.send(&Message::Endpoint {}, &[]).unwrap_err();
    assert!(matches!(error, HandoffError::TooLarge(_)), "{error:?}");
    drop(accepted);
}

#[tokio::test]
async fn a_live_endpoint_is_in_use_and_a_stale_one_is_replaced() {
    let path = socket_path("handoff.sock");
    let endpoint = Endpoint::bind(&path).unwrap();
    assert!(matches!(Endpoint::bind(&path), Err(HandoffError::InUse(_))));
    let mode = std::fs::metadata(&path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    drop(endpoint);
    // The file is left behind by a process that died; the next bind replaces it.
    assert!(path.exists());
    let again = Endpoint::bind(&path).unwrap();
    again.remove();
}
