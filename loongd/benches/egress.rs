//! The egress broker's cost, all in one run: an HTTPS GET of a 1 KiB body from a local TLS
//! server (rustls, a CA made here by the `openssl` tool) by one client — this bench's own
//! executable in its client mode, rustls with ring — run on the host directly (the floor)
//! and inside a `sandbox run` whose only way out is loongd's broker, with a new connection
//! each time and on one kept alive; `web.fetch` of the same page through loongd; medians and
//! p99. Then connections per second through one broker at [`RATE_CLIENTS`] concurrent
//! clients (each connection: CONNECT, TLS handshake, GET, close), beside the same clients on
//! the host. Goal (issue 17): through the broker ≤ 1.2× direct for a new connection, ≤ 1.1×
//! on a kept-alive one.
//!
//! It drives the release binaries (`cargo build --release --bins`, which `scripts/bench`
//! does); without them, or without `openssl`, it says so and measures nothing.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use loong_ipc::{
    client::{Client, ConnectOptions},
    ControlRequest, ControlResponse, InvokeRequest, PeerKind,
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

#[path = "../../workers/bench_support.rs"]
mod bench_support;
use bench_support::{percentile, release_dir};

/// Runs of the whole suite (a fresh loongd each).
const RUNS: usize = 3;
/// Requests measured per client run, after [`WARM_UP`].
const ITERATIONS: usize = 200;
const WARM_UP: usize = 10;
/// `web.fetch` calls measured per run.
const FETCHES: usize = 100;
/// The body the server sends.
const BODY_BYTES: usize = 1024;
/// Concurrent clients of the connection-rate measure, and how long it lasts.
const RATE_CLIENTS: usize = 64;
const RATE_TIME: Duration = Duration::from_secs(3);
/// The largest response head the client reads.
const MAX_HEAD: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        client(&args[i + 1..]);
        return;
    }
    let Some(bin) = release_dir("loong-worker-http") else {
        println!("egress: the release binaries are missing (cargo build --release --bins)");
        return;
    };
    if Command::new("openssl").arg("version").output().is_err() {
        println!("egress: no openssl tool to make the test CA");
        return;
    }
    let dir = Pki::new();
    let server = serve(&dir.path);
    println!("egress bench: {BODY_BYTES} B body over TLS; {ITERATIONS} requests per client run, {FETCHES} web.fetch calls; {RATE_CLIENTS} clients for {RATE_TIME:?} for the rate");
    println!(
        "{:4} {:26} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "run", "path", "p50 µs", "p99 µs", "floor p50", "floor p99", "p50/flr"
    );
    for run in 1..=RUNS {
        let home = home(&dir.path);
        loongctl(&bin, home.path(), &["daemon", "start"]);
        let target = format!("127.0.0.1:{server}");
        let sandboxed = |mode: &str, n: &str| -> String {
            let exe = dir.path.join("client");
            let out = Command::new(bin.join("loongctl"))
                .arg("--home")
                .arg(home.path())
                .args(["sandbox", "run", "--tier", "balanced", "--read"])
                .arg(&dir.path)
                .args(["--allow-net", &target, "--"])
                .arg(&exe)
                .args(["--client", mode, &target, n])
                .arg(dir.path.join("ca.pem"))
                .output()
                .expect("loongctl sandbox run");
            assert!(
                out.status.success(),
                "sandbox run {mode}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let direct = |mode: &str, n: &str| -> String {
            let out = Command::new(dir.path.join("client"))
                .args(["--client", mode, &target, n])
                .arg(dir.path.join("ca.pem"))
                .env_remove("HTTPS_PROXY")
                .output()
                .expect("the client");
            assert!(
                out.status.success(),
                "client {mode}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let n = ITERATIONS.to_string();
        for mode in ["new", "keep"] {
            let mut floor = samples(&direct(mode, &n));
            let mut through = samples(&sandboxed(mode, &n));
            row(
                run,
                &format!("broker, {mode} connection"),
                &mut through,
                &mut floor,
            );
        }
        let mut floor = samples(&direct("new", &n));
        let mut fetched = fetches(&home.path().join("run/loongd.sock"), &target);
        row(run, "web.fetch via loongd", &mut fetched, &mut floor);
        let secs = RATE_TIME.as_secs().to_string();
        let (d, b) = (
            rate(&direct("rate", &secs)),
            rate(&sandboxed("rate", &secs)),
        );
        println!(
            "{run:4} connections/s at {RATE_CLIENTS} clients: broker {b:.0}, direct {d:.0} ({:.2}× direct)",
            b / d
        );
        loongctl(&bin, home.path(), &["daemon", "stop"]);
    }
}

fn row(run: usize, name: &str, through: &mut [Duration], floor: &mut [Duration]) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (p50, p99) = (percentile(through, 0.5), percentile(through, 0.99));
    let (f50, f99) = (percentile(floor, 0.5), percentile(floor, 0.99));
    println!(
        "{run:4} {name:26} {:9.0} {:9.0} {:9.0} {:9.0} {:7.2}",
        us(p50),
        us(p99),
        us(f50),
        us(f99),
        us(p50) / us(f50)
    );
}

/// The client's answer: one duration in nanoseconds per request.
fn samples(out: &str) -> Vec<Duration> {
    out.split_whitespace()
        .map(|n| Duration::from_nanos(n.parse().expect("nanoseconds")))
        .collect()
}

/// The rate client's answer: connections, then seconds.
fn rate(out: &str) -> f64 {
    let v: Vec<f64> = out
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    v[0] / v[1]
}

/// `web.fetch` of the page through loongd (its http worker, through the broker).
fn fetches(socket: &Path, target: &str) -> Vec<Duration> {
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "bench".into(),
        timeout: Duration::from_secs(5),
    };
    let mut c = Client::connect(socket, &opts).expect("connect");
    let input = serde_json::json!({ "url": format!("https://{target}/") }).to_string();
    let mut out = Vec::with_capacity(FETCHES);
    for i in 0..WARM_UP + FETCHES {
        let t = Instant::now();
        let r: ControlResponse = c
            .call(
                ControlRequest::Invoke(InvokeRequest {
                    tool: "web.fetch".into(),
                    input: input.clone(),
                    token: None,
                }),
                Duration::from_secs(30),
            )
            .expect("web.fetch");
        let took = t.elapsed();
        let ControlResponse::Invoked(answer) = r else {
            panic!("web.fetch: {r:?}")
        };
        let v: serde_json::Value = serde_json::from_str(&answer.output).expect("JSON");
        assert_eq!(v["status"], 200, "{v}");
        if i >= WARM_UP {
            out.push(took);
        }
    }
    out
}

