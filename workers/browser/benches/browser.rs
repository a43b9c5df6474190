//! `browser.open` + `browser.extract` of a local 50 KiB page, two ways, in one run:
//!
//! - directly: the same Chromium binary driven over its DevTools pipe from the host, by this
//!   crate's client, no sandbox, no proxy, no broker;
//! - through Loong: a control client → loongd (decision, audit) → the browser worker in its
//!   sandbox → Chromium, every request through the egress broker.
//!
//! Warm: a session already open, medians and 99th percentiles of hand-timed samples (goal:
//! Loong at most 1.2× direct). Cold: the first `browser.open`, with where its time went
//! (sandbox and worker start, Chromium's start, its first DevTools answer, the page). It drives
//! the release binaries (`scripts/bench` builds them); without them or without Chromium it
//! says so and measures nothing.

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use loong_ipc::{
    client::{Client, ConnectOptions},
    ControlRequest, ControlResponse, InvokeRequest, PeerKind,
};

#[path = "../../bench_support.rs"]
mod bench_support;
use bench_support::{percentile, release_dir};

const CALLS: usize = 100;
const WARMUP: usize = 10;
/// The page's size.
const PAGE_BYTES: usize = 50 * 1024;

fn chromium() -> Option<PathBuf> {
    [
        "/usr/lib/chromium/chromium-headless-shell",
        "/usr/lib/chromium/chromium",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// A 50 KiB page with paragraphs and links, served on 127.0.0.1 until the process ends.
fn serve_page() -> String {
    let mut page = String::from("<html><head><title>Bench</title></head><body>");
    let mut i = 0;
    while page.len() < PAGE_BYTES - 200 {
        page.push_str(&format!(
            "<p>paragraph {i} lorem ipsum dolor sit amet <a href=\"/p{i}\">link {i}</a></p>"
        ));
        i += 1;
    }
    page.push_str("</body></html>");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let page = page.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            });
        }
    });
    format!("http://127.0.0.1:{port}/page")
}

fn report(name: &str, samples: &mut [Duration]) -> Duration {
    let med = percentile(samples, 0.5);
    println!(
        "{:44} median {:9.1} ms   p99 {:9.1} ms   (n = {})",
        name,
        med.as_secs_f64() * 1e3,
        percentile(samples, 0.99).as_secs_f64() * 1e3,
        samples.len()
    );
    med
}

fn direct(chromium: &Path, url: &str) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let profile = tempfile::tempdir_in("/tmp").expect("profile");
    rt.block_on(async {
        let t = Instant::now();
        let mut s = loong_worker_browser::Session::start(chromium, profile.path(), None)
            .await
            .expect("start");
        s.open(url).await.expect("open");
        s.extract(None).await.expect("extract");
        println!(
            "{:44} {:9.1} ms   (start: {:?} µs)",
            "direct cold: start + open + extract",
            t.elapsed().as_secs_f64() * 1e3,
            s.started
        );
        for _ in 0..WARMUP {
            s.open(url).await.expect("open");
            s.extract(None).await.expect("extract");
        }
        let mut samples: Vec<Duration> = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let t = Instant::now();
            s.open(url).await.expect("open");
            s.extract(None).await.expect("extract");
            samples.push(t.elapsed());
        }
        s.close().await;
        report("direct warm: open + extract (CDP, host)", &mut samples)
    })
}

fn through_loong(bin: &Path, chromium: &Path, url: &str, direct: Duration) {
    let home = tempfile::tempdir_in("/tmp").expect("home");
    std::fs::write(
        home.path().join("loongd.toml"),
        format!(
            "[browser]\nenabled = true\nchromium = {:?}\n",
            chromium.display().to_string()
        ),
    )
    .expect("config");
    let ctl = |args: &[&str]| {
        Command::new(bin.join("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(args)
            .output()
            .expect("loongctl")
    };
    let out = ctl(&["daemon", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "bench".into(),
        timeout: Duration::from_secs(5),
    };
    let mut c = Client::connect(&home.path().join("run/loongd.sock"), &opts).expect("connect");
    let mut call = |tool: &str, input: serde_json::Value| -> serde_json::Value {
        let r: ControlResponse = c
            .call(
                ControlRequest::Invoke(InvokeRequest {
                    tool: tool.into(),
                    input: input.to_string(),
                    token: None,
                }),
                Duration::from_secs(120),
            )
            .expect("call");
        let ControlResponse::Invoked(out) = r else {
            panic!("unexpected answer {r:?}")
        };
        serde_json::from_str(&out.output).expect("JSON")
    };
    let t = Instant::now();
    let opened = call("browser.open", serde_json::json!({"url": url}));
    let session = opened["session"].as_str().expect("session").to_string();
    call("browser.extract", serde_json::json!({"session": session}));
    let cold = t.elapsed();
    let spawned = ctl(&["audit", "recent", "--kind", "worker.spawned", "--json"]);
    let spawned: serde_json::Value = serde_json::from_slice(&spawned.stdout).unwrap_or_default();
    let w = spawned
        .as_array()
        .and_then(|a| a.first())
        .map(|r| r["detail"].clone())
        .unwrap_or_default();
    println!(
        "{:44} {:9.1} ms   (sandbox {} µs, worker ready {} µs; in the worker: {})",
        "loong cold: first open + extract",
        cold.as_secs_f64() * 1e3,
        w["sandbox_us"],
        w["cold_start_us"],
        opened["cold_start_us"]
    );
    let mut warm = |input: &serde_json::Value| {
        call("browser.open", input.clone());
        call("browser.extract", serde_json::json!({"session": session}));
    };
    let input = serde_json::json!({"session": session, "url": url});
    for _ in 0..WARMUP {
        warm(&input);
    }
    let mut samples: Vec<Duration> = (0..CALLS)
        .map(|_| {
            let t = Instant::now();
            warm(&input);
            t.elapsed()
        })
        .collect();
    let med = report("loong warm: open + extract (sandbox, broker)", &mut samples);
    println!(
        "{:44} {:.2}× (goal ≤ 1.2×)",
        "  … / direct",
        med.as_secs_f64() / direct.as_secs_f64()
    );
    ctl(&["daemon", "stop"]);
}

fn main() {
    let Some(bin) = release_dir("loong-worker-browser") else {
        println!("browser: skipped: the release binaries are missing; run scripts/bench");
        return;
    };
    let Some(chromium) = chromium() else {
        println!("browser: skipped: no Chromium (apt-get install chromium-headless-shell)");
        return;
    };
    let url = serve_page();
    let d = direct(&chromium, &url);
    through_loong(&bin, &chromium, &url, d);
}
