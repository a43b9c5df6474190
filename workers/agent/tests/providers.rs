//! The provider clients and the loop core against local servers that speak each wire
//! protocol (recorded answers in `fixtures/`, byte for byte in the public formats).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loong_worker_agent::config::{Kind, ProviderConfig, SecretRef};
use loong_worker_agent::retry::RetryPolicy;
use loong_worker_agent::{
    ClientOptions, Event, Failover, HttpProvider, Message, Provider, ProviderError, ProxyChoice,
    Request, StopReason, Usage,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// What the test server answers to one request.
#[derive(Clone)]
enum Reply {
    /// 200 with this event stream, written in small pieces.
    Sse(Vec<u8>),
    /// 200 with the first `n` bytes of this stream, then nothing for `hold`.
    Stall(Vec<u8>, usize, Duration),
    /// This status, these headers, this body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// The request is read and the connection dropped without an answer.
    Reset,
    /// This status, with a body of `n` bytes sent one byte per `gap`.
    Drip(u16, usize, Duration),
}

/// One request the server received.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Reads one request head and body; `None` if the peer closed first.
async fn read_request(socket: &mut TcpStream) -> Option<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let line = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&piece[..n]);
    }
    Some((line, headers, body))
}

async fn write_sse(socket: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
              cache-control: no-cache\r\nconnection: close\r\n\r\n",
        )
        .await?;
    // Small pieces, so lines and events are split across reads.
    for piece in body.chunks(29) {
        socket.write_all(piece).await?;
        socket.flush().await?;
    }
    Ok(())
}

/// A server answering its requests with `replies` in order (then 500s).
async fn serve(replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(replies)));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                let Some((line, headers, body)) = read_request(&mut socket).await else {
                    return;
                };
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                record.lock().expect("lock").push(Seen {
                    line,
                    headers,
                    body,
                });
                let reply = queue.lock().expect("lock").pop_front();
                let reply = reply.unwrap_or(Reply::Status(500, vec![], "no more replies".into()));
                let _ = match reply {
                    Reply::Sse(body) => write_sse(&mut socket, &body).await,
                    Reply::Stall(body, n, hold) => {
                        let _ = write_sse(&mut socket, &body[..n]).await;
                        tokio::time::sleep(hold).await;
                        Ok(())
                    }
                    Reply::Status(code, headers, body) => {
                        let mut head = format!(
                            "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        socket
                            .write_all(head.as_bytes())
                            .await
                            .and(socket.write_all(body.as_bytes()).await)
                    }
                    Reply::Drip(code, n, gap) => {
                        let head = format!(
                            "HTTP/1.1 {code} X\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n"
                        );
                        let mut sent = socket.write_all(head.as_bytes()).await;
                        for _ in 0..n {
                            tokio::time::sleep(gap).await;
                            sent = sent.and(socket.write_all(b"x").await);
                        }
                        sent
                    }
                    Reply::Reset => {
                        // A zero linger makes the close a reset (RST); it does not block.
                        #[allow(deprecated)]
                        let _ = socket.set_linger(Some(Duration::ZERO));
                        Ok(())
                    }
                };
            });
        }
    });
    Server { url, seen }
}

fn config(kind: Kind, server: &Server) -> ProviderConfig {
    let base_url = match kind {
        Kind::Openai => format!("{}/v1", server.url),
        Kind::Anthropic => server.url.clone(),
    };
    ProviderConfig {
        kind,
        base_url,
        model: "test-model".into(),
        api_key: SecretRef::parse("${secret:test_key}"),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        answer_timeout: Duration::from_secs(30),
        max_attempts: 3,
        max_tokens: Some(1024),
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        proxy: ProxyChoice::Direct,
        retry: RetryPolicy {
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(5),
            ..RetryPolicy::default()
        },
        sse: None,
    }
}

fn provider(name: &str, config: &ProviderConfig) -> HttpProvider {
    HttpProvider::new(name, config, Some("sk-test-123"), &options()).expect("a client")
}

fn ask(text: &str) -> Request {
    Request {
        system: Some("be brief".into()),
        messages: vec![Message::User { text: text.into() }],
        tools: vec![],
    }
}

/// Every event of one answer, and the error that ended it, if one did.
async fn collect(
    provider: &dyn Provider,
    request: &Request,
) -> (Vec<Event>, Option<ProviderError>) {
    let mut stream = match provider.stream(request).await {
        Ok(stream) => stream,
        Err(error) => return (vec![], Some(error)),
    };
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => events.push(event),
            Err(error) => return (events, Some(error)),
        }
    }
    (events, None)
}

