//! The browser worker's parts: which URLs a caller may navigate to ([`check_url`]), how
//! Chromium is started ([`chromium_args`], [`launch`]), the DevTools client ([`cdp`]) and one
//! browsing session over it ([`Session`]): open, extract, click, type, wait, screenshot.
//!
//! A session is one Chromium with one page. Every limit is a named constant here.

pub mod cdp;

use std::{
    collections::BTreeMap,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::{
    io::BufReader,
    process::{Child, ChildStdin, ChildStdout, Command},
};

use cdp::{Cdp, CdpError};

/// How long one DevTools command may take (a page script that never returns ends here).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a navigation may take to reach its load event.
pub const NAVIGATION_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Chromium may take to start and answer its first command.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest `browser.wait` a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long a click is watched for the navigation it may start.
pub const CLICK_SETTLE: Duration = Duration::from_millis(300);
/// How often `browser.wait` looks for its selector.
pub const WAIT_POLL: Duration = Duration::from_millis(50);
/// The most text `browser.extract` answers, in characters.
pub const MAX_TEXT_CHARS: usize = 64 * 1024;
/// The most links `browser.extract` answers.
pub const MAX_LINKS: usize = 200;
/// The longest link text and `href` kept, in characters.
pub const MAX_LINK_CHARS: usize = 2048;
/// The longest screenshot answered (its base64 text): within what one worker call may answer
/// (1 MiB, `loong_ipc::message::worker::MAX_CALL_BYTES`) with room for the rest.
pub const MAX_SCREENSHOT_BYTES: usize = 768 * 1024;
/// The longest URL, selector or typed text a caller may give.
pub const MAX_INPUT_CHARS: usize = 8 * 1024;
/// Subresource hosts named in one page's summary (the rest are counted).
pub const MAX_SUMMARY_HOSTS: usize = 64;
/// Navigations (the first and each redirect) recorded for one `open`.
pub const MAX_NAVIGATIONS: usize = 32;
/// The viewport: what a screenshot's size is without `full_page`.
pub const VIEWPORT: (u32, u32) = (1280, 800);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Cdp(#[from] CdpError),
    #[error("starting Chromium ({program}): {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("the page: {0}")]
    Page(String),
}

impl BrowserError {
    /// Whether the session cannot go on (Chromium hung, ended or broke its pipe): the worker
    /// is replaced and the session with it.
    pub fn is_fatal(&self) -> bool {
        matches!(self, BrowserError::Cdp(_) | BrowserError::Start { .. })
    }
}

/// The schemes a caller may navigate to.
pub const SCHEMES: [&str; 2] = ["http", "https"];

/// A URL a caller asked to open, checked before Chromium sees it: `http` or `https` only
/// (`file:`, `chrome:`, `view-source:`, `data:`, `javascript:` and every other scheme are
/// refused), with a host, no credentials, no control characters or spaces, and bounded.
/// Returns the scheme, the host (IPv6 bracketed) and the port.
pub fn check_url(url: &str) -> Result<(String, String, u16), BrowserError> {
    let refuse = |why: &str| BrowserError::Refused(format!("browser.open {url:?}: {why}"));
    if url.len() > MAX_INPUT_CHARS {
        return Err(refuse(&format!("longer than {MAX_INPUT_CHARS} characters")));
    }
    if url
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(refuse(
            "control characters, spaces or backslashes; give a plain http:// or https:// URL",
        ));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| refuse("not an http:// or https:// URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    if !SCHEMES.contains(&scheme.as_str()) {
        return Err(refuse(&format!(
            "the scheme {scheme:?} is refused; only http:// and https:// pages may be opened"
        )));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(refuse("credentials in a URL are refused"));
    }
    let default = if scheme == "https" { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| refuse("an unclosed [ in the host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| refuse("a bad port"))?,
            None if after.is_empty() => default,
            None => return Err(refuse("a bad host")),
        };
        (format!("[{}]", h.to_ascii_lowercase()), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_ascii_lowercase(),
                p.parse().map_err(|_| refuse("a bad port"))?,
            ),
            None => (authority.to_ascii_lowercase(), default),
        }
    };
    if host.is_empty() || host == "[]" || port == 0 {
        return Err(refuse("no host (or port 0)"));
    }
    Ok((scheme, host, port))
}

