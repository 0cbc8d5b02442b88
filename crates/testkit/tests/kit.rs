//! The kit tested against itself: clients talk to the backends directly, no proxy in between.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sluice_testkit::tungstenite::Error as WsError;
use sluice_testkit::tungstenite::protocol::frame::coding::CloseCode;
use sluice_testkit::{
    AfterResponse, Blackhole, CloseMode, EchoBackend, Message, RawClient, StaticResponder, TcpEcho,
    raw_exchange, raw_exchange_chunked, refused_addr, responses, wait_until, ws_connect,
    ws_roundtrip,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn echo_text_and_binary_and_records_the_handshake() {
    let backend = EchoBackend::spawn_named("alpha").await;
    let (mut ws, response) = ws_connect(
        backend.addr(),
        "/chat?room=1",
        &[
            ("X-Forwarded-For", "192.0.2.7"),
            ("Host", "chat.example.com"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["x-backend"], "alpha");

    let reply = ws_roundtrip(&mut ws, Message::text("hello")).await.unwrap();
    assert_eq!(reply, Message::text("hello"));
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let reply = ws_roundtrip(&mut ws, Message::binary(big.clone()))
        .await
        .unwrap();
    assert_eq!(reply.into_data(), big);

    assert_eq!(backend.upgrades(), 1);
    assert_eq!(backend.messages_received(), 2);
    assert!(backend.bytes_received() > big.len());
    assert_eq!(backend.received_raw().len(), backend.bytes_received());
    assert!(
        backend
            .received_raw()
            .starts_with(b"GET /chat?room=1 HTTP/1.1\r\n")
    );

    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.path, "/chat?room=1");
    assert_eq!(request.header("x-forwarded-for"), Some("192.0.2.7"));
    assert_eq!(request.header("host"), Some("chat.example.com"));
    assert!(request.is_websocket_upgrade());
    let connections = backend.connections();
    assert_eq!(connections.len(), 1);
    assert!(connections[0].upgraded && connections[0].open);
    assert_eq!(connections[0].peer, ws.get_ref().local_addr().unwrap());
}

#[tokio::test]
async fn echo_sixteen_mebibytes() {
    let backend = EchoBackend::spawn().await;
    let (mut ws, _) = ws_connect(backend.addr(), "/", &[]).await.unwrap();
    let big = vec![0x5a; 16 << 20];
    let reply = ws_roundtrip(&mut ws, Message::binary(big.clone()))
        .await
        .unwrap();
    assert_eq!(reply.into_data().len(), big.len());
}

#[tokio::test]
async fn ping_pong_close_handshake_and_counters() {
    let backend = EchoBackend::spawn().await;
    let (mut ws, _) = ws_connect(backend.addr(), "/", &[]).await.unwrap();
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"p"),
        other => panic!("expected a pong, got {other:?}"),
    }
    assert!(wait_until(WAIT, || backend.active_connections() == 1).await);
    ws.close(None).await.unwrap();
    // The server answers the Close and ends the connection.
    while let Some(Ok(message)) = ws.next().await {
        assert!(matches!(message, Message::Close(_)), "{message:?}");
    }
    assert!(wait_until(WAIT, || backend.active_connections() == 0).await);
    assert_eq!(backend.connections_accepted(), 1);
    assert!(!backend.connections()[0].open);
}

#[tokio::test]
async fn subprotocol_and_bytes_right_behind_the_head() {
    let backend = EchoBackend::spawn().await;
    // A masked text frame "hi" sent in the same write as the head.
    let mut request =
        b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\r\n"
            .to_vec();
    request.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    let mut client = RawClient::connect(backend.addr()).await.unwrap();
    client.send(&request).await.unwrap();
    let echoed = client
        .read_until(WAIT, |b| b.ends_with(&[0x81, 0x02, b'h', b'i']))
        .await;
    let text = String::from_utf8_lossy(client.received()).into_owned();
    assert!(echoed, "{text}");
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
    // Header names are recorded with their case.
    let request = &backend.requests()[0];
    assert_eq!(request.headers[0], ("Host".to_owned(), "a".to_owned()));
}

#[tokio::test]
async fn plain_http_keep_alive_and_chunked_body() {
    let backend = EchoBackend::spawn_named("beta").await;
    let mut client = RawClient::connect(backend.addr()).await.unwrap();
    client
        .send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(client.read_until(WAIT, |b| b.ends_with(b"beta\n")).await);
    client
        .send(b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .await
        .unwrap();
    let response = client.finish(WAIT).await;
    assert!(response.closed);
    let text = String::from_utf8_lossy(&response.bytes).into_owned();
    assert!(text.ends_with("\r\n\r\nabcde"), "{text}");
    assert_eq!(text.matches("X-Backend: beta").count(), 2);
    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].body, b"abcde");
    assert_eq!(backend.upgrades(), 0);

    let slow = raw_exchange_chunked(
        backend.addr(),
        &[b"GET / HT", b"TP/1.0\r\nHo", b"st: x\r\n\r\n"],
        Duration::from_millis(5),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(slow.status, Some(200));
    assert_eq!(slow.header("x-backend"), Some("beta"));
    assert_eq!(slow.body(), b"beta\n");
    assert!(slow.closed, "HTTP/1.0 closes");
}

#[tokio::test]
async fn malformed_request_gets_400_and_is_recorded() {
    let backend = EchoBackend::spawn().await;
    let garbage = b"GET / HTTP/1.1\r\nBad Header\r\n\r\n";
    let response = raw_exchange(backend.addr(), garbage, WAIT).await.unwrap();
    assert_eq!(response.status, Some(400));
    assert!(response.closed);
    assert_eq!(backend.received_raw(), garbage);
    assert!(backend.requests().is_empty());

    let bad_version = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    let response = raw_exchange(backend.addr(), bad_version, WAIT)
        .await
        .unwrap();
    assert_eq!(response.status, Some(426));
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    assert_eq!(backend.upgrades(), 0);
}

