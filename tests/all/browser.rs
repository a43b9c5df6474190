//! The browser tools end to end: a real headless Chromium in a balanced-tier worker whose only
//! network is the egress broker, admitting the one `HOST:PORT` the session's `browser.open`
//! was decided on (`browser.control`). Pages come from local servers the tests start, granted
//! by IP literal; a second server on an ungranted port counts what reaches it.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    support::{skip, text, Home},
    workers::{details, invoke, records},
};

/// The Chromium the tests use (what loongd would find on `PATH`), if installed.
fn chromium() -> Option<PathBuf> {
    [
        "/usr/lib/chromium/chromium-headless-shell",
        "/usr/bin/chromium-headless-shell",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// What a test server answers for a path: status line, extra headers, content type, body.
type Page = (&'static str, Vec<(String, String)>, &'static str, String);

/// A local HTTP/1.1 server that records every request it reads (its path and body).
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Server {
    fn start(pages: impl Fn(&str) -> Page + Send + Sync + 'static) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, pages) = (seen.clone(), Arc::new(pages));
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let (log, pages) = (log.clone(), pages.clone());
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                        match c.read(&mut b) {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if c.read_exact(&mut body).is_err() {
                        return;
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    log.lock()
                        .expect("log")
                        .push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
                    let (status, headers, kind, answer) = pages(&path);
                    let mut out = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        answer.len()
                    );
                    for (k, v) in headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    out.push_str(&answer);
                    let _ = c.write_all(out.as_bytes());
                });
            }
        });
        Server { port, seen }
    }

    fn html(body: &'static str) -> Server {
        Server::start(move |_| ("200 OK", Vec::new(), "text/html", body.to_string()))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.seen.lock().expect("log").clone()
    }
}

/// A home with the browser tools on, the pack `web` granting `grants` without approvals, and
/// loongd started: a token of it (its bearer secret).
fn browsing_home(chromium: &Path, grants: &[String]) -> (Home, String) {
    browsing_home_with(chromium, grants, &[])
}

/// [`browsing_home`] whose pack grants `more` too (the token does not).
fn browsing_home_with(chromium: &Path, grants: &[String], more: &[&str]) -> (Home, String) {
    browsing_home_configured(chromium, grants, more, "")
}