/// The host (IPv6 bracketed) and port of a URL Chromium reports, if it is http(s).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    check_url(url).ok().map(|(_, h, p)| (h, p))
}

/// Chromium's command line: headless, the profile in `profile`, every request through
/// `proxy` (loopback too), DevTools on the pipe only, and nothing that reaches out on its own
/// (no extensions, sync, updates, crash reports, metrics, prefetch).
///
/// Chromium's own sandbox is off (`--no-sandbox`): it needs user namespaces or a setuid
/// helper, which the balanced tier's seccomp filter and `no_new_privs` refuse; the worker's
/// sandbox (namespaces, landlock, seccomp, cgroup) holds every Chromium process instead
/// (docs/SECURITY.md, "The browser worker").
///
/// `proxy: None` is for measuring Chromium alone on the host (the benchmark's baseline):
/// no proxy at all.
pub fn chromium_args(profile: &Path, proxy: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--no-zygote",
        "--remote-debugging-pipe",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-component-extensions-with-background-pages",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--disable-breakpad",
        "--disable-crash-reporter",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
        "--dns-prefetch-disable",
        "--metrics-recording-only",
        "--no-pings",
        "--password-store=basic",
        "--use-mock-keychain",
        "--deny-permission-prompts",
        "--mute-audio",
        "--hide-scrollbars",
        // No window but the session's page: a page's `window.open` and `target=_blank` links
        // fail, so nothing runs on unseen by the calls and unaudited.
        "--block-new-web-contents",
        // Only fatal messages (not every missing D-Bus or udev service of a sandbox).
        "--log-level=3",
        // Even loopback goes to the proxy: the broker decides every connection.
        "--proxy-bypass-list=<-loopback>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match proxy {
        Some(p) => args.push(format!("--proxy-server={p}")),
        None => args.push("--no-proxy-server".into()),
    }
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1));
    args.push("about:blank".into());
    args
}

/// Starts `chromium` with `args`, its DevTools pipe on its fds 3 (commands in) and 4
/// (answers out). The worker's own fds 3 and 4 (its loongd sockets) are never passed: a
/// `/bin/sh` between the two puts the pipe's ends there (`3<&0 4>&1`) and Chromium gets
/// `/dev/null` for stdin and stdout, so no descriptor of the worker reaches it.
pub fn launch(
    chromium: &Path,
    args: &[String],
) -> Result<(Child, ChildStdin, ChildStdout), BrowserError> {
    // Chromium's caches and configuration (fontconfig's too) go to the profile, inside the
    // sandbox's private /tmp, never to a home directory.
    let profile = args
        .iter()
        .find_map(|a| a.strip_prefix("--user-data-dir="))
        .unwrap_or("/tmp");
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>/dev/null")
        .arg(chromium)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", profile)
        .env("XDG_CONFIG_HOME", profile)
        .env("XDG_CACHE_HOME", profile)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Chromium's fatal messages reach loongd's log with the worker's.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| BrowserError::Start {
            program: chromium.display().to_string(),
            source,
        })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(BrowserError::Start {
            program: chromium.display().to_string(),
            source: std::io::Error::other("no pipe to Chromium"),
        });
    };
    Ok((child, stdin, stdout))
}

/// One navigation of an `open`: the first request and each redirect.
fn navigation(url: &str, outcome: &str, status: Option<i64>) -> Value {
    let host = host_port(url).map(|(h, p)| format!("{h}:{p}"));
    json!({"url": url, "host": host, "outcome": outcome, "status": status})
}

