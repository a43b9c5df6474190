//! `loongctl onboard`: writes a `[providers.NAME]` and `[agent]` into the home's
//! `loongd.toml` (keeping the rest of the file and its comments), stores the API key as a
//! secret bound to the provider's host, restarts loongd so it reads the new configuration,
//! and probes the provider once with a one-turn `ask`. A failed probe never fails onboard:
//! it says what failed and the command to run next.

use std::{
    fs,
    io::{BufRead, IsTerminal, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use loong_ipc::{
    client::{ClientError, Event},
    paths::Layout,
    AskRequest, ControlRequest, ControlResponse, SecretValue,
};

use crate::{exit, text::Esc, Failure};

/// How long the probe waits for the provider's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest line read for one interactive answer (kind, URL, model).
pub const MAX_ANSWER_BYTES: u64 = 4096;
/// What the probe asks: one short turn that needs no tool.
pub const PROBE_PROMPT: &str =
    "This is a connection check from `loongctl onboard`. Answer with the single word: ok. Call no tool.";

/// The wire family of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// OpenAI chat completions, or any compatible endpoint.
    Openai,
    /// Anthropic messages.
    Anthropic,
}

impl ProviderKind {
    fn word(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }

    fn default_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
        }
    }
}

/// `loongctl onboard`.
#[derive(Debug, Args)]
pub struct OnboardArgs {
    /// Take every answer from flags; the API key (if any) from stdin with --api-key-stdin.
    #[arg(long)]
    pub non_interactive: bool,
    /// The provider's wire family.
    #[arg(long, value_enum)]
    pub kind: Option<ProviderKind>,
    /// The endpoint, e.g. https://api.openai.com/v1, https://api.anthropic.com or
    /// http://127.0.0.1:8080/v1.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// The model asked.
    #[arg(long)]
    pub model: Option<String>,
    /// Read the API key from stdin (one trailing newline is dropped); without it, no key
    /// is configured (a local server without auth).
    #[arg(long)]
    pub api_key_stdin: bool,
    /// The provider's name in loongd.toml ([providers.NAME]).
    #[arg(long, default_value = "main", value_name = "NAME")]
    pub name: String,
    /// Replace a provider of that name that is already configured.
    #[arg(long)]
    pub force: bool,
    /// Write the configuration and store the key, but neither restart loongd nor probe.
    #[arg(long)]
    pub no_restart: bool,
}

fn usage(m: String) -> Failure {
    Failure {
        code: exit::USAGE,
        error: anyhow!(m),
    }
}

/// The endpoint a base URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub https: bool,
    /// The host as written (an IPv6 literal keeps its brackets).
    pub host: String,
    pub port: u16,
    pub ip_literal: bool,
}