/// [`browsing_home_with`] with more `[browser]` keys.
fn browsing_home_configured(
    chromium: &Path,
    grants: &[String],
    more: &[&str],
    browser_keys: &str,
) -> (Home, String) {
    let home = Home::with_config(&format!(
        "[browser]\nenabled = true\nchromium = {:?}\n{browser_keys}",
        chromium.display().to_string()
    ));
    std::fs::create_dir_all(home.path().join("packs")).expect("packs");
    let list: Vec<String> = grants
        .iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .map(|g| format!("{g:?}"))
        .collect();
    std::fs::write(
        home.path().join("packs/web.toml"),
        format!(
            "id = \"web\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [{}]\napproval = \"never\"\n",
            list.join(", ")
        ),
    )
    .expect("pack");
    home.start();
    let mut args = vec![
        "tokens", "issue", "--pack", "web", "--agent", "bot", "--ttl", "1h",
    ];
    for g in grants {
        args.extend(["--cap", g.as_str()]);
    }
    let out = home.ctl(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (home, text(&out.stdout).trim().to_string())
}

/// Calls `tool` with `input` under `token`: the output's JSON, or the exit code and stderr.
fn call(
    home: &Home,
    token: &str,
    tool: &str,
    input: serde_json::Value,
) -> Result<serde_json::Value, (i32, String)> {
    let input = input.to_string();
    let (code, out, err) = invoke(
        home,
        &[
            tool,
            "--token",
            token,
            "--input",
            &input,
            "--timeout",
            "120",
        ],
    );
    if code != 0 {
        return Err((code, err));
    }
    serde_json::from_str(out.trim()).map_err(|e| (code, format!("not JSON ({e}): {out}")))
}

fn open(home: &Home, token: &str, url: &str) -> serde_json::Value {
    call(home, token, "browser.open", serde_json::json!({"url": url}))
        .unwrap_or_else(|e| panic!("browser.open {url}: {e:?}"))
}

fn browser_workers(home: &Home) -> usize {
    details(home, "worker.spawned")
        .iter()
        .filter(|d| d["kind"] == "browser")
        .count()
}

macro_rules! need_chromium {
    ($name:literal) => {
        match chromium() {
            Some(c) => c,
            None => {
                return skip(
                    $name,
                    "chromium-headless-shell is not installed (`.ci/run` installs it with apt-get)",
                )
            }
        }
    };
}

const LIST_PAGE: &str = r#"<html><head><title>List</title></head><body><ul id="items"></ul>
<script>
setTimeout(() => {
  for (const name of ["alpha-rendered", "beta-rendered", "gamma-rendered"]) {
    const li = document.createElement("li");
    li.textContent = name;
    document.getElementById("items").appendChild(li);
  }
  const a = document.createElement("a"); a.href = "/next"; a.textContent = "next page";
  document.body.appendChild(a);
}, 50);
</script></body></html>"#;

#[test]
fn extract_returns_the_list_javascript_rendered_and_a_session_is_reused() {
    let chromium =
        need_chromium!("extract_returns_the_list_javascript_rendered_and_a_session_is_reused");
    let site = Server::html(LIST_PAGE);
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let opened = open(&home, &token, &site.url("/list"));
    assert_eq!(
        (opened["status"].as_i64(), opened["title"].as_str()),
        (Some(200), Some("List")),
        "{opened}"
    );
    let session = opened["session"].as_str().expect("a session").to_string();
    let waited = call(
        &home,
        &token,
        "browser.wait",
        serde_json::json!({"session": session, "selector": "#items li", "timeout_ms": 5000}),
    );
    assert!(waited.is_ok(), "{waited:?}");
    let got = call(
        &home,
        &token,
        "browser.extract",
        serde_json::json!({"session": session}),
    )
    .expect("extract");
    let text = got["text"].as_str().unwrap_or_default();
    for item in ["alpha-rendered", "beta-rendered", "gamma-rendered"] {
        assert!(text.contains(item), "{item} missing from {got}");
    }
    // The raw HTML has no such text: it came from the rendered DOM.
    assert!(!LIST_PAGE.contains("alpha-rendered</li>"));
    assert_eq!(got["links"][0]["href"], site.url("/next"), "{got}");
    // One selector narrows it.
    let part = call(
        &home,
        &token,
        "browser.extract",
        serde_json::json!({"session": session, "selector": "#items li"}),
    )
    .expect("extract");
    assert_eq!(part["text"], "alpha-rendered", "{part}");
    // A later open of the same host by the same caller reuses the session (one worker).
    let again = open(&home, &token, &site.url("/list?again"));
    assert_eq!(again["session"].as_str(), Some(session.as_str()), "{again}");
    assert_eq!(browser_workers(&home), 1);
    // The navigation is recorded with its host and outcome.
    let navigated = details(&home, "browser.navigated");
    assert!(
        navigated
            .iter()
            .any(|d| d["host"] == format!("127.0.0.1:{}", site.port)
                && d["navigations"][0]["outcome"] == "loaded"),
        "{navigated:?}"
    );
    // Closed: the session is gone, and another caller never saw it.
    let closed = call(
        &home,
        &token,
        "browser.close",
        serde_json::json!({"session": session}),
    );
    assert!(closed.is_ok(), "{closed:?}");
    let gone = call(
        &home,
        &token,
        "browser.extract",
        serde_json::json!({"session": session}),
    );
    assert!(
        matches!(&gone, Err((_, e)) if e.contains("no browser session")),
        "{gone:?}"
    );
}

const FORM_PAGE: &str = r#"<html><head><title>Form</title></head><body>
<form method="POST" action="/submit"><input name="who" id="who"><input name="what" id="what">
<button id="go" type="submit">Send</button></form></body></html>"#;

#[test]
fn a_form_typed_and_clicked_reaches_the_server_with_its_values() {
    let chromium = need_chromium!("a_form_typed_and_clicked_reaches_the_server_with_its_values");
    let site = Server::start(|path| match path {
        "/submit" => (
            "200 OK",
            Vec::new(),
            "text/html",
            "<title>Thanks</title>thanks".into(),
        ),
        _ => ("200 OK", Vec::new(), "text/html", FORM_PAGE.into()),
    });
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let s = open(&home, &token, &site.url("/form"))["session"]
        .as_str()
        .expect("session")
        .to_string();
    for (sel, value) in [("#who", "loong tester"), ("#what", "a=b&c")] {
        let typed = call(
            &home,
            &token,
            "browser.type",
            serde_json::json!({"session": s, "selector": sel, "text": value}),
        );
        assert!(typed.is_ok(), "{typed:?}");
    }
    let clicked = call(
        &home,
        &token,
        "browser.click",
        serde_json::json!({"session": s, "selector": "#go"}),
    );
    assert!(clicked.is_ok(), "{clicked:?}");
    let landed = call(
        &home,
        &token,
        "browser.wait",
        serde_json::json!({"session": s, "selector": "load", "timeout_ms": 5000}),
    );
    assert!(landed.is_ok(), "{landed:?}");
    let posted: Vec<_> = site
        .requests()
        .into_iter()
        .filter(|(p, _)| p == "/submit")
        .collect();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].1, "who=loong+tester&what=a%3Db%26c", "{posted:?}");
    // The click's navigation (the form's submit) is audited like an open's.
    let clicked = clicked.expect("clicked");
    assert_eq!(clicked["navigated"], true, "{clicked}");
    let navigated = details(&home, "browser.navigated");
    assert!(
        navigated.iter().any(|d| d["op"] == "click"
            && d["navigations"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["url"] == site.url("/submit")))),
        "{navigated:?}"
    );
    // A selector that matches nothing is the tool's error, not a hang.
    let none = call(
        &home,
        &token,
        "browser.click",
        serde_json::json!({"session": s, "selector": "#nothing"}),
    );
    assert!(
        matches!(&none, Err((_, e)) if e.contains("no element matches")),
        "{none:?}"
    );
}