fn text(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn calls(events: &[Event]) -> Vec<(String, String, Value)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCall(c) => Some((
                c.id.clone(),
                c.name.clone(),
                serde_json::from_str(&c.arguments_json).expect("arguments are JSON"),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn openai_text_arrives_in_deltas_with_usage_and_the_request_is_the_public_shape() {
    let server = serve(vec![Reply::Sse(fixture("openai_text.sse"))]).await;
    let (events, error) =
        collect(&provider("oai", &config(Kind::Openai, &server)), &ask("hi")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        events,
        vec![
            Event::TextDelta("Hello".into()),
            Event::TextDelta(", world".into()),
            Event::TextDelta("!".into()),
            Event::Usage(Usage {
                input_tokens: 12,
                output_tokens: 3
            }),
            Event::Done {
                stop_reason: StopReason::EndTurn
            },
        ]
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(seen[0].body["stream"], json!(true));
    assert_eq!(
        seen[0].body["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(seen[0].body["model"], json!("test-model"));
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    );
}

#[tokio::test]
async fn anthropic_text_arrives_in_deltas_with_usage_and_the_request_is_the_public_shape() {
    let server = serve(vec![Reply::Sse(fixture("anthropic_text.sse"))]).await;
    let (events, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("hi"),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        events,
        vec![
            Event::TextDelta("Hello".into()),
            Event::TextDelta(", world".into()),
            Event::TextDelta("!".into()),
            Event::Usage(Usage {
                input_tokens: 25,
                output_tokens: 15
            }),
            Event::Done {
                stop_reason: StopReason::EndTurn
            },
        ]
    );
    let seen = server.seen();
    assert_eq!(seen[0].line, "POST /v1/messages HTTP/1.1");
    assert_eq!(seen[0].header("x-api-key"), Some("sk-test-123"));
    assert_eq!(seen[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[0].body["system"], json!("be brief"));
    assert_eq!(seen[0].body["max_tokens"], json!(1024));
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "user", "content": "hi"}])
    );
}

#[tokio::test]
async fn a_tool_call_whose_arguments_arrive_in_8_chunks_is_joined_in_both_families() {
    let server = serve(vec![Reply::Sse(fixture("openai_tool_8_chunks.sse"))]).await;
    let (events, error) = collect(
        &provider("oai", &config(Kind::Openai, &server)),
        &ask("weather?"),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        calls(&events),
        vec![(
            "call_DdmO9pD3xa9XTPNJ32zg2hcA".into(),
            "get_weather".into(),
            json!({"city": "Paris", "unit": "c"})
        )]
    );
    assert_eq!(
        events.last(),
        Some(&Event::Done {
            stop_reason: StopReason::ToolUse
        })
    );
    assert!(events.contains(&Event::Usage(Usage {
        input_tokens: 82,
        output_tokens: 18
    })));

    // Anthropic: the pieces include empty partial_json (LiteLLM #29286's case).
    let server = serve(vec![Reply::Sse(fixture("anthropic_tool_8_chunks.sse"))]).await;
    let (events, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("weather?"),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Let me check.");
    assert_eq!(
        calls(&events),
        vec![(
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
            "get_weather".into(),
            json!({"city": "Paris", "unit": "c"})
        )]
    );
    assert_eq!(
        events.last(),
        Some(&Event::Done {
            stop_reason: StopReason::ToolUse
        })
    );
    assert!(events.contains(&Event::Usage(Usage {
        input_tokens: 472,
        output_tokens: 89
    })));
}

#[tokio::test]
async fn two_parallel_tool_calls_in_one_answer_in_both_families() {
    let server = serve(vec![Reply::Sse(fixture("openai_two_tools.sse"))]).await;
    let (events, error) = collect(
        &provider("oai", &config(Kind::Openai, &server)),
        &ask("both"),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        calls(&events),
        vec![
            (
                "call_A1".into(),
                "get_weather".into(),
                json!({"city": "Paris"})
            ),
            (
                "call_B2".into(),
                "get_time".into(),
                json!({"zone": "Europe/Paris"})
            ),
        ]
    );
    let server = serve(vec![Reply::Sse(fixture("anthropic_two_tools.sse"))]).await;
    let (events, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("both"),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    // The second call's input arrived only as an empty piece: it is `{}`.
    assert_eq!(
        calls(&events),
        vec![
            (
                "toolu_A1".into(),
                "get_weather".into(),
                json!({"city": "Paris"})
            ),
            ("toolu_B2".into(), "get_time".into(), json!({})),
        ]
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_answered() {
    let server = serve(vec![
        Reply::Status(
            429,
            vec![("retry-after", "1".into())],
            r#"{"error":{"message":"slow down"}}"#.into(),
        ),
        Reply::Sse(fixture("openai_text.sse")),
    ])
    .await;
    let started = Instant::now();
    let (events, error) =
        collect(&provider("oai", &config(Kind::Openai, &server)), &ask("hi")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Hello, world!");
    assert_eq!(server.seen().len(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );

    // A wait longer than is honoured fails at once, without a second request.
    let server = serve(vec![
        Reply::Status(429, vec![("retry-after", "3600".into())], String::new()),
        Reply::Sse(fixture("openai_text.sse")),
    ])
    .await;
    let (_, error) = collect(&provider("oai", &config(Kind::Openai, &server)), &ask("hi")).await;
    assert!(
        matches!(&error, Some(ProviderError::RetryAfterTooLong { provider, status: 429, .. }) if provider == "oai"),
        "{error:?}"
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_500_or_a_reset_connection_is_retried_and_attempts_are_bounded() {
    let server = serve(vec![
        Reply::Status(500, vec![], "{}".into()),
        Reply::Reset,
        Reply::Sse(fixture("anthropic_text.sse")),
    ])
    .await;
    let (events, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("hi"),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Hello, world!");
    assert_eq!(server.seen().len(), 3);

    // Three 503s with three attempts: a typed error, and no fourth request.
    let overloaded = Reply::Status(503, vec![], r#"{"error":{"message":"overloaded"}}"#.into());
    let server = serve(vec![
        overloaded.clone(),
        overloaded.clone(),
        overloaded,
        Reply::Sse(fixture("anthropic_text.sse")),
    ])
    .await;
    let (_, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("hi"),
    )
    .await;
    match &error {
        Some(ProviderError::Status {
            provider,
            status: 503,
            attempts: 3,
            message,
        }) => {
            assert_eq!(provider, "ant");
            assert_eq!(message, "overloaded");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.seen().len(), 3);
}

/// A server that keeps its first connection alive after one answer, then closes it as the
/// client reuses it (it reads the second request and answers nothing, as a server closing an
/// idle connection at that moment does); every later connection is answered. Returns the
/// URL, the requests read and the connections accepted.
async fn serve_closing_its_kept_alive_connection(
    body: Vec<u8>,
) -> (String, Arc<Mutex<usize>>, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (requests, connections) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let (r, c) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let first = {
                let mut c = c.lock().expect("lock");
                *c += 1;
                *c == 1
            };
            let (r, body) = (r.clone(), body.clone());
            tokio::spawn(async move {
                while read_request(&mut socket).await.is_some() {
                    let n = {
                        let mut r = r.lock().expect("lock");
                        *r += 1;
                        *r
                    };
                    if first && n == 2 {
                        return; // dropped: closed under the reused connection
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if socket.write_all(head.as_bytes()).await.is_err()
                        || socket.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, requests, connections)
}

#[tokio::test]
async fn a_kept_alive_connection_closed_as_it_is_reused_is_retried_at_once_not_after_the_backoff() {
    let (url, requests, connections) =
        serve_closing_its_kept_alive_connection(fixture("openai_text.sse")).await;
    let mut cfg = config(
        Kind::Openai,
        &Server {
            url,
            seen: Arc::default(),
        },
    );
    cfg.answer_timeout = Duration::from_secs(120);
    // A backoff long enough that waiting it out cannot pass for an immediate retry.
    let backoff = Duration::from_secs(20);
    let mut slow = options();
    slow.retry.backoff_base = backoff;
    slow.retry.backoff_cap = backoff;
    let client = HttpProvider::new("oai", &cfg, Some("k"), &slow).expect("client");
    let (events, error) = collect(&client, &ask("hi")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Hello, world!");
    // As the agent worker does between two requests of a turn (a tool call on its kernel
    // link), the runtime is busy: the client has not seen its idle connection close.
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let (events, error) = collect(&client, &ask("again")).await;
    let took = started.elapsed();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Hello, world!");
    // The second request went on the kept-alive connection, failed there, and went again on
    // a new one at once: the backoff's least wait is half its base.
    assert_eq!(*requests.lock().expect("lock"), 3);
    assert_eq!(*connections.lock().expect("lock"), 2);
    assert!(took < backoff / 4, "the retry waited {took:?}");

    // A second failure of the same request is backed off: the immediate retry is one.
    let server = serve(vec![
        Reply::Reset,
        Reply::Reset,
        Reply::Sse(fixture("openai_text.sse")),
    ])
    .await;
    let mut cfg = config(Kind::Openai, &server);
    cfg.answer_timeout = Duration::from_secs(120);
    let mut measured = options();
    measured.retry.backoff_base = Duration::from_millis(400);
    measured.retry.backoff_cap = Duration::from_millis(400);
    let client = HttpProvider::new("oai", &cfg, Some("k"), &measured).expect("client");
    let started = Instant::now();
    let (events, error) = collect(&client, &ask("hi")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Hello, world!");
    assert_eq!(server.seen().len(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_401_or_400_is_typed_names_the_provider_and_is_not_retried() {
    let body =
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
    let server = serve(vec![
        Reply::Status(401, vec![], body.into()),
        Reply::Sse(fixture("anthropic_text.sse")),
    ])
    .await;
    let (_, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("hi"),
    )
    .await;
    let Some(error @ ProviderError::Auth { status: 401, .. }) = error else {
        panic!("{error:?}")
    };
    let message = error.to_string();
    assert!(
        message.contains("provider ant") && message.contains("api_key"),
        "{message}"
    );
    assert!(message.contains("invalid x-api-key"), "{message}");
    assert_eq!(server.seen().len(), 1);

    // A body dripped a byte at a time holds the caller one idle timeout, not one per byte.
    let server = serve(vec![Reply::Drip(401, 100, Duration::from_millis(100))]).await;
    let mut drip = config(Kind::Anthropic, &server);
    drip.idle_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let (_, error) = collect(&provider("ant", &drip), &ask("hi")).await;
    assert!(
        matches!(&error, Some(ProviderError::Auth { status: 401, .. })),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let server = serve(vec![Reply::Status(
        400,
        vec![],
        r#"{"error":{"message":"no such model"}}"#.into(),
    )])
    .await;
    let (_, error) = collect(&provider("oai", &config(Kind::Openai, &server)), &ask("hi")).await;
    let Some(error @ ProviderError::BadRequest { status: 400, .. }) = error else {
        panic!("{error:?}")
    };
    assert!(
        error
            .to_string()
            .contains("check model and base_url of [providers.oai]"),
        "{error}"
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_redirect_is_not_followed_so_the_key_goes_nowhere_else() {
    let elsewhere = serve(vec![Reply::Sse(fixture("anthropic_text.sse"))]).await;
    let location = format!("{}/v1/messages", elsewhere.url);
    let server = serve(vec![Reply::Status(
        307,
        vec![("location", location)],
        String::new(),
    )])
    .await;
    let client = provider("ant", &config(Kind::Anthropic, &server));
    assert!(
        !format!("{client:?}").contains("sk-test-123"),
        "the key is not in Debug output"
    );
    let bad_key = HttpProvider::new(
        "ant",
        &config(Kind::Anthropic, &server),
        Some("k\r\nx-evil: 1"),
        &options(),
    );
    assert!(
        matches!(bad_key, Err(ProviderError::KeyNotAHeader { ref provider }) if provider == "ant"),
        "{bad_key:?}"
    );
    let (_, error) = collect(&client, &ask("hi")).await;
    assert!(
        matches!(
            &error,
            Some(ProviderError::Status {
                status: 307,
                attempts: 1,
                ..
            })
        ),
        "{error:?}"
    );
    assert_eq!((server.seen().len(), elsewhere.seen().len()), (1, 0));
}

#[tokio::test]
async fn a_stream_that_stalls_mid_answer_is_a_typed_error_after_the_text_so_far() {
    let body = fixture("openai_text.sse");
    let cut = body
        .windows(8)
        .position(|w| w == b"\", world")
        .expect("the second delta");
    let server = serve(vec![Reply::Stall(body, cut, Duration::from_secs(10))]).await;
    let mut config = config(Kind::Openai, &server);
    config.idle_timeout = Duration::from_secs(1);
    let (events, error) = collect(&provider("oai", &config), &ask("hi")).await;
    assert_eq!(text(&events), "Hello");
    assert!(
        matches!(&error, Some(ProviderError::Stalled { provider, during: "reading the answer", .. }) if provider == "oai"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_malformed_stream_line_is_a_typed_error_naming_the_provider() {
    let server = serve(vec![Reply::Sse(fixture("openai_malformed.sse"))]).await;
    let (events, error) =
        collect(&provider("oai", &config(Kind::Openai, &server)), &ask("hi")).await;
    assert_eq!(text(&events), "Hel", "nothing after the bad line is taken");
    let Some(error @ ProviderError::Malformed { line: 6, .. }) = error else {
        panic!("{error:?}")
    };
    assert!(
        error
            .to_string()
            .starts_with("provider oai sent a malformed stream (line 6)"),
        "{error}"
    );

    // A stream cut before its end of answer is not taken as complete.
    let body = fixture("anthropic_text.sse");
    let cut = body
        .windows(13)
        .position(|w| w == b"message_delta")
        .expect("the fixture's message_delta");
    let server = serve(vec![Reply::Sse(body[..cut].to_vec())]).await;
    let (events, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("hi"),
    )
    .await;
    assert_eq!(text(&events), "Hello, world!");
    assert!(
        matches!(&error, Some(ProviderError::Truncated { provider }) if provider == "ant"),
        "{error:?}"
    );

    // The last event without its closing blank line is not dispatched (the format's rule):
    // the answer never reached message_stop.
    let body = fixture("anthropic_text.sse");
    let server = serve(vec![Reply::Sse(body[..body.len() - 1].to_vec())]).await;
    let (events, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("hi"),
    )
    .await;
    assert_eq!(
        events.last(),
        Some(&Event::Usage(Usage {
            input_tokens: 25,
            output_tokens: 15
        }))
    );
    assert!(
        matches!(&error, Some(ProviderError::Truncated { .. })),
        "{error:?}"
    );
    // Positive control: the whole fixture is complete.
    let server = serve(vec![Reply::Sse(body)]).await;
    let (events, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("hi"),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        events.last(),
        Some(&Event::Done {
            stop_reason: StopReason::EndTurn
        })
    );
}

#[tokio::test]
async fn an_error_event_mid_answer_is_a_typed_error_after_the_text_so_far() {
    let server = serve(vec![Reply::Sse(fixture("anthropic_error_event.sse"))]).await;
    let (events, error) = collect(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &ask("hi"),
    )
    .await;
    assert_eq!(text(&events), "Hel");
    match error {
        Some(ProviderError::Remote {
            provider,
            kind,
            message,
        }) => {
            assert_eq!(
                (provider.as_str(), kind.as_str()),
                ("ant", "overloaded_error")
            );
            assert_eq!(
                message, "Overloaded\\u{1b}[2J",
                "the escape is shown, not sent to a terminal"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_failing_provider_fails_over_to_the_fallback_and_says_so() {
    let down = Reply::Status(503, vec![], String::new());
    let primary = serve(vec![down.clone(), down.clone(), down]).await;
    let backup = serve(vec![Reply::Sse(fixture("anthropic_text.sse"))]).await;
    let failover = Failover::new(
        Box::new(provider("main", &config(Kind::Openai, &primary))),
        Some(Box::new(provider(
            "backup",
            &config(Kind::Anthropic, &backup),
        ))),
    );
    let mut stream = failover
        .stream(&ask("hi"))
        .await
        .expect("the fallback answers");
    assert_eq!(stream.provider(), "backup");
    assert_eq!(stream.failovers().len(), 1);
    let event = &stream.failovers()[0];
    assert_eq!((event.from.as_str(), event.to.as_str()), ("main", "backup"));
    assert!(
        event.reason.contains("HTTP 503 after 3 attempt(s)"),
        "{}",
        event.reason
    );
    assert_eq!(
        stream.next().await.and_then(Result::ok),
        Some(Event::TextDelta("Hello".into()))
    );
    assert_eq!((primary.seen().len(), backup.seen().len()), (3, 1));

    // A primary that stalls before its first event fails over too.
    let primary = serve(vec![Reply::Stall(
        fixture("openai_text.sse"),
        0,
        Duration::from_secs(10),
    )])
    .await;
    let backup = serve(vec![Reply::Sse(fixture("anthropic_text.sse"))]).await;
    let mut slow = config(Kind::Openai, &primary);
    slow.idle_timeout = Duration::from_secs(1);
    let failover = Failover::new(
        Box::new(provider("main", &slow)),
        Some(Box::new(provider(
            "backup",
            &config(Kind::Anthropic, &backup),
        ))),
    );
    let (events, error) = collect(&failover, &ask("hi")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Hello, world!");

    // Positive control: a primary that answers is used, and the fallback never asked.
    let primary = serve(vec![Reply::Sse(fixture("openai_text.sse"))]).await;
    let backup = serve(vec![Reply::Sse(fixture("anthropic_text.sse"))]).await;
    let failover = Failover::new(
        Box::new(provider("main", &config(Kind::Openai, &primary))),
        Some(Box::new(provider(
            "backup",
            &config(Kind::Anthropic, &backup),
        ))),
    );
    let stream = failover
        .stream(&ask("hi"))
        .await
        .expect("the primary answers");
    assert_eq!((stream.provider(), stream.failovers().len()), ("main", 0));
    assert_eq!(backup.seen().len(), 0);

    // Both down: the error names both.
    let primary = serve(vec![Reply::Status(401, vec![], String::new())]).await;
    let backup = serve(vec![Reply::Status(403, vec![], String::new())]).await;
    let failover = Failover::new(
        Box::new(provider("main", &config(Kind::Openai, &primary))),
        Some(Box::new(provider(
            "backup",
            &config(Kind::Anthropic, &backup),
        ))),
    );
    let (_, error) = collect(&failover, &ask("hi")).await;
    let Some(error @ ProviderError::Exhausted { .. }) = error else {
        panic!("{error:?}")
    };
    let message = error.to_string();
    assert!(
        message.contains("provider main refused") && message.contains("provider backup refused"),
        "{message}"
    );
}

/// A forwarding HTTP proxy (absolute-form requests) that records each request's target.
async fn spawn_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_url = format!("http://{}", listener.local_addr().expect("addr"));
    let targets = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = targets.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                // An absolute-form request: forward it to its origin in origin form.
                let Some((line, headers, body)) = read_request(&mut client).await else {
                    return;
                };
                let mut parts = line.splitn(3, ' ');
                let (method, target, version) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                record
                    .lock()
                    .expect("lock")
                    .push(format!("{method} {target}"));
                let Some(rest) = target.strip_prefix("http://") else {
                    return;
                };
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let Ok(mut origin) = TcpStream::connect(authority).await else {
                    return;
                };
                let mut head = format!("{method} {path} {version}\r\n");
                for (k, v) in headers.iter().filter(|(k, _)| !k.starts_with("proxy-")) {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if origin.write_all(head.as_bytes()).await.is_err()
                    || origin.write_all(&body).await.is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut origin).await;
            });
        }
    });
    (proxy_url, targets)
}

#[tokio::test]
async fn the_client_goes_through_the_proxy_it_is_given_or_the_environment_names() {
    let server = serve(vec![Reply::Sse(fixture("openai_text.sse"))]).await;
    let (proxy_url, targets) = spawn_proxy().await;
    let mut explicit = options();
    explicit.proxy = ProxyChoice::Url(proxy_url);
    let client = HttpProvider::new("oai", &config(Kind::Openai, &server), Some("k"), &explicit)
        .expect("client");
    let (events, error) = collect(&client, &ask("hi")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Hello, world!");
    assert_eq!(
        *targets.lock().expect("lock"),
        vec![format!("POST {}/v1/chat/completions", server.url)]
    );
    assert_eq!(server.seen().len(), 1);

    // Positive control of the count: a direct client does not touch the proxy.
    let server = serve(vec![Reply::Sse(fixture("openai_text.sse"))]).await;
    let (_, error) = collect(&provider("oai", &config(Kind::Openai, &server)), &ask("hi")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(targets.lock().expect("lock").len(), 1);

    // HTTP_PROXY, as the egress broker sets it in the worker's sandbox. No other test reads
    // the proxy variables (they build direct clients), and std serialises its own reads and
    // writes of the environment; the addresses are IP literals, so no resolver reads it.
    let server = serve(vec![Reply::Sse(fixture("anthropic_text.sse"))]).await;
    let (proxy_url, targets) = spawn_proxy().await;
    let saved: Vec<_> = ["HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"]
        .into_iter()
        .map(|k| (k, std::env::var_os(k)))
        .collect();
    for (k, _) in &saved {
        std::env::remove_var(k);
    }
    std::env::set_var("HTTP_PROXY", &proxy_url);
    let mut from_env = options();
    from_env.proxy = ProxyChoice::Environment;
    let built = HttpProvider::new(
        "ant",
        &config(Kind::Anthropic, &server),
        Some("k"),
        &from_env,
    );
    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    let (events, error) = collect(&built.expect("client"), &ask("hi")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&events), "Hello, world!");
    assert_eq!(
        *targets.lock().expect("lock"),
        vec![format!("POST {}/v1/messages", server.url)]
    );
}

#[path = "providers/agent_loop.rs"]
mod agent_loop;