impl Endpoint {
    /// The binding `secrets set --host` takes for it: over https the host (any port),
    /// over http only `http://HOST:PORT`.
    pub fn secret_binding(&self) -> String {
        if self.https {
            self.host.clone()
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// Parses `http(s)://HOST[:PORT][/PATH]`; no user information, query or fragment.
fn endpoint(url: &str) -> Result<Endpoint, String> {
    let bad = |why: &str| format!("--base-url {url:?}: {why}");
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("give an http:// or https:// URL"));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.contains(['?', '#']) {
        return Err(bad("give a URL without spaces, a query or a fragment"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad(
            "user information is not allowed: the key goes in --api-key-stdin",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("the bracketed host is not an IPv6 address"));
        }
        (format!("[{inside}]"), after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty()
        || !host.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(bad("the host is empty or not a DNS name or IP address"));
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
    };
    let ip_literal = host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok();
    Ok(Endpoint {
        https,
        host,
        port,
        ip_literal,
    })
}

/// The secret a provider's key is stored under.
pub(crate) fn secret_name(provider: &str) -> String {
    format!("{provider}_api_key")
}

/// Sets `[providers.NAME]` and points `[agent] provider` at it in `text` (a TOML document,
/// comments and other tables kept). Refuses an existing provider of that name unless
/// `force`.
pub(crate) fn edit_config(
    text: &str,
    name: &str,
    kind: ProviderKind,
    base_url: &str,
    model: &str,
    secret: Option<&str>,
    force: bool,
) -> Result<String, Failure> {
    use toml_edit::{value, DocumentMut, Item, Table};
    let mut doc: DocumentMut = text.parse().map_err(|e| {
        usage(format!(
            "loongd.toml is not valid TOML ({e}); fix it first (`loongctl doctor --fix` names the file)"
        ))
    })?;
    let providers = doc
        .entry("providers")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| usage("loongd.toml: `providers` is not a table; fix it first".into()))?;
    if providers.contains_key(name) && !force {
        return Err(usage(format!(
            "provider {name:?} is already configured in loongd.toml; give --force to replace it, or --name to add another"
        )));
    }
    let mut p = Table::new();
    p["kind"] = value(kind.word());
    p["base_url"] = value(base_url);
    p["model"] = value(model);
    if let Some(s) = secret {
        p["api_key"] = value(format!("${{secret:{s}}}"));
    }
    providers.insert(name, Item::Table(p));
    let agent = doc
        .entry("agent")
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| usage("loongd.toml: `agent` is not a table; fix it first".into()))?;
    agent["provider"] = value(name);
    if agent
        .get("fallback")
        .and_then(|f| f.as_str())
        .is_some_and(|f| f == name)
    {
        agent.remove("fallback");
    }
    let out = doc.to_string();
    loong_agent_wire::config::parse(&out).map_err(|e| {
        usage(format!(
            "loongd.toml would not be accepted by loongd after onboarding ({e}); fix that key and run onboard again"
        ))
    })?;
    Ok(out)
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename,
/// with the old file's mode (a new file: 0600).
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    let mode = match fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0o600,
        Err(e) => return Err(anyhow!("inspecting {}: {e}", path.display()).into()),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".loongd.toml.onboard.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow!("writing {}: {e}", path.display()).into());
    }
    Ok(())
}

fn prompt_line(question: &str, default: Option<&str>) -> Result<String, Failure> {
    match default {
        Some(d) => eprint!("{question} [{d}]: "),
        None => eprint!("{question}: "),
    }
    let _ = std::io::stderr().flush();
    let mut line = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_ANSWER_BYTES)
        .read_until(b'\n', &mut line)
        .context("reading the answer from the terminal")?;
    let line = String::from_utf8(line).map_err(|_| usage("the answer is not UTF-8".into()))?;
    let line = line.trim();
    Ok(if line.is_empty() {
        default.unwrap_or("").to_string()
    } else {
        line.to_string()
    })
}

/// What onboard will write.
struct Answers {
    kind: ProviderKind,
    base_url: String,
    model: String,
    key: Option<String>,
}

fn answers(args: &OnboardArgs) -> Result<Answers, Failure> {
    if args.non_interactive || !std::io::stdin().is_terminal() {
        let missing = |flag: &str| {
            usage(format!(
                "onboard without a terminal needs {flag} (and --non-interactive --kind --base-url --model [--api-key-stdin])"
            ))
        };
        let kind = args.kind.ok_or_else(|| missing("--kind"))?;
        let base_url = args.base_url.clone().ok_or_else(|| missing("--base-url"))?;
        let model = args.model.clone().ok_or_else(|| missing("--model"))?;
        let key = if args.api_key_stdin {
            Some(super::secrets::read_value(None)?)
        } else {
            None
        };
        return Ok(Answers {
            kind,
            base_url,
            model,
            key,
        });
    }
    let kind = match args.kind {
        Some(k) => k,
        None => {
            match prompt_line("provider kind (openai or anthropic)", Some("openai"))?.as_str() {
                "openai" => ProviderKind::Openai,
                "anthropic" => ProviderKind::Anthropic,
                other => {
                    return Err(usage(format!(
                        "provider kind {other:?}: answer openai or anthropic"
                    )))
                }
            }
        }
    };
    let base_url = match &args.base_url {
        Some(u) => u.clone(),
        None => prompt_line("base URL", Some(kind.default_url()))?,
    };
    let model = match &args.model {
        Some(m) => m.clone(),
        None => prompt_line("model", None)?,
    };
    eprintln!("API key (leave empty for a local server without auth)");
    let key = super::secrets::read_value(None)?;
    Ok(Answers {
        kind,
        base_url,
        model,
        key: Some(key).filter(|k| !k.is_empty()),
    })
}