/// A PNG's width, height and pixels (RGBA or RGB rows, unfiltered).
fn png_pixels(png: &[u8]) -> (u32, u32, Vec<Vec<u8>>) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut at, mut idat, mut ihdr) = (8, Vec::new(), Vec::new());
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().expect("len")) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => ihdr = data.to_vec(),
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        at += 12 + len;
    }
    let w = u32::from_be_bytes(ihdr[0..4].try_into().expect("w"));
    let h = u32::from_be_bytes(ihdr[4..8].try_into().expect("h"));
    assert_eq!(ihdr[8], 8, "8-bit samples");
    let bpp = match ihdr[9] {
        6 => 4,
        2 => 3,
        other => panic!("colour type {other}"),
    };
    let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&idat).expect("inflate");
    let stride = w as usize * bpp;
    let mut rows: Vec<Vec<u8>> = Vec::new();
    for y in 0..h as usize {
        let line = &raw[y * (stride + 1)..(y + 1) * (stride + 1)];
        let (f, src) = (line[0], &line[1..]);
        let prev = rows.last().cloned().unwrap_or_else(|| vec![0; stride]);
        let mut cur = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= bpp { cur[i - bpp] as i16 } else { 0 };
            let b = prev[i] as i16;
            let c = if i >= bpp { prev[i - bpp] as i16 } else { 0 };
            let pred = match f {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                other => panic!("filter {other}"),
            };
            cur[i] = src[i].wrapping_add(pred as u8);
        }
        rows.push(cur);
    }
    (w, h, rows)
}

#[test]
fn a_screenshot_is_a_png_of_the_viewport_and_not_one_colour() {
    let chromium = need_chromium!("a_screenshot_is_a_png_of_the_viewport_and_not_one_colour");
    let site = Server::html(
        r#"<html><body style="margin:0;background:#fff"><div style="width:400px;height:300px;background:#c00"></div><h1>Shot</h1></body></html>"#,
    );
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let s = open(&home, &token, &site.url("/"))["session"]
        .as_str()
        .expect("session")
        .to_string();
    let shot = call(
        &home,
        &token,
        "browser.screenshot",
        serde_json::json!({"session": s}),
    )
    .expect("screenshot");
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["png_base64"].as_str().expect("base64"))
        .expect("decodes");
    let (w, h, rows) = png_pixels(&png);
    assert_eq!((w, h), (1280, 800), "the viewport's size");
    let bpp = rows[0].len() / w as usize;
    let mut colours = BTreeMap::new();
    for r in &rows {
        for px in r.chunks(bpp) {
            *colours.entry(px.to_vec()).or_insert(0u64) += 1;
        }
    }
    assert!(colours.len() > 1, "one flat colour: {colours:?}");
    // The red block is there (the page was painted, not a blank frame).
    assert!(
        colours
            .keys()
            .any(|px| px[0] > 180 && px[1] < 40 && px[2] < 40),
        "no red pixels"
    );
}

