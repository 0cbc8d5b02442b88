//! WebSocket tunnels through sluice: messages intact, balancing, close handshakes, half-close.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use sluice_e2e::{Proxy, config};
use sluice_testkit::tungstenite::protocol::frame::coding::{Data, OpCode};
use sluice_testkit::tungstenite::protocol::frame::{Frame, FrameHeader};
use sluice_testkit::{
    CloseMode, EchoBackend, Message, RawClient, WsStream, wait_until, ws_connect, ws_roundtrip,
};

use crate::SOON;

/// A payload whose bytes depend on its seed and position, so a swapped or shifted byte shows.
fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7)) as u8)
        .collect()
}

/// Sends a binary message in `parts` frames (first, continuations, final) and expects it back
/// whole: the backend reassembles fragments and echoes one message.
async fn fragmented_roundtrip(ws: &mut WsStream, data: &[u8], parts: usize) {
    let chunk = data.len().div_ceil(parts).max(1);
    let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let header = FrameHeader {
            is_final: i + 1 == pieces.len(),
            opcode: if i == 0 {
                OpCode::Data(Data::Binary)
            } else {
                OpCode::Data(Data::Continue)
            },
            ..FrameHeader::default()
        };
        ws.send(Message::Frame(Frame::from_payload(
            header,
            piece.to_vec().into(),
        )))
        .await
        .unwrap();
    }
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(got) => assert!(got.as_ref() == data, "fragmented message corrupted"),
        other => panic!("expected binary, got {other:?}"),
    }
}

async fn echo_backends(n: usize) -> Vec<EchoBackend> {
    let mut backends = Vec::new();
    for i in 0..n {
        backends.push(EchoBackend::spawn_named(&format!("b{i}")).await);
    }
    backends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_get_every_message_back_intact_and_round_robin_spreads_them() {
    let backends = echo_backends(3).await;
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    let proxy = Arc::new(Proxy::start(&config(&addrs, "round_robin", "")).await);

    // Every size class of the WebSocket length encoding (7-bit, 16-bit, 64-bit) and its edges.
    const SIZES: [usize; 8] = [1, 125, 126, 127, 65_535, 65_536, 70_000, 200_000];
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..200usize {
        let proxy = Arc::clone(&proxy);
        clients.spawn(async move {
            let (mut ws, response) = ws_connect(proxy.addr(), "/chat", &[]).await.unwrap();
            let backend = response.headers()["x-backend"].to_str().unwrap().to_owned();
            let text = format!("hello from client {client} ✓");
            assert_eq!(
                ws_roundtrip(&mut ws, Message::text(text.clone()))
                    .await
                    .unwrap(),
                Message::text(text)
            );
            for (i, size) in SIZES.iter().enumerate() {
                let data = payload(client * 10 + i, *size);
                let echoed = ws_roundtrip(&mut ws, Message::binary(data.clone()))
                    .await
                    .unwrap();
                assert!(
                    echoed == Message::binary(data),
                    "client {client}: {size} B corrupted"
                );
            }
            if client % 20 == 0 {
                let mib = payload(client, 1 << 20);
                let echoed = ws_roundtrip(&mut ws, Message::binary(mib.clone()))
                    .await
                    .unwrap();
                assert!(
                    echoed == Message::binary(mib),
                    "client {client}: 1 MiB corrupted"
                );
            }
            if client % 10 == 0 {
                fragmented_roundtrip(&mut ws, &payload(client, 100_000), 7).await;
                fragmented_roundtrip(&mut ws, b"tiny", 4).await;
            }
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
            backend
        });
    }
    let mut per_backend = std::collections::HashMap::<String, usize>::new();
    while let Some(done) = clients.join_next().await {
        *per_backend.entry(done.unwrap()).or_default() += 1;
    }

    let counts: Vec<usize> = backends.iter().map(|b| b.upgrades()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 200);
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "round robin must spread 200 tunnels over 3 backends evenly: {counts:?}"
    );
    for b in &backends {
        assert_eq!(per_backend.get(b.name()).copied(), Some(b.upgrades()));
    }
    assert!(wait_until(SOON, || proxy.server().stats().tunnels_active() == 0).await);
    assert_eq!(proxy.server().stats().upgraded(), 200);
}