/// `loongctl onboard`.
pub(crate) fn run(layout: &Layout, args: OnboardArgs) -> Result<u8, Failure> {
    if args.name.is_empty()
        || !args
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        || secret_name(&args.name).len() > loong_agent_wire::config::MAX_NAME_BYTES
    {
        return Err(usage(format!(
            "--name {:?}: give 1 to {} letters, digits, _ or -",
            args.name,
            loong_agent_wire::config::MAX_NAME_BYTES - "_api_key".len()
        )));
    }
    let existing = match fs::read_to_string(&layout.config_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(anyhow!("reading {}: {e}", layout.config_file.display()).into());
        }
    };
    // Refuse before asking anything, so no key is read for nothing.
    if !args.force {
        edit_config(
            &existing,
            &args.name,
            ProviderKind::Openai,
            "http://127.0.0.1",
            "m",
            None,
            false,
        )?;
    }
    let a = answers(&args)?;
    let base_url = a.base_url.trim_end_matches('/').to_string();
    let ep = endpoint(&base_url).map_err(usage)?;
    if a.model.is_empty() || a.model.chars().any(char::is_control) {
        return Err(usage("--model: give the model's name".into()));
    }
    let secret = a.key.as_ref().map(|_| secret_name(&args.name));
    let text = edit_config(
        &existing,
        &args.name,
        a.kind,
        &base_url,
        &a.model,
        secret.as_deref(),
        args.force,
    )?;
    write_atomically(&layout.config_file, &text)?;
    println!(
        "wrote [providers.{}] ({}, {}, model {}) and [agent] provider = {:?} to {}",
        args.name,
        a.kind.word(),
        Esc(&base_url),
        Esc(&a.model),
        args.name,
        layout.config_file.display()
    );
    if ep.ip_literal {
        println!(
            "{} is an IP literal: naming it in base_url is the explicit grant the egress broker needs to let the agent reach that address (a host name that resolves to a loopback or private address would be refused)",
            Esc(&ep.host)
        );
    }
    let home = home_flag(layout);
    let next_ask = format!("loongctl{home} ask \"hello\"");
    let restart = format!("loongctl{home} daemon stop && loongctl{home} daemon start");
    let system = layout == &Layout::system();

    // The key: stored through loongd's secrets API, so loongd must be up.
    let running = super::status::fetch(layout).is_ok();
    if !running && (args.no_restart || system) {
        if let Some(s) = &secret {
            println!(
                "loongd is not running, so the key was not stored: start loongd, then run `loongctl{home} secrets set {s} --host {}` and paste the key",
                ep.secret_binding()
            );
        }
        println!("next: start loongd, then `{next_ask}`");
        return Ok(exit::OK);
    }
    if !running {
        if let Err(f) = super::daemon::start(layout, false, false) {
            println!(
                "loongd did not start with the new configuration: {}",
                Esc(&format!("{:#}", f.error))
            );
            if let Some(s) = &secret {
                println!(
                    "the key was not stored; after fixing that, run `loongctl{home} secrets set {s} --host {}`",
                    ep.secret_binding()
                );
            }
            println!("next: `loongctl{home} daemon start`");
            return Ok(exit::OK);
        }
    }
    if let (Some(s), Some(key)) = (&secret, a.key) {
        let set = crate::request(
            layout,
            ControlRequest::SecretSet {
                name: s.clone(),
                value: SecretValue::new(key),
                hosts: vec![ep.secret_binding()],
            },
        );
        match set {
            Ok(ControlResponse::Secrets(_)) => println!(
                "stored the key as secret {s}, sent only to {}",
                Esc(&ep.secret_binding())
            ),
            Ok(other) => return Err(anyhow!("unexpected answer to secrets set: {other:?}").into()),
            Err(f) => {
                println!(
                    "the key was not stored: {}; run `loongctl{home} secrets set {s} --host {}`",
                    Esc(&format!("{:#}", f.error)),
                    ep.secret_binding()
                );
                return Ok(exit::OK);
            }
        }
    }
    // loongd reads loongd.toml only when it starts (SIGHUP is ignored), so a loongd that
    // was already running is restarted to take the new provider.
    if running {
        if args.no_restart || system {
            println!(
                "loongd reads loongd.toml only when it starts: restart it ({}) and then `{next_ask}`",
                if system {
                    "systemctl restart loongd".to_string()
                } else {
                    format!("`{restart}`")
                }
            );
            return Ok(exit::OK);
        }
        println!("restarting loongd: it reads loongd.toml only when it starts");
        let restarted =
            super::daemon::stop(layout).and_then(|_| super::daemon::start(layout, false, false));
        if let Err(f) = restarted {
            println!(
                "loongd did not restart: {}; next: `loongctl{home} daemon start`",
                Esc(&format!("{:#}", f.error))
            );
            return Ok(exit::OK);
        }
    }
    match probe(layout) {
        Ok(answer) => {
            println!(
                "probe: {} answered ({})",
                args.name,
                Esc(&answer.chars().take(80).collect::<String>())
            );
            println!("next: `{next_ask}`");
        }
        Err(why) => {
            println!("probe failed: {}", Esc(&why));
            let fix = match &secret {
                Some(s) => format!(
                    "check the key and base_url, then store the key again with `loongctl{home} secrets set {s} --host {}` or change the provider with `loongctl{home} onboard --force`; then `{next_ask}`",
                    ep.secret_binding()
                ),
                None => format!(
                    "check that the provider at {} is up and the model exists (or `loongctl{home} onboard --force` to change it); then `{next_ask}`",
                    Esc(&base_url)
                ),
            };
            println!("next: {fix}");
        }
    }
    Ok(exit::OK)
}