#[test]
fn a_redirect_or_an_image_to_an_ungranted_port_never_reaches_it() {
    let chromium = need_chromium!("a_redirect_or_an_image_to_an_ungranted_port_never_reaches_it");
    let other = Server::html("<title>Other</title>other");
    let other_port = other.port;
    let site = Server::start(move |path| match path {
        "/away" => (
            "302 Found",
            vec![(
                "Location".into(),
                format!("http://127.0.0.1:{other_port}/landing"),
            )],
            "text/html",
            String::new(),
        ),
        _ => (
            "200 OK",
            Vec::new(),
            "text/html",
            format!(
                r#"<title>Img</title><img src="http://127.0.0.1:{other_port}/pixel.png"><script>fetch("http://127.0.0.1:{other_port}/xhr").catch(()=>0)</script>"#
            ),
        ),
    });
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let page = open(&home, &token, &site.url("/img"));
    assert_eq!(
        page["status"].as_i64(),
        Some(200),
        "the positive control: {page}"
    );
    let s = page["session"].as_str().expect("session").to_string();
    let redirected = call(
        &home,
        &token,
        "browser.open",
        serde_json::json!({"session": s, "url": site.url("/away")}),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        other.requests(),
        Vec::<(String, String)>::new(),
        "the ungranted server was reached"
    );
    // The granted server saw both pages.
    let paths: Vec<String> = site.requests().into_iter().map(|(p, _)| p).collect();
    assert!(
        paths.contains(&"/img".into()) && paths.contains(&"/away".into()),
        "{paths:?}"
    );
    // The broker refused each, and the trail says so; the redirect is a navigation refused.
    let denied = details(&home, "net.denied");
    assert!(
        denied
            .iter()
            .any(|d| d["port"].as_u64() == Some(u64::from(other_port))),
        "no refusal of port {other_port}: {denied:?}"
    );
    let redirected = redirected.expect("the redirect's open answers");
    let navs = redirected["navigations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        navs.iter().any(|n| n["outcome"] == "redirected"),
        "{redirected}"
    );
    assert!(
        navs.iter()
            .any(|n| n["host"] == format!("127.0.0.1:{other_port}") && n["outcome"] != "loaded"),
        "{redirected}"
    );
    let navigated = details(&home, "browser.navigated");
    assert!(
        navigated.iter().any(|d| d["subresource_hosts"]
            .get(format!("127.0.0.1:{other_port}"))
            .is_some()),
        "subresources are summarised per page: {navigated:?}"
    );
}

#[test]
fn refused_urls_and_ungranted_hosts_never_reach_chromium() {
    let chromium = need_chromium!("refused_urls_and_ungranted_hosts_never_reach_chromium");
    let site = Server::html("<title>Fine</title>");
    let other = Server::html("<title>Other</title>");
    // The pack also grants an unscoped browser.control, which a second token takes.
    let (home, token) = browsing_home_with(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
        &["browser.control"],
    );
    for url in [
        "file:///etc/passwd".to_string(),
        "chrome://settings".into(),
        "view-source:http://127.0.0.1/".into(),
        "data:text/html,<b>x</b>".into(),
        "javascript:alert(1)".into(),
        other.url("/"),
        format!("http://localhost:{}/", site.port),
    ] {
        let got = call(
            &home,
            &token,
            "browser.open",
            serde_json::json!({"url": url}),
        );
        assert!(got.is_err(), "{url} was opened: {got:?}");
    }
    assert_eq!(browser_workers(&home), 0, "a refused URL started Chromium");
    assert!(other.requests().is_empty());
    // An unscoped browser.control does not reach a loopback address either: the scope must
    // name the IP literal.
    let wide = home.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "web",
        "--agent",
        "wide",
        "--cap",
        "browser.control",
        "--ttl",
        "1h",
    ]);
    assert!(wide.status.success(), "{}", text(&wide.stderr));
    let wide = text(&wide.stdout).trim().to_string();
    let got = call(
        &home,
        &wide,
        "browser.open",
        serde_json::json!({"url": site.url("/")}),
    );
    assert!(
        matches!(&got, Err((_, e)) if e.contains("loopback or private")),
        "{got:?}"
    );
    assert_eq!(browser_workers(&home), 0);
    // The positive control: the granted page opens.
    let ok = open(&home, &token, &site.url("/"));
    assert_eq!(ok["title"], "Fine", "{ok}");
    assert_eq!(browser_workers(&home), 1);
}

