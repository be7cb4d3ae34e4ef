//! `Client`'s rules without a server: the resend table, read queries, keys, error decoding.

use super::*;

#[test]
fn only_what_cannot_apply_twice_goes_to_the_next_endpoint() {
    for resend in [Resend::Read, Resend::IdempotentWrite, Resend::Write] {
        assert!(try_next(StatusCode::SERVICE_UNAVAILABLE, resend));
        assert!(try_next(StatusCode::TOO_MANY_REQUESTS, resend));
        assert!(try_next(StatusCode::GONE, resend));
        assert!(!try_next(StatusCode::OK, resend));
        assert!(!try_next(StatusCode::PRECONDITION_FAILED, resend));
        assert!(!try_next(StatusCode::INTERNAL_SERVER_ERROR, resend));
    }
    // A timed-out write has an unknown outcome: only a key makes a second copy harmless.
    assert!(try_next(StatusCode::GATEWAY_TIMEOUT, Resend::Read));
    assert!(try_next(
        StatusCode::GATEWAY_TIMEOUT,
        Resend::IdempotentWrite
    ));
    assert!(!try_next(StatusCode::GATEWAY_TIMEOUT, Resend::Write));
}

#[test]
fn reads_carry_the_highest_index_seen_unless_told_otherwise() {
    let client = Client::new(["127.0.0.1:1"]).unwrap();
    assert_eq!(
        client.read_query(&ReadOptions::default()),
        Vec::<String>::new()
    );
    client.saw(Some(42));
    client.saw(Some(7));
    assert_eq!(client.seen_index(), 42);
    assert_eq!(
        client.read_query(&ReadOptions::default()),
        vec!["min_index=42"]
    );
    let asked = ReadOptions {
        consistency: Some(Consistency::Stale),
        min_index: Some(50),
        max_staleness_ms: Some(100),
    };
    assert_eq!(
        client.read_query(&asked),
        vec!["consistency=stale", "min_index=50", "max_staleness_ms=100"]
    );
    let without = Client::with_options(
        ["127.0.0.1:1"],
        ClientOptions {
            read_your_writes: false,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    without.saw(Some(42));
    assert_eq!(
        without.read_query(&ReadOptions::default()),
        Vec::<String>::new()
    );
}

#[test]
fn writes_get_a_fresh_idempotency_key_unless_turned_off() {
    let client = Client::new(["127.0.0.1:1"]).unwrap();
    let (first, resend) = client.write_headers(&WriteOptions::default());
    let (second, _) = client.write_headers(&WriteOptions::default());
    assert_eq!(resend, Resend::IdempotentWrite);
    assert_eq!(first[0].0, "idempotency-key");
    assert_eq!(first[0].1.len(), 32);
    assert_ne!(first[0].1, second[0].1);
    let plain = Client::with_options(
        ["127.0.0.1:1"],
        ClientOptions {
            idempotent_writes: false,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let conditional = WriteOptions {
        if_mod_index: Some(3),
        if_absent: true,
        idempotency_key: None,
        lease: None,
    };
    let (headers, resend) = plain.write_headers(&conditional);
    assert_eq!(resend, Resend::Write);
    assert_eq!(
        headers,
        vec![
            ("if-match", "\"3\"".to_string()),
            ("if-none-match", "*".to_string())
        ]
    );
}

#[test]
fn endpoints_take_a_scheme_or_not_and_none_is_refused() {
    let client = Client::new(["127.0.0.1:1", "http://127.0.0.1:2/", " "]).unwrap();
    assert_eq!(
        &*client.endpoints,
        ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    );
    assert!(matches!(
        Client::new(Vec::<String>::new()),
        Err(ClientError::Invalid(_))
    ));
}

#[tokio::test]
async fn an_answer_past_max_answer_bytes_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let body = vec![b'x'; 1000];
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-mirrorkv-index: 1\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
    });
    let client = Client::with_options(
        [addr],
        ClientOptions {
            max_answer_bytes: 999,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    match client.get("k").await {
        Err(ClientError::Decode(message)) => {
            assert!(message.contains("max_answer_bytes (999)"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_write_without_a_key_that_never_connected_reports_every_endpoint_down() {
    // Ports from the OS, closed again: nothing listens there.
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        })
        .collect();
    let client = Client::new(closed).unwrap();
    match client.put("k", "v").await {
        Err(ClientError::Unreachable { last }) => assert!(last.contains("127.0.0.1"), "{last}"),
        other => panic!("{other:?}"),
    }
}