#[tokio::test]
async fn proxy_protocol_headers_are_recorded() {
    let backend = EchoBackend::spawn().await;
    let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(backend.addr(), v1, WAIT).await.unwrap();
    assert_eq!(response.status, Some(200));

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 9, 127, 0, 0, 1, 0x30, 0x39, 0x1f, 0x90]);
    v2.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let response = raw_exchange(backend.addr(), &v2, WAIT).await.unwrap();
    assert_eq!(response.status, Some(200));

    let requests = backend.requests();
    let v1 = requests[0].proxy.as_ref().unwrap();
    assert_eq!(
        (v1.version, v1.source),
        (1, Some("192.0.2.1:56324".parse().unwrap()))
    );
    let v2 = requests[1].proxy.as_ref().unwrap();
    assert_eq!(
        (v2.version, v2.source),
        (2, Some("203.0.113.9:12345".parse().unwrap()))
    );
    assert_eq!(v2.destination, Some("127.0.0.1:8080".parse().unwrap()));
}

#[tokio::test]
async fn close_all_reset_all_and_websocket_close() {
    let backend = EchoBackend::spawn().await;

    let (mut ws, _) = ws_connect(backend.addr(), "/", &[]).await.unwrap();
    assert!(wait_until(WAIT, || backend.active_connections() == 1).await);
    backend.close_all().await;
    assert_eq!(backend.active_connections(), 0);
    assert!(matches!(ws.next().await, None | Some(Err(_))));

    let (mut ws, _) = ws_connect(backend.addr(), "/", &[]).await.unwrap();
    assert!(wait_until(WAIT, || backend.active_connections() == 1).await);
    backend.reset_all().await;
    match ws.next().await {
        Some(Err(WsError::Io(e))) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("expected a reset, got {other:?}"),
    }

    let (mut ws, _) = ws_connect(backend.addr(), "/", &[]).await.unwrap();
    assert!(wait_until(WAIT, || backend.active_connections() == 1).await);
    let client = async {
        let first = ws.next().await;
        // Keep reading so tungstenite sends its Close reply and sees the server close.
        while let Some(Ok(_)) = ws.next().await {}
        first
    };
    let (_, first) = tokio::join!(
        backend.close_all_with(CloseMode::WebSocketClose(1001)),
        client
    );
    match first {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    assert_eq!(backend.connections_accepted(), 3);
}

#[tokio::test]
async fn dies_after_upgrade() {
    let backend = EchoBackend::dies_after_upgrade(1, CloseMode::Fin).await;
    let (mut ws, _) = ws_connect(backend.addr(), "/", &[]).await.unwrap();
    assert!(ws_roundtrip(&mut ws, Message::text("x")).await.is_err());
    assert_eq!(backend.upgrades(), 1);

    let instant = EchoBackend::dies_after_upgrade(0, CloseMode::Reset).await;
    let (mut ws, _) = ws_connect(instant.addr(), "/", &[]).await.unwrap();
    assert!(matches!(ws.next().await, None | Some(Err(_))));
}

#[tokio::test]
async fn shutdown_refuses_new_connections() {
    let backend = EchoBackend::spawn().await;
    let addr = backend.addr();
    let (mut ws, _) = ws_connect(addr, "/", &[]).await.unwrap();
    backend.stop_accepting().await;
    // Live tunnels survive stop_accepting...
    assert!(ws_roundtrip(&mut ws, Message::text("still")).await.is_ok());
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // ...but not shutdown.
    backend.shutdown().await;
    assert!(matches!(ws.next().await, None | Some(Err(_))));
}

#[tokio::test]
async fn blackhole_never_answers() {
    let hole = Blackhole::spawn().await;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let response = raw_exchange(hole.addr(), request, Duration::from_millis(150))
        .await
        .unwrap();
    assert_eq!(response.status, None);
    assert!(response.bytes.is_empty());
    assert!(!response.closed);
    assert!(wait_until(WAIT, || hole.bytes_received() == request.len()).await);
    assert_eq!(hole.received_raw(), request);
    assert_eq!(hole.bytes_sent(), 0);
}

#[tokio::test]
async fn refused_addr_refuses() {
    let error = TcpStream::connect(refused_addr()).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn static_responder_answers_and_the_client_sees_it() {
    let responder = StaticResponder::status(502).await;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let response = raw_exchange(responder.addr(), request, WAIT).await.unwrap();
    assert_eq!(response.status, Some(502));
    assert!(response.closed);
    assert_eq!(responder.requests()[0].path, "/");

    let wrong = StaticResponder::spawn(responses::wrong_accept(), AfterResponse::Hold).await;
    match ws_connect(wrong.addr(), "/", &[]).await {
        Err(WsError::Protocol(_)) => {}
        other => panic!("expected a protocol error, got {:?}", other.map(|(_, r)| r)),
    }
    match ws_connect(responder.addr(), "/", &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 502),
        other => panic!("expected HTTP 502, got {:?}", other.map(|(_, r)| r)),
    }
}

#[tokio::test]
async fn tcp_echo_honours_half_close() {
    let echo = TcpEcho::spawn().await;
    let mut tcp = TcpStream::connect(echo.addr()).await.unwrap();
    let data: Vec<u8> = (0..300_000).map(|i| (i % 256) as u8).collect();
    let (mut reader, mut writer) = tcp.split();
    let write = async {
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let read = reader.read_to_end(&mut back);
    let ((), read) = tokio::join!(write, read);
    read.unwrap();
    assert_eq!(back, data);
    assert_eq!(echo.received_raw(), data);
}