#[test]
fn a_page_that_never_yields_times_out_its_session_and_the_next_works() {
    let chromium =
        need_chromium!("a_page_that_never_yields_times_out_its_session_and_the_next_works");
    let site = Server::start(|path| match path {
        "/spin" => (
            "200 OK",
            Vec::new(),
            "text/html",
            "<title>Spin</title><script>while(true){}</script>".into(),
        ),
        _ => (
            "200 OK",
            Vec::new(),
            "text/html",
            "<title>Calm</title>calm".into(),
        ),
    });
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let spun = call(
        &home,
        &token,
        "browser.open",
        serde_json::json!({"url": site.url("/spin")}),
    );
    assert!(spun.is_err(), "{spun:?}");
    let ended = details(&home, "browser.navigated");
    assert!(
        ended.iter().any(|d| d["outcome"] == "session_ended"),
        "{ended:?}"
    );
    // Its worker (and Chromium with it) was killed on the command's deadline.
    let exited = details(&home, "worker.exited");
    assert!(
        exited.iter().any(|d| d["why"]
            .as_str()
            .is_some_and(|w| w.contains("did not answer"))),
        "{exited:?}"
    );
    // The next open starts a fresh session that works.
    let calm = open(&home, &token, &site.url("/calm"));
    assert_eq!(calm["title"], "Calm", "{calm}");
    assert_eq!(browser_workers(&home), 2);
}

#[test]
fn a_page_that_allocates_without_bound_is_stopped_by_the_cgroup() {
    let chromium = need_chromium!("a_page_that_allocates_without_bound_is_stopped_by_the_cgroup");
    let site = Server::start(|path| {
        match path {
        "/hog" => ("200 OK", Vec::new(), "text/html", "<title>Hog</title><script>const a=[];for(;;){const b=new Uint8Array(16*1024*1024);b.fill(1);a.push(b);}</script>".into()),
        _ => ("200 OK", Vec::new(), "text/html", "<title>Calm</title>calm".into()),
    }
    });
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let hog = call(
        &home,
        &token,
        "browser.open",
        serde_json::json!({"url": site.url("/hog")}),
    );
    assert!(hog.is_err(), "{hog:?}");
    // The session's cgroup hit its memory.max: the kernel's OOM killer acted there.
    let exited = details(&home, "worker.exited");
    assert!(exited.iter().any(|d| d["oom_killed"] == true), "{exited:?}");
    // loongd keeps serving, and the next session works.
    assert!(home.ctl(&["status"]).status.success());
    let calm = open(&home, &token, &site.url("/calm"));
    assert_eq!(calm["title"], "Calm", "{calm}");
}

#[test]
fn inside_the_browser_s_sandbox_there_is_no_home_of_loongd_and_no_host_network() {
    let chromium = need_chromium!(
        "inside_the_browser_s_sandbox_there_is_no_home_of_loongd_and_no_host_network"
    );
    let site = Server::html("<title>Probe</title>");
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    open(&home, &token, &site.url("/"));
    let pid = records(&home, "worker.spawned")
        .iter()
        .map(crate::workers::detail)
        .find(|d| d["kind"] == "browser")
        .and_then(|d| d["pid"].as_u64())
        .expect("the browser worker's pid");
    // What the worker (and Chromium, its child, in the same namespaces) sees as `/`.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(
        root.join("usr/lib/chromium").is_dir(),
        "the positive control: Chromium's files are seen"
    );
    let home_inside = root.join(home.path().strip_prefix("/").expect("absolute"));
    assert!(
        !home_inside.exists(),
        "loongd's home is seen inside: {}",
        home_inside.display()
    );
    assert!(!root
        .join(home.path().join("audit.db").strip_prefix("/").expect("abs"))
        .exists());
    // Its network namespace is not the host's.
    let ns = |p: &str| std::fs::read_link(p).expect("ns link");
    assert_ne!(ns(&format!("/proc/{pid}/ns/net")), ns("/proc/self/ns/net"));
}