#[tokio::test]
async fn least_conn_follows_live_tunnel_counts() {
    let backends = echo_backends(3).await;
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    let proxy = Proxy::start(&config(&addrs, "least_conn", "")).await;

    // Six tunnels held open: two per backend.
    let mut held = Vec::new();
    for _ in 0..6 {
        let (ws, response) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
        held.push((
            response.headers()["x-backend"].to_str().unwrap().to_owned(),
            ws,
        ));
    }
    let live: Vec<usize> = backends.iter().map(|b| b.active_connections()).collect();
    assert_eq!(live, vec![2, 2, 2]);

    // Close both tunnels of b1: the next two tunnels must go there, the least loaded.
    for (_, mut ws) in held.extract_if(.., |(name, _)| name == "b1") {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    assert!(wait_until(SOON, || backends[1].active_connections() == 0).await);
    assert!(wait_until(SOON, || proxy.server().stats().tunnels_active() == 4).await);
    for _ in 0..2 {
        let (ws, response) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
        assert_eq!(response.headers()["x-backend"], "b1");
        held.push(("b1".into(), ws));
    }
    // All equal again: the next one may go anywhere, and the one after to another backend.
    let live: Vec<usize> = backends.iter().map(|b| b.active_connections()).collect();
    assert_eq!(live, vec![2, 2, 2]);
}

#[tokio::test]
async fn close_handshake_started_by_the_client_completes_through_the_proxy() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    ws.close(Some(sluice_testkit::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The backend's answering Close frame arrives, then the stream ends cleanly.
    let mut got_close = false;
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Close(frame)) => {
                got_close = true;
                assert_eq!(frame.unwrap().code, 1000.into());
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
    assert!(got_close, "the backend's Close frame must reach the client");
    // The backend closed TCP first (RFC 6455 §7.1.1); the client closes its side when done.
    drop(ws);
    assert!(wait_until(SOON, || proxy.server().stats().tunnels_active() == 0).await);
}

#[tokio::test]
async fn close_handshake_started_by_the_backend_completes_through_the_proxy() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    assert_eq!(
        ws_roundtrip(&mut ws, Message::text("before"))
            .await
            .unwrap(),
        Message::text("before")
    );
    // The backend sends Close and waits for the answer while the client reads.
    let client_side = async {
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, 1001.into()),
            other => panic!("expected the backend's Close, got {other:?}"),
        }
        // tungstenite answers the Close; the stream then ends.
        while let Some(Ok(_)) = ws.next().await {}
    };
    tokio::join!(
        backend.close_all_with(CloseMode::WebSocketClose(1001)),
        client_side
    );
    drop(ws);
    assert!(wait_until(SOON, || backend.active_connections() == 0).await);
    assert!(wait_until(SOON, || proxy.server().stats().tunnels_active() == 0).await);
}

/// A masked client frame (RFC 6455 §5.2) carrying `payload` as one text message.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn half_close_client_stops_writing_and_still_receives() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let mut client = RawClient::connect(proxy.addr()).await.unwrap();
    let mut request = b"GET /half HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    // The frame follows the head in the same write: sluice must forward it as early data.
    request.extend(masked_text_frame(b"last words"));
    client.send(&request).await.unwrap();
    client.shutdown_write().await.unwrap();
    // After our FIN, the echo of our frame still comes back (unmasked server frame).
    let echoed = [&[0x81u8, 10][..], b"last words"].concat();
    let got = client
        .read_until(SOON, |bytes| {
            bytes.windows(echoed.len()).any(|w| w == echoed.as_slice())
        })
        .await;
    assert!(
        got,
        "echo after half-close missing: {:?}",
        String::from_utf8_lossy(client.received())
    );
    assert!(client.received().starts_with(b"HTTP/1.1 101 "));
    // The backend saw our FIN (its echo loop ended), so the tunnel ends completely.
    let done = client.finish(SOON).await;
    assert!(
        done.closed && !done.reset,
        "tunnel must end with a clean close"
    );
    assert!(wait_until(SOON, || proxy.server().stats().tunnels_active() == 0).await);
}