/// What the events of one call tell: the main frame's navigations (the first request and each
/// redirect, with host and outcome), the document's status (of `loader`'s response), the
/// subresource hosts asked for and the subresources that failed, by error.
#[derive(Debug, Default)]
struct Seen {
    navigations: Vec<Value>,
    status: Option<i64>,
    subresources: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
}

fn summarize(events: &[Value], frame: Option<&str>, loader: Option<&str>) -> Seen {
    let mut seen = Seen::default();
    let mut document_requests: BTreeMap<String, String> = BTreeMap::new();
    let push = |seen: &mut Seen, n: Value| {
        if seen.navigations.len() < MAX_NAVIGATIONS {
            seen.navigations.push(n);
        }
    };
    for e in events {
        let p = &e["params"];
        let is_main = |p: &Value| {
            p.get("type").and_then(Value::as_str) == Some("Document")
                && frame.is_some()
                && p.get("frameId").and_then(Value::as_str) == frame
        };
        match e["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                let u = p
                    .pointer("/request/url")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if is_main(p) {
                    if let Some(r) = p.get("redirectResponse") {
                        let from = r.get("url").and_then(Value::as_str).unwrap_or("");
                        let code = r.get("status").and_then(Value::as_i64);
                        push(&mut seen, navigation(from, "redirected", code));
                    }
                    if let Some(id) = p.get("requestId").and_then(Value::as_str) {
                        if document_requests.len() < MAX_NAVIGATIONS {
                            document_requests.insert(id.to_string(), u.to_string());
                        }
                    }
                } else if let Some((h, port)) = host_port(u) {
                    let key = format!("{h}:{port}");
                    let subs = &mut seen.subresources;
                    if subs.len() < MAX_SUMMARY_HOSTS || subs.contains_key(&key) {
                        *subs.entry(key).or_default() += 1;
                    } else {
                        *subs.entry("(other hosts)".into()).or_default() += 1;
                    }
                }
            }
            Some("Network.responseReceived") if is_main(p) => {
                let code = p.pointer("/response/status").and_then(Value::as_i64);
                let u = p
                    .pointer("/response/url")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if loader.is_some() && p.get("loaderId").and_then(Value::as_str) == loader {
                    seen.status = code;
                }
                if let Some(id) = p.get("requestId").and_then(Value::as_str) {
                    document_requests.remove(id);
                }
                let outcome = if code.is_some_and(|c| c == 403 || c >= 500) {
                    "refused_or_failed"
                } else {
                    "loaded"
                };
                push(&mut seen, navigation(u, outcome, code));
            }
            Some("Network.loadingFailed") => {
                let id = p.get("requestId").and_then(Value::as_str).unwrap_or("");
                let why = p
                    .get("errorText")
                    .and_then(Value::as_str)
                    .unwrap_or("failed");
                if let Some(u) = document_requests.remove(id) {
                    let mut n = navigation(&u, "failed", None);
                    n["error"] = why.into();
                    push(&mut seen, n);
                } else if p.get("type").and_then(Value::as_str) != Some("Document")
                    && seen.failed.len() < MAX_SUMMARY_HOSTS
                {
                    *seen.failed.entry(why.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    for (_, u) in document_requests {
        push(&mut seen, navigation(&u, "unanswered", None));
    }
    seen
}

/// Where a page is: its URL as the browser recorded it, its title, and the URL its document
/// gives itself (`location.href`, the page's word).
#[derive(Debug)]
struct Location {
    url: String,
    title: String,
    document: String,
}

/// One Chromium with one page, over its DevTools pipe.
#[derive(Debug)]
pub struct Session {
    cdp: Cdp<ChildStdin>,
    child: Child,
    /// The page target's DevTools session.
    page: String,
    /// The page target.
    target: String,
    /// The page's main frame.
    frame: Option<String>,
    /// When Chromium was started and how long its parts took (µs): spawn, first answer,
    /// page ready.
    pub started: BTreeMap<&'static str, u64>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Session {
    /// Starts Chromium (`chromium`, profile under `profile`, requests through `proxy`) and
    /// opens one blank page with downloads denied.
    pub async fn start(
        chromium: &Path,
        profile: &Path,
        proxy: Option<&str>,
    ) -> Result<Session, BrowserError> {
        let t0 = Instant::now();
        let (child, stdin, stdout) = launch(chromium, &chromium_args(profile, proxy))?;
        let spawned = t0.elapsed();
        let mut cdp = Cdp::new(BufReader::new(stdout), stdin);
        cdp.call(None, "Browser.getVersion", json!({}), START_TIMEOUT)
            .await?;
        let answered = t0.elapsed();
        cdp.call(
            None,
            "Browser.setDownloadBehavior",
            json!({"behavior": "deny"}),
            COMMAND_TIMEOUT,
        )
        .await?;
        let target = cdp
            .call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank"}),
                COMMAND_TIMEOUT,
            )
            .await?;
        let target_id = target
            .get("targetId")
            .and_then(Value::as_str)
            .ok_or_else(|| BrowserError::Page("Target.createTarget answered no targetId".into()))?
            .to_string();
        let attached = cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                COMMAND_TIMEOUT,
            )
            .await?;
        let page = attached
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                BrowserError::Page("Target.attachToTarget answered no sessionId".into())
            })?
            .to_string();
        // Not `Runtime.enable`: `Runtime.evaluate` needs none, and its events (every console
        // message of the page, megabytes each) would be read before each answer.
        for method in ["Page.enable", "Network.enable"] {
            cdp.call(Some(&page), method, json!({}), COMMAND_TIMEOUT)
                .await?;
        }
        cdp.call(
            Some(&page),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false}),
            COMMAND_TIMEOUT,
        )
        .await?;
        let tree = cdp
            .call(Some(&page), "Page.getFrameTree", json!({}), COMMAND_TIMEOUT)
            .await?;
        let frame = tree
            .pointer("/frameTree/frame/id")
            .and_then(Value::as_str)
            .map(String::from);
        cdp.take_events();
        let mut started = BTreeMap::new();
        started.insert("spawn_us", us(spawned));
        started.insert("first_answer_us", us(answered));
        started.insert("page_ready_us", us(t0.elapsed()));
        Ok(Session {
            cdp,
            child,
            page,
            target: target_id,
            frame,
            started,
        })
    }

    async fn page_call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        Ok(self
            .cdp
            .call(Some(&self.page.clone()), method, params, COMMAND_TIMEOUT)
            .await?)
    }

    /// Evaluates `expression` in the page and answers its value (by value, awaited).
    async fn evaluate(&mut self, expression: &str) -> Result<Value, BrowserError> {
        let r = self
            .page_call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            let text = e
                .pointer("/exception/description")
                .or_else(|| e.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("an exception");
            return Err(BrowserError::Page(truncate(text, 512)));
        }
        Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// Navigates to `url` (checked by [`check_url`]) and waits for its load event: the page's
    /// URL, title and the main document's HTTP status, every navigation (the first request
    /// and each redirect, with its host and outcome) and the subresource hosts it asked for.
    pub async fn open(&mut self, url: &str) -> Result<Value, BrowserError> {
        check_url(url)?;
        // Events read since the last call (a page that moved itself meanwhile) are reported
        // with this open's.
        let nav = self.page_call("Page.navigate", json!({"url": url})).await?;
        let frame = nav.get("frameId").and_then(Value::as_str).map(String::from);
        let loader = nav
            .get("loaderId")
            .and_then(Value::as_str)
            .map(String::from);
        let failed = nav
            .get("errorText")
            .and_then(Value::as_str)
            .map(String::from);
        let mut loaded = false;
        if failed.is_none() {
            let until = tokio::time::Instant::now() + NAVIGATION_TIMEOUT;
            loaded = self
                .cdp
                .wait_event(until, |e| e["method"] == "Page.loadEventFired")
                .await?;
        }
        let (events, dropped) = self.cdp.take_events();
        let seen = summarize(
            &events,
            frame.as_deref().or(self.frame.as_deref()),
            loader.as_deref(),
        );
        let Location {
            url: page_url,
            title,
            ..
        } = self.location().await?;
        Ok(json!({
            "url": page_url,
            "title": title,
            "status": seen.status,
            "loaded": loaded,
            "error": failed,
            "navigations": seen.navigations,
            "subresource_hosts": seen.subresources,
            "subresources_failed": seen.failed,
            "events_dropped": dropped,
        }))
    }

    /// The page's URL and title. The URL is the browser's own record of the committed entry
    /// (`Target.getTargetInfo`), never the page's word: a page's script can replace
    /// `String` or `location`'s accessors and would answer any URL it likes, to the caller, to
    /// the audit and to [`Session::guard_location`]. The title is the page's to say.
    async fn location(&mut self) -> Result<Location, BrowserError> {
        let info = self
            .cdp
            .call(
                None,
                "Target.getTargetInfo",
                json!({"targetId": self.target}),
                COMMAND_TIMEOUT,
            )
            .await?;
        let url = info
            .pointer("/targetInfo/url")
            .and_then(Value::as_str)
            .ok_or_else(|| BrowserError::Page("the browser answered no page URL".into()))?;
        let url = truncate(url, MAX_LINK_CHARS);
        // Asked of the page (a page that never yields ends here, on the command's deadline).
        let v = self
            .evaluate("({title: document.title, href: location.href})")
            .await?;
        let s = |k: &str| {
            truncate(
                v.get(k).and_then(Value::as_str).unwrap_or(""),
                MAX_LINK_CHARS,
            )
        };
        Ok(Location {
            url,
            title: s("title"),
            document: s("href"),
        })
    }

    /// Adds to `answer` what the events read since the last look tell (navigations,
    /// subresources), when they tell anything.
    fn report(&mut self, answer: &mut Value) {
        let (events, _) = self.cdp.take_events();
        let seen = summarize(&events, self.frame.as_deref(), None);
        if !seen.navigations.is_empty() {
            answer["navigations"] = json!(seen.navigations);
        }
        if !seen.subresources.is_empty() || !seen.failed.is_empty() {
            answer["subresource_hosts"] = json!(seen.subresources);
            answer["subresources_failed"] = json!(seen.failed);
        }
    }

    /// Refuses to look at a page whose URL is not one a caller could have opened: a page that
    /// navigated itself (or was redirected) to `file:`, `chrome:`, `data:` or an error page is
    /// not read, whatever Chromium's own policy let through.
    async fn guard_location(&mut self) -> Result<(), BrowserError> {
        // Both the browser's record and the document's own `location` (an error page keeps the
        // URL it failed on in the record, and says `chrome-error:` itself) must be readable.
        let here = self.location().await?;
        let readable = |u: &str| u == "about:blank" || check_url(u).is_ok();
        if readable(&here.url) && readable(&here.document) {
            return Ok(());
        }
        let url = if readable(&here.url) {
            here.document
        } else {
            here.url
        };
        Err(BrowserError::Refused(format!(
            "the page is at {:?}, which is not an http(s) page (it failed to load, or navigated where a caller may not); open another URL",
            truncate(&url, 200)
        )))
    }

    /// The rendered text and links of the page, or of the first element `selector` matches.
    pub async fn extract(&mut self, selector: Option<&str>) -> Result<Value, BrowserError> {
        self.guard_location().await?;
        let sel = match selector {
            Some(s) => checked(s, "selector")?,
            None => "html".to_string(),
        };
        let script = format!(
            r#"(() => {{
  const root = document.querySelector({sel});
  if (!root) return null;
  const cut = (s, n) => String(s || "").slice(0, n);
  const links = [];
  for (const a of root.querySelectorAll("a[href]")) {{
    if (links.length >= {links}) break;
    links.push({{text: cut(a.innerText, {chars}).trim(), href: cut(a.href, {chars})}});
  }}
  return {{text: cut(root.innerText, {text} + 1), links, title: cut(document.title, {chars})}};
}})()"#,
            sel = json!(sel),
            links = MAX_LINKS,
            chars = MAX_LINK_CHARS,
            text = MAX_TEXT_CHARS,
        );
        let v = self.evaluate(&script).await?;
        if v.is_null() {
            return Err(BrowserError::Page(format!(
                "no element matches the selector {sel:?}"
            )));
        }
        // The page answered; its answer is bounded here again, whatever the script did.
        let text = v.get("text").and_then(Value::as_str).unwrap_or("");
        let truncated = text.chars().count() > MAX_TEXT_CHARS;
        let links: Vec<Value> = v
            .get("links")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .take(MAX_LINKS)
                    .map(|l| {
                        let s = |k: &str| {
                            truncate(
                                l.get(k).and_then(Value::as_str).unwrap_or(""),
                                MAX_LINK_CHARS,
                            )
                        };
                        json!({"text": s("text"), "href": s("href")})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut answer = json!({
            "text": truncate(text, MAX_TEXT_CHARS),
            "truncated": truncated,
            "links": links,
            "title": truncate(v.get("title").and_then(Value::as_str).unwrap_or(""), MAX_LINK_CHARS),
        });
        self.report(&mut answer);
        Ok(answer)
    }

    /// Clicks the first element `selector` matches.
    pub async fn click(&mut self, selector: &str) -> Result<Value, BrowserError> {
        self.guard_location().await?;
        let sel = json!(checked(selector, "selector")?);
        let found = self
            .evaluate(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false; e.scrollIntoView(); e.click(); return true; }})()"
            ))
            .await?;
        if found != Value::Bool(true) {
            return Err(BrowserError::Page(format!(
                "no element matches the selector {sel}"
            )));
        }
        // A click may navigate (a link, a form's submit): it is waited for and reported.
        let until = tokio::time::Instant::now() + CLICK_SETTLE;
        let started = self
            .cdp
            .wait_event(until, |e| e["method"] == "Page.frameStartedLoading")
            .await?;
        if started {
            let until = tokio::time::Instant::now() + NAVIGATION_TIMEOUT;
            self.cdp
                .wait_event(until, |e| e["method"] == "Page.loadEventFired")
                .await?;
        }
        let mut answer = json!({"clicked": selector, "navigated": started});
        self.report(&mut answer);
        Ok(answer)
    }

    /// Focuses the first element `selector` matches and types `text` into it (as key input).
    pub async fn type_text(&mut self, selector: &str, text: &str) -> Result<Value, BrowserError> {
        self.guard_location().await?;
        let sel = json!(checked(selector, "selector")?);
        let text = checked(text, "text")?;
        let found = self
            .evaluate(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false; e.focus(); return document.activeElement === e; }})()"
            ))
            .await?;
        if found != Value::Bool(true) {
            return Err(BrowserError::Page(format!(
                "no focusable element matches the selector {sel}"
            )));
        }
        self.page_call("Input.insertText", json!({"text": text}))
            .await?;
        let mut answer = json!({"typed": text.chars().count()});
        self.report(&mut answer);
        Ok(answer)
    }

    /// Waits, at most `timeout` (bounded by [`MAX_WAIT`]), until `selector` matches an
    /// element, or, for `"load"`, until the document has loaded; on a page that is not http(s)
    /// (an error page, a local file) it is refused, as reading the page is.
    pub async fn wait(&mut self, selector: &str, timeout: Duration) -> Result<Value, BrowserError> {
        let timeout = timeout.min(MAX_WAIT);
        let probe = if selector == "load" {
            "document.readyState === \"complete\"".to_string()
        } else {
            format!(
                "document.querySelector({}) !== null",
                json!(checked(selector, "selector")?)
            )
        };
        let t0 = Instant::now();
        loop {
            if self.evaluate(&probe).await? == Value::Bool(true) {
                // What matched is told only of a page a caller could have opened.
                self.guard_location().await?;
                let mut answer =
                    json!({"found": true, "waited_ms": t0.elapsed().as_millis() as u64});
                self.report(&mut answer);
                return Ok(answer);
            }
            if t0.elapsed() >= timeout {
                return Err(BrowserError::Page(format!(
                    "{selector:?} did not appear within {} ms",
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// A PNG of the viewport (or of the whole page), base64, at most [`MAX_SCREENSHOT_BYTES`].
    pub async fn screenshot(&mut self, full_page: bool) -> Result<Value, BrowserError> {
        self.guard_location().await?;
        let r = self
            .page_call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": full_page}),
            )
            .await?;
        let data = r.get("data").and_then(Value::as_str).unwrap_or("");
        if data.len() > MAX_SCREENSHOT_BYTES {
            return Err(BrowserError::Page(format!(
                "the screenshot is {} bytes of base64, more than {MAX_SCREENSHOT_BYTES}; take the viewport only",
                data.len()
            )));
        }
        let mut answer = json!({"png_base64": data, "bytes": data.len()});
        self.report(&mut answer);
        Ok(answer)
    }

    /// Ends Chromium.
    pub async fn close(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A caller's string, bounded.
fn checked(s: &str, what: &str) -> Result<String, BrowserError> {
    if s.is_empty() || s.len() > MAX_INPUT_CHARS {
        return Err(BrowserError::Refused(format!(
            "the {what} must be 1 to {MAX_INPUT_CHARS} bytes long"
        )));
    }
    Ok(s.to_string())
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only http and https pages may be opened; the refused schemes are refused whatever
    /// their case or spelling, and so are credentials and control characters.
    #[test]
    fn only_http_and_https_urls_pass_the_check() {
        for bad in [
            "file:///etc/passwd",
            "FILE:///etc/passwd",
            "chrome://settings",
            "view-source:http://a.test/",
            "data:text/html,<p>x",
            "javascript:alert(1)",
            "JavaScript://%0aalert(1)",
            "about:blank",
            "blob:http://a.test/x",
            "ftp://a.test/",
            "http://user:pw@a.test/",
            "http:///path",
            "http://a.test:0/",
            "http://a.test/\n",
            "http://a.test\\@b.test/",
            " http://a.test/",
        ] {
            assert!(check_url(bad).is_err(), "{bad} passed");
        }
        // The positive controls.
        assert_eq!(
            check_url("http://127.0.0.1:8080/x?y").ok(),
            Some(("http".into(), "127.0.0.1".into(), 8080))
        );
        assert_eq!(
            check_url("HTTPS://Docs.Example.test/").ok(),
            Some(("https".into(), "docs.example.test".into(), 443))
        );
        assert_eq!(
            check_url("http://[::1]/").ok(),
            Some(("http".into(), "[::1]".into(), 80))
        );
    }

    /// Chromium's line sends every request to the proxy (loopback too), talks DevTools only
    /// on the pipe, and keeps its profile where it is told.
    #[test]
    fn chromium_is_told_to_use_the_proxy_and_the_pipe_only() {
        let args = chromium_args(Path::new("/tmp/p"), Some("http://127.0.0.1:3128"));
        for want in [
            "--proxy-server=http://127.0.0.1:3128",
            "--proxy-bypass-list=<-loopback>",
            "--remote-debugging-pipe",
            "--user-data-dir=/tmp/p",
            "--disable-extensions",
            "--disable-background-networking",
            "--block-new-web-contents",
            "--headless",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
        }
        assert!(!args
            .iter()
            .any(|a| a.starts_with("--remote-debugging-port")));
    }
}