#[test]
fn an_idle_session_is_closed_with_its_chromium_without_another_call() {
    let chromium =
        need_chromium!("an_idle_session_is_closed_with_its_chromium_without_another_call");
    let site = Server::html("<title>Idle</title>idle");
    let (home, token) = browsing_home_configured(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
        &[],
        "idle_timeout_ms = 1500\n",
    );
    let s = open(&home, &token, &site.url("/"))["session"]
        .as_str()
        .expect("session")
        .to_string();
    // The positive control: used at once, it answers.
    let got = call(
        &home,
        &token,
        "browser.extract",
        serde_json::json!({"session": s}),
    );
    assert!(got.is_ok(), "{got:?}");
    let pid = details(&home, "worker.spawned")
        .iter()
        .find(|d| d["kind"] == "browser")
        .and_then(|d| d["pid"].as_u64())
        .expect("the browser worker's pid") as u32;
    assert!(crate::support::process_alive(pid));
    // Left alone past its idle timeout, its worker (and Chromium) ends with no call made.
    assert!(
        crate::support::wait_until(Duration::from_secs(10), || !crate::support::process_alive(
            pid
        )),
        "the idle session's worker {pid} still runs"
    );
    let gone = call(
        &home,
        &token,
        "browser.extract",
        serde_json::json!({"session": s}),
    );
    assert!(
        matches!(&gone, Err((_, e)) if e.contains("no browser session")),
        "{gone:?}"
    );
}

#[test]
fn a_page_that_navigates_itself_to_a_local_file_is_not_read() {
    let chromium = need_chromium!("a_page_that_navigates_itself_to_a_local_file_is_not_read");
    let site = Server::start(|path| match path {
        "/jump" => (
            "200 OK",
            Vec::new(),
            "text/html",
            r#"<title>Jump</title><script>location.href = "file:///etc/passwd";</script>"#.into(),
        ),
        "/moved" => (
            "302 Found",
            vec![("Location".into(), "file:///etc/passwd".into())],
            "text/html",
            String::new(),
        ),
        _ => (
            "200 OK",
            Vec::new(),
            "text/html",
            "<title>Here</title>here".into(),
        ),
    });
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let s = open(&home, &token, &site.url("/here"))["session"]
        .as_str()
        .expect("session")
        .to_string();
    // The positive control: the page itself is read.
    let here = call(
        &home,
        &token,
        "browser.extract",
        serde_json::json!({"session": s}),
    )
    .expect("extract");
    assert_eq!(here["text"], "here", "{here}");
    for path in ["/jump", "/moved"] {
        let _ = call(
            &home,
            &token,
            "browser.open",
            serde_json::json!({"session": s, "url": site.url(path)}),
        );
        std::thread::sleep(Duration::from_millis(300));
        let got = call(
            &home,
            &token,
            "browser.extract",
            serde_json::json!({"session": s}),
        );
        if let Ok(v) = &got {
            assert!(
                !v["text"].as_str().unwrap_or_default().contains("root:"),
                "{path}: /etc/passwd was read: {v}"
            );
        }
    }
    // The page is now Chromium's error page for the refused redirect: even whether a selector
    // matches there is not told.
    let waited = call(
        &home,
        &token,
        "browser.wait",
        serde_json::json!({"session": s, "selector": "body", "timeout_ms": 1000}),
    );
    assert!(
        matches!(&waited, Err((_, e)) if e.contains("not an http(s) page")),
        "{waited:?}"
    );
    // Another host in the same session is refused before it is decided.
    let other = call(
        &home,
        &token,
        "browser.open",
        serde_json::json!({"session": s, "url": "http://127.0.0.2:1/"}),
    );
    assert!(
        matches!(&other, Err((_, e)) if e.contains("may reach")),
        "{other:?} {:?}",
        details(&home, "worker.exited")
    );
}