/// A home whose loongd trusts the bench's CA, fetches from loopback, and leaves the broker's
/// byte budget, connection rate and connection limit out of the way (a client's closed connection holds its
/// slot until the broker has seen it close, so [`RATE_CLIENTS`] back-to-back clients need
/// more than [`RATE_CLIENTS`] slots).
fn home(pki: &Path) -> tempfile::TempDir {
    let home = tempfile::Builder::new()
        .prefix("le")
        .tempdir_in("/tmp")
        .expect("home");
    std::fs::write(
        home.path().join("loongd.toml"),
        format!(
            "[builtins]\nfetch = true\nfetch_allow_private = true\n\n[egress]\nca_bundle = {:?}\nmax_bytes = {}\nmax_connections = {}\nconnections_per_second = 100000\nconnections_burst = 100000\n",
            pki.join("ca.pem").display().to_string(),
            1u64 << 40,
            RATE_CLIENTS * 4
        ),
    )
    .expect("config");
    home
}

fn loongctl(bin: &Path, home: &Path, args: &[&str]) {
    let out = Command::new(bin.join("loongctl"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("loongctl");
    assert!(
        out.status.success(),
        "loongctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a leaf for 127.0.0.1 and this executable (the client), in a directory every uid may
/// read (the sandbox runs as another uid).
struct Pki {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("lpki")
            .tempdir_in("/tmp")
            .expect("dir");
        let path = dir.path().to_path_buf();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&path)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=loong bench ca",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "leaf.key",
                    "-out",
                    "leaf.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            path.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
        let exe = std::env::current_exe().expect("this executable");
        std::fs::copy(exe, path.join("client")).expect("copy the client");
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        mode(&path, 0o755);
        mode(&path.join("client"), 0o755);
        mode(&path.join("ca.pem"), 0o644);
        Pki { path, _dir: dir }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server on a loopback port: HTTP/1.1, keep-alive, every request answered with
/// [`BODY_BYTES`]; a thread per connection.
fn serve(pki: &Path) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.join("leaf.pem"))
        .expect("leaf")
        .collect::<Result<_, _>>()
        .expect("leaf");
    let key = PrivateKeyDer::from_pem_file(pki.join("leaf.key")).expect("key");
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let Ok(tls) = ServerConnection::new(config) else {
                    return;
                };
                let mut s = StreamOwned::new(tls, conn);
                let mut answer =
                    format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {BODY_BYTES}\r\n\r\n")
                        .into_bytes();
                answer.extend(std::iter::repeat_n(b'x', BODY_BYTES));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(&answer).and_then(|()| s.flush()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// Client mode: `--client new|keep|rate HOST:PORT N|SECS CA`; through `HTTPS_PROXY` when it is
/// set. Prints each request's nanoseconds (`new`, `keep`) or `connections seconds` (`rate`).
fn client(args: &[String]) {
    let [mode, target, n, ca] = args else {
        panic!("--client new|keep|rate HOST:PORT N CA")
    };
    let n: u64 = n.parse().expect("N");
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca")).expect("ca");
    }
    let config = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let proxy = std::env::var("HTTPS_PROXY").ok().map(|p| {
        p.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    });
    let c = Conn {
        config,
        target: target.clone(),
        proxy,
    };
    let mut out = String::new();
    match mode.as_str() {
        "new" => {
            for i in 0..WARM_UP as u64 + n {
                let t = Instant::now();
                let mut s = c.open();
                c.get(&mut s);
                let took = t.elapsed();
                s.conn.send_close_notify();
                let _ = s.flush();
                if i >= WARM_UP as u64 {
                    out.push_str(&format!("{} ", took.as_nanos()));
                }
            }
        }
        "keep" => {
            let mut s = c.open();
            for i in 0..WARM_UP as u64 + n {
                let t = Instant::now();
                c.get(&mut s);
                let took = t.elapsed();
                if i >= WARM_UP as u64 {
                    out.push_str(&format!("{} ", took.as_nanos()));
                }
            }
        }
        "rate" => {
            let c = Arc::new(c);
            let done = Arc::new(AtomicU64::new(0));
            let until = Instant::now() + Duration::from_secs(n);
            let started = Instant::now();
            let threads: Vec<_> = (0..RATE_CLIENTS)
                .map(|_| {
                    let (c, done) = (c.clone(), done.clone());
                    std::thread::spawn(move || {
                        while Instant::now() < until {
                            let mut s = c.open();
                            c.get(&mut s);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("a client thread");
            }
            let secs = started.elapsed().as_secs_f64();
            out = format!("{} {secs}", done.load(Ordering::Relaxed));
        }
        other => panic!("mode {other:?}"),
    }
    println!("{}", out.trim_end());
}

struct Conn {
    config: Arc<ClientConfig>,
    target: String,
    proxy: Option<String>,
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

impl Conn {
    /// A TCP connection to the server (through the proxy's tunnel when there is one) with a
    /// TLS session on it, its handshake done.
    fn open(&self) -> Tls {
        let tcp = match &self.proxy {
            None => TcpStream::connect(&self.target).expect("connect"),
            Some(p) => {
                let mut s = TcpStream::connect(p).expect("connect to the proxy");
                s.set_nodelay(true).expect("nodelay");
                let t = &self.target;
                s.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
                    .expect("CONNECT");
                let head = read_head(&mut s, &mut Vec::new());
                assert!(
                    head.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&head)
                );
                s
            }
        };
        tcp.set_nodelay(true).expect("nodelay");
        let host: SocketAddr = self.target.parse().expect("an address");
        let name = ServerName::IpAddress(host.ip().into());
        let tls = ClientConnection::new(self.config.clone(), name).expect("client");
        let mut s = StreamOwned::new(tls, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).expect("handshake");
        }
        s
    }

    /// One GET and its whole answer.
    fn get(&self, s: &mut Tls) {
        let t = &self.target;
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
            .expect("GET");
        s.flush().expect("GET");
        let mut rest = Vec::new();
        let head = read_head(s, &mut rest);
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        while rest.len() < BODY_BYTES {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).expect("body");
            assert!(n > 0, "the body ended early");
            rest.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Reads up to the end of a response head: the head; what followed it is left in `rest`.
fn read_head(s: &mut impl Read, rest: &mut Vec<u8>) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("a response");
        assert!(n > 0, "the response ended before its head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            *rest = buf.split_off(end + 4);
            return buf;
        }
        assert!(buf.len() <= MAX_HEAD, "the response head is too large");
    }
}