fn home_flag(layout: &Layout) -> String {
    if layout == &Layout::system() {
        " --system".into()
    } else {
        format!(" --home {}", layout.home.display())
    }
}

/// One turn without memory, as the operator; the answer, or why it failed.
fn probe(layout: &Layout) -> Result<String, String> {
    let mut client = crate::connect(layout).map_err(|f| format!("{:#}", f.error))?;
    let id = client
        .start(
            ControlRequest::Ask(AskRequest {
                prompt: PROBE_PROMPT.into(),
                session: None,
                token: None,
            }),
            PROBE_TIMEOUT,
        )
        .map_err(|e| format!("{e:#}"))?;
    let until = Instant::now() + PROBE_TIMEOUT + loong_ipc::client::DEADLINE_GRACE;
    loop {
        match client.next_event::<ControlResponse>(id, until) {
            Ok(Event::Chunk(_)) => {}
            Ok(Event::Done(ControlResponse::Asked(r))) => return Ok(r.answer),
            Ok(Event::Done(other)) => return Err(format!("unexpected answer: {other:?}")),
            Err(ClientError::Remote(r)) => return Err(r.to_string()),
            Err(e) => return Err(format!("{e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_gives_the_binding_its_scheme_needs() {
        let e = endpoint("https://api.openai.com/v1").expect("ok");
        assert_eq!(e.secret_binding(), "api.openai.com");
        assert!(!e.ip_literal);
        let e = endpoint("http://127.0.0.1:8080/v1").expect("ok");
        assert_eq!(e.secret_binding(), "http://127.0.0.1:8080");
        assert!(e.ip_literal);
        let e = endpoint("http://[::1]/v1").expect("ok");
        assert_eq!(e.secret_binding(), "http://[::1]:80");
        assert!(e.ip_literal);
        for bad in [
            "ftp://x",
            "https://user:pw@host/",
            "https://host:0/",
            "https://host:99999/",
            "https:///v1",
            "https://ho st/",
            "https://host/?q",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_keeps_comments_and_refuses_an_existing_provider_without_force() {
        let old = "# my settings\n[metrics]\n# keep me\n\n[agent]\nsystem_prompt = \"be brief\"\n";
        let new = edit_config(
            old,
            "main",
            ProviderKind::Openai,
            "http://127.0.0.1:9/v1",
            "m",
            Some("main_api_key"),
            false,
        )
        .expect("written");
        assert!(
            new.contains("# my settings") && new.contains("# keep me"),
            "{new}"
        );
        assert!(new.contains("system_prompt = \"be brief\""), "{new}");
        assert!(
            new.contains("api_key = \"${secret:main_api_key}\""),
            "{new}"
        );
        let s = loong_agent_wire::config::parse(&new).expect("loongd accepts it");
        assert_eq!(s.agent.expect("agent").provider, "main");
        let again = edit_config(
            &new,
            "main",
            ProviderKind::Openai,
            "http://x",
            "m",
            None,
            false,
        );
        assert!(again.is_err());
        // The control: with --force the provider is replaced.
        let forced = edit_config(
            &new,
            "main",
            ProviderKind::Anthropic,
            "https://a",
            "m",
            None,
            true,
        )
        .expect("forced");
        assert!(forced.contains("kind = \"anthropic\"") && !forced.contains("api_key"));
    }
}