/// Issues a token of the pack `web` granting `cap` for `ttl`: its secret and public id.
fn issue_with_id(home: &Home, cap: &str, ttl: &str) -> (String, String) {
    let out = home.ctl(&[
        "tokens", "issue", "--pack", "web", "--agent", "bot", "--ttl", ttl, "--json", "--cap", cap,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (
        v["secret"].as_str().expect("secret").to_string(),
        v["id"].as_str().expect("id").to_string(),
    )
}

/// The pid of the browser worker spawned last.
fn last_browser_worker_pid(home: &Home) -> u32 {
    details(home, "worker.spawned")
        .iter()
        .find(|d| d["kind"] == "browser")
        .and_then(|d| d["pid"].as_u64())
        .expect("a browser worker's pid") as u32
}

/// A page keeps running between calls (and reaching its host on its own): revoking the token
/// that opened it, or the token expiring, ends the session and its Chromium at once, not
/// when it has been idle long enough.
#[test]
fn a_revoked_or_expired_token_s_session_ends_with_its_page() {
    let chromium = need_chromium!("a_revoked_or_expired_token_s_session_ends_with_its_page");
    let site = Server::start(|path| match path {
        "/beat" => ("200 OK", Vec::new(), "text/plain", "ok".into()),
        _ => (
            "200 OK",
            Vec::new(),
            "text/html",
            "<title>Beat</title><script>setInterval(() => fetch('/beat'), 100);</script>".into(),
        ),
    });
    let grant = format!("browser.control:127.0.0.1:{}", site.port);
    let (home, _) = browsing_home(&chromium, std::slice::from_ref(&grant));
    let beats = || site.requests().iter().filter(|(p, _)| p == "/beat").count();

    let (token, id) = issue_with_id(&home, &grant, "1h");
    open(&home, &token, &site.url("/"));
    let worker = last_browser_worker_pid(&home);
    // The positive control: the page reaches its host between calls.
    let before = beats();
    assert!(
        crate::support::wait_until(Duration::from_secs(5), || beats() > before + 3),
        "the page's own requests never arrived"
    );
    assert!(home.ctl(&["tokens", "revoke", &id]).status.success());
    assert!(
        crate::support::wait_until(Duration::from_secs(5), || !crate::support::process_alive(
            worker
        )),
        "the revoked token's browser worker {worker} still runs"
    );
    let after = beats();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        beats(),
        after,
        "the revoked token's page still reaches its host"
    );

    // A token that expires: its session ends within a sweep of the expiry.
    let (short, _) = issue_with_id(&home, &grant, "4s");
    open(&home, &short, &site.url("/"));
    let worker = last_browser_worker_pid(&home);
    assert!(
        crate::support::process_alive(worker),
        "{:?}",
        details(&home, "worker.spawned")
    );
    assert!(
        crate::support::wait_until(Duration::from_secs(15), || !crate::support::process_alive(
            worker
        )),
        "the expired token's browser worker {worker} still runs"
    );
}

/// A page's scripts cannot tell the caller, or the audit, that it is somewhere else: the URL
/// answered and recorded is the browser's record of the page, whatever the page redefined.
#[test]
fn a_page_cannot_lie_about_its_url() {
    let chromium = need_chromium!("a_page_cannot_lie_about_its_url");
    let site = Server::html(
        r#"<title>Liar</title>liar<script>
window.String = () => "https://innocent.example/";
</script>"#,
    );
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let real = site.url("/real");
    let got = open(&home, &token, &real);
    // The positive control: the page's own title is its to say.
    assert_eq!(got["title"], "Liar", "{got}");
    assert_eq!(got["url"], real.as_str(), "{got}");
    let recorded = details(&home, "browser.navigated");
    assert!(
        recorded.iter().all(|d| d["url"] == real.as_str()),
        "{recorded:?}"
    );
}

/// A page opens no window of its own (`window.open`, a `target=_blank` link clicked): such a
/// window would run on, unseen by the session's calls and unaudited, until the session ends.
#[test]
fn a_page_opens_no_other_window() {
    let chromium = need_chromium!("a_page_opens_no_other_window");
    let site = Server::start(|path| match path {
        "/pop" | "/blank" => (
            "200 OK",
            Vec::new(),
            "text/html",
            "<title>Pop</title>".into(),
        ),
        _ => (
            "200 OK",
            Vec::new(),
            "text/html",
            r#"<title>Opener</title><a id="a" target="_blank" href="/blank">new</a>
<button id="b" onclick="window.open('/pop')">pop</button>
<script>window.open("/pop");</script>"#
                .into(),
        ),
    });
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let s = open(&home, &token, &site.url("/"))["session"]
        .as_str()
        .expect("session")
        .to_string();
    for selector in ["#a", "#b"] {
        let clicked = call(
            &home,
            &token,
            "browser.click",
            serde_json::json!({"session": s, "selector": selector}),
        );
        assert!(clicked.is_ok(), "{clicked:?}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen: Vec<String> = site.requests().into_iter().map(|(p, _)| p).collect();
    // The positive control: the opener itself was loaded.
    assert!(seen.iter().any(|p| p == "/"), "{seen:?}");
    assert!(
        !seen.iter().any(|p| p == "/pop" || p == "/blank"),
        "a window the page opened loaded: {seen:?}"
    );
}

/// One caller cannot take every session: past `[browser] max_sessions_per_caller` its next
/// `browser.open` of a new host is refused (`Overloaded`, naming the key), while another
/// token still opens one within `max_sessions`; closing one of its own gives the first
/// caller room again.
#[test]
fn one_caller_cannot_take_every_browser_session() {
    let chromium = need_chromium!("one_caller_cannot_take_every_browser_session");
    let sites: Vec<Server> = (0..3)
        .map(|_| Server::html("<title>Site</title>site"))
        .collect();
    let grants: Vec<String> = sites
        .iter()
        .map(|s| format!("browser.control:127.0.0.1:{}", s.port))
        .collect();
    let (home, first) = browsing_home_configured(
        &chromium,
        &grants,
        &[],
        "max_sessions = 3\nmax_sessions_per_caller = 2\n",
    );
    let (second, _) = issue_with_id(&home, &grants[2], "1h");
    let a = open(&home, &first, &sites[0].url("/"))["session"]
        .as_str()
        .expect("session")
        .to_string();
    open(&home, &first, &sites[1].url("/"));
    let third = call(
        &home,
        &first,
        "browser.open",
        serde_json::json!({"url": sites[2].url("/")}),
    );
    assert!(
        matches!(&third, Err((_, e)) if e.contains("max_sessions_per_caller")),
        "{third:?}"
    );
    assert!(sites[2].requests().is_empty(), "{:?}", sites[2].requests());
    // The positive control: another caller opens the host the first could not, within the
    // total.
    let other = open(&home, &second, &sites[2].url("/"));
    assert_eq!(other["title"], "Site", "{other}");
    // Closing one of its own gives the first caller room again (the total is full now, so a
    // fourth session waits for any close).
    call(
        &home,
        &first,
        "browser.close",
        serde_json::json!({"session": a}),
    )
    .expect("close");
    let again = call(
        &home,
        &first,
        "browser.open",
        serde_json::json!({"url": sites[0].url("/")}),
    )
    .expect("an open after a close");
    assert_eq!(again["title"], "Site", "{again}");
}

const FLOOD_PAGE: &str = r#"<html><head><title>Flood</title></head><body>flood
<script>
const big = "x".repeat(64 * 1024);
let n = 0;
const t0 = Date.now();
const flood = setInterval(() => {
  for (let i = 0; i < 5; i++) { console.log(big); fetch("/f?" + (n++)).catch(() => {}); }
  if (Date.now() - t0 > 2500) clearInterval(flood);
}, 20);
</script></body></html>"#;

/// A page that floods DevTools between two calls (console messages of 64 KiB, a stream of
/// requests, for 2.5 s after its load) is drained as it goes (the unit test `the_pipe_is_drained_between_calls_...`
/// shows the bound): the next calls are answered, and what the next open reports of the
/// requests made meanwhile is bounded.
#[test]
fn a_page_flooding_devtools_between_calls_leaves_the_next_call_working() {
    let chromium =
        need_chromium!("a_page_flooding_devtools_between_calls_leaves_the_next_call_working");
    let site = Server::start(|path| match path {
        "/flood" => ("200 OK", Vec::new(), "text/html", FLOOD_PAGE.to_string()),
        _ => ("200 OK", Vec::new(), "text/plain", "f".to_string()),
    });
    let (home, token) = browsing_home(
        &chromium,
        &[format!("browser.control:127.0.0.1:{}", site.port)],
    );
    let s = open(&home, &token, &site.url("/flood"))["session"]
        .as_str()
        .expect("session")
        .to_string();
    std::thread::sleep(Duration::from_secs(3));
    let during = site.requests().len();
    assert!(during > 100, "the page made {during} requests");
    let got = call(
        &home,
        &token,
        "browser.extract",
        serde_json::json!({"session": s}),
    )
    .expect("extract after the flood");
    assert_eq!(got["title"], "Flood", "{got}");
    let again = call(
        &home,
        &token,
        "browser.open",
        serde_json::json!({"session": s, "url": site.url("/flood")}),
    )
    .expect("open after the flood");
    let reported: u64 = again["subresource_hosts"]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    assert!(reported <= 4096, "{reported} requests reported: {again}");
}
