//! The `[providers.NAME]` and `[agent]` sections of `loongd.toml`.
//!
//! ```toml
//! [providers.main]
//! kind = "anthropic"                        # or "openai" (any compatible endpoint)
//! base_url = "https://api.anthropic.com"    # OpenAI: "https://api.openai.com/v1"
//! model = "claude-sonnet-4-5"
//! api_key = "${secret:anthropic_key}"       # a secret reference, never the key itself
//! connect_timeout_secs = 10
//! idle_timeout_secs = 60
//! answer_timeout_secs = 600
//! max_attempts = 4
//! max_tokens = 4096                        # optional; Anthropic gets 4096 without it
//!
//! [agent]
//! provider = "main"
//! fallback = "backup"                       # optional, another [providers.NAME]
//! system_prompt = "You are ..."             # or system_prompt_file = "/path"
//! max_steps = 16
//! turn_budget_secs = 300
//! max_offered_tools = 32                     # past it, the model gets tool_search instead
//! ```
//!
//! Unknown keys inside these sections are errors; other sections of the file are not read
//! here. A literal key in `api_key` is refused: keys live in the secret store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::limits::{
    DEFAULT_ANSWER_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_OFFERED_TOOLS, DEFAULT_MAX_STEPS, DEFAULT_MAX_TOKENS, DEFAULT_TURN_BUDGET,
    MAX_ATTEMPTS_LIMIT, MAX_OFFERED_TOOLS_LIMIT, MAX_STEPS_LIMIT, MAX_SYSTEM_PROMPT_BYTES,
    MAX_TIMEOUT, MAX_TOKENS_LIMIT, MIN_OFFERED_TOOLS,
};

/// The longest name of a provider or a secret.
pub const MAX_NAME_BYTES: usize = 64;

/// A wire family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// OpenAI chat completions (`{base_url}/chat/completions`).
    Openai,
    /// Anthropic messages (`{base_url}/v1/messages`).
    Anthropic,
}

/// A reference to a secret in loongd's store, written `${secret:NAME}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef(String);

impl SecretRef {
    /// Parses `${secret:NAME}`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let name = text.strip_prefix("${secret:")?.strip_suffix('}')?;
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        ok.then(|| Self(name.to_owned()))
    }

    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// One `[providers.NAME]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// The wire family.
    pub kind: Kind,
    /// The endpoint's base, without a trailing `/`.
    pub base_url: String,
    /// The model asked.
    pub model: String,
    /// The secret holding the API key (none for a local server without auth).
    pub api_key: Option<SecretRef>,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`DEFAULT_ANSWER_TIMEOUT`].
    pub answer_timeout: Duration,
    /// See [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// The answer's token limit, if configured. Anthropic requires one and gets
    /// [`DEFAULT_MAX_TOKENS`] when none is; an OpenAI request carries one only when it is
    /// configured (OpenAI's reasoning models refuse `max_tokens`).
    pub max_tokens: Option<u32>,
}

/// Where the system prompt comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemPrompt {
    /// None.
    None,
    /// Given inline.
    Text(String),
    /// Read from this file by the caller (loongd), bounded by [`MAX_SYSTEM_PROMPT_BYTES`].
    File(PathBuf),
}

/// `[agent]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The provider asked first.
    pub provider: String,
    /// The provider asked when the first fails before answering.
    pub fallback: Option<String>,
    /// The system prompt.
    pub system_prompt: SystemPrompt,
    /// Model round trips per turn.
    pub max_steps: u32,
    /// Wall-clock time of one turn.
    pub turn_budget: Duration,
    /// The most tools offered to the model at once; past it, the model is offered
    /// `tool_search` and the tools it finds.
    pub max_offered_tools: u32,
}

/// The providers and the agent, checked against each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Every `[providers.NAME]`.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[agent]`, if the file has one.
    pub agent: Option<AgentConfig>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or a key of the wrong type or unknown.
    #[error("loongd.toml: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value out of its range or shape.
    #[error("loongd.toml: {key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    agent: Option<RawAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Kind,
    base_url: String,
    model: String,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    connect_timeout_secs: Option<u64>,
    #[serde(default)]
    idle_timeout_secs: Option<u64>,
    #[serde(default)]
    answer_timeout_secs: Option<u64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    max_tokens: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    provider: String,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    system_prompt: Option<String>,
    #[serde(default)]
    system_prompt_file: Option<PathBuf>,
    #[serde(default)]
    max_steps: Option<u32>,
    #[serde(default)]
    turn_budget_secs: Option<u64>,
    #[serde(default)]
    max_offered_tools: Option<u32>,
}

/// Parses the provider and agent sections of a `loongd.toml`.
pub fn parse(text: &str) -> Result<Settings, ConfigError> {
    let file: File = toml::from_str(text)?;
    let mut providers = BTreeMap::new();
    for (name, raw) in file.providers {
        let checked = check_provider(&name, raw)?;
        providers.insert(name, checked);
    }
    let agent = file
        .agent
        .map(|raw| check_agent(raw, &providers))
        .transpose()?;
    Ok(Settings { providers, agent })
}

fn secs(key: String, value: Option<u64>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(invalid(key, "must be at least 1")),
        Some(s) if Duration::from_secs(s) > MAX_TIMEOUT => Err(invalid(
            key,
            format!("must be at most {}", MAX_TIMEOUT.as_secs()),
        )),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

fn in_range(key: String, value: Option<u32>, default: u32, max: u32) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(_) => Err(invalid(key, format!("must be between 1 and {max}"))),
    }
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?} is not a name of 1 to {MAX_NAME_BYTES} letters, digits, _ or -"),
        ))
    }
}

fn check_provider(name: &str, raw: RawProvider) -> Result<ProviderConfig, ConfigError> {
    let key = |k: &str| format!("providers.{name}.{k}");
    check_name(&format!("providers.{name}"), name)?;
    let base_url = raw.base_url.trim_end_matches('/').to_owned();
    let scheme_ok = base_url.starts_with("https://") || base_url.starts_with("http://");
    if !scheme_ok || base_url.contains(char::is_whitespace) || base_url.len() <= "https://".len() {
        return Err(invalid(
            key("base_url"),
            format!("{:?} is not an http:// or https:// URL", raw.base_url),
        ));
    }
    if raw.model.trim().is_empty() {
        return Err(invalid(key("model"), "must name a model"));
    }
    let api_key = match raw.api_key {
        None => None,
        Some(text) => Some(SecretRef::parse(&text).ok_or_else(|| {
            invalid(
                key("api_key"),
                "must be a secret reference \"${secret:NAME}\"; store the key with \
                 `loongctl secrets set NAME`",
            )
        })?),
    };
    Ok(ProviderConfig {
        kind: raw.kind,
        base_url,
        model: raw.model,
        api_key,
        connect_timeout: secs(
            key("connect_timeout_secs"),
            raw.connect_timeout_secs,
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        idle_timeout: secs(
            key("idle_timeout_secs"),
            raw.idle_timeout_secs,
            DEFAULT_IDLE_TIMEOUT,
        )?,
        answer_timeout: secs(
            key("answer_timeout_secs"),
            raw.answer_timeout_secs,
            DEFAULT_ANSWER_TIMEOUT,
        )?,
        max_attempts: in_range(
            key("max_attempts"),
            raw.max_attempts,
            DEFAULT_MAX_ATTEMPTS,
            MAX_ATTEMPTS_LIMIT,
        )?,
        max_tokens: raw
            .max_tokens
            .map(|v| {
                in_range(
                    key("max_tokens"),
                    Some(v),
                    DEFAULT_MAX_TOKENS,
                    MAX_TOKENS_LIMIT,
                )
            })
            .transpose()?,
    })
}

fn check_agent(
    raw: RawAgent,
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<AgentConfig, ConfigError> {
    let known = |key: &str, name: &str| {
        if providers.contains_key(name) {
            Ok(())
        } else {
            Err(invalid(key, format!("names no [providers.{name}]")))
        }
    };
    known("agent.provider", &raw.provider)?;
    if let Some(fallback) = &raw.fallback {
        known("agent.fallback", fallback)?;
        if *fallback == raw.provider {
            return Err(invalid(
                "agent.fallback",
                "must name another provider than agent.provider",
            ));
        }
    }
    let system_prompt = match (raw.system_prompt, raw.system_prompt_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "agent.system_prompt",
                "give system_prompt or system_prompt_file, not both",
            ))
        }
        (Some(text), None) if text.len() > MAX_SYSTEM_PROMPT_BYTES => {
            return Err(invalid(
                "agent.system_prompt",
                format!("is longer than {MAX_SYSTEM_PROMPT_BYTES} bytes"),
            ))
        }
        (Some(text), None) => SystemPrompt::Text(text),
        (None, Some(path)) if path.is_absolute() => SystemPrompt::File(path),
        (None, Some(_)) => {
            return Err(invalid(
                "agent.system_prompt_file",
                "must be an absolute path",
            ))
        }
        (None, None) => SystemPrompt::None,
    };
    Ok(AgentConfig {
        provider: raw.provider,
        fallback: raw.fallback,
        system_prompt,
        max_steps: in_range(
            "agent.max_steps".into(),
            raw.max_steps,
            DEFAULT_MAX_STEPS,
            MAX_STEPS_LIMIT,
        )?,
        turn_budget: secs(
            "agent.turn_budget_secs".into(),
            raw.turn_budget_secs,
            DEFAULT_TURN_BUDGET,
        )?,
        max_offered_tools: match raw.max_offered_tools {
            None => DEFAULT_MAX_OFFERED_TOOLS,
            Some(v) if (MIN_OFFERED_TOOLS..=MAX_OFFERED_TOOLS_LIMIT).contains(&v) => v,
            Some(_) => {
                return Err(invalid(
                    "agent.max_offered_tools",
                    format!(
                        "must be between {MIN_OFFERED_TOOLS} and {MAX_OFFERED_TOOLS_LIMIT} (tool_search and at least one tool it found)"
                    ),
                ))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [daemon]
        anything = "not read here"

        [providers.main]
        kind = "anthropic"
        base_url = "https://api.anthropic.com/"
        model = "claude-sonnet-4-5"
        api_key = "${secret:anthropic_key}"
        idle_timeout_secs = 30

        [providers.local]
        kind = "openai"
        base_url = "http://127.0.0.1:8080/v1"
        model = "qwen"

        [agent]
        provider = "main"
        fallback = "local"
        system_prompt = "be brief"
        max_steps = 8
    "#;

    #[test]
    fn a_full_configuration_parses_with_defaults_filled_in() {
        let settings = parse(GOOD).expect("parses");
        let main = &settings.providers["main"];
        assert_eq!(main.kind, Kind::Anthropic);
        assert_eq!(main.base_url, "https://api.anthropic.com");
        assert_eq!(
            main.api_key.as_ref().map(SecretRef::name),
            Some("anthropic_key")
        );
        assert_eq!(main.idle_timeout, Duration::from_secs(30));
        assert_eq!(main.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(main.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(main.max_tokens, None);
        assert_eq!(settings.providers["local"].api_key, None);
        let agent = settings.agent.expect("an agent section");
        assert_eq!(agent.fallback.as_deref(), Some("local"));
        assert_eq!(agent.system_prompt, SystemPrompt::Text("be brief".into()));
        assert_eq!(agent.max_steps, 8);
        assert_eq!(agent.turn_budget, DEFAULT_TURN_BUDGET);
        assert_eq!(agent.max_offered_tools, DEFAULT_MAX_OFFERED_TOOLS);
    }

    fn refused(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "the fixture has {from:?}");
        match parse(&GOOD.replacen(from, to, 1)) {
            Ok(_) => panic!("{to:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_key() {
        let cases = [
            (
                r#"api_key = "${secret:anthropic_key}""#,
                r#"api_key = "sk-live-123""#,
                "providers.main.api_key",
            ),
            (
                r#"api_key = "${secret:anthropic_key}""#,
                r#"api_key = "${secret:a b}""#,
                "providers.main.api_key",
            ),
            (
                r#"kind = "anthropic""#,
                r#"kind = "gemini""#,
                "unknown variant",
            ),
            (
                "https://api.anthropic.com/",
                "ftp://x",
                "providers.main.base_url",
            ),
            (
                "idle_timeout_secs = 30",
                "idle_timeout_secs = 0",
                "providers.main.idle_timeout_secs",
            ),
            (
                "idle_timeout_secs = 30",
                "idle_timeout_secs = 99999",
                "providers.main.idle_timeout_secs",
            ),
            ("idle_timeout_secs = 30", "idle_secs = 30", "unknown field"),
            (
                r#"model = "qwen""#,
                r#"model = " ""#,
                "providers.local.model",
            ),
            (
                r#"fallback = "local""#,
                r#"fallback = "nope""#,
                "agent.fallback",
            ),
            (
                r#"fallback = "local""#,
                r#"fallback = "main""#,
                "agent.fallback",
            ),
            (
                r#"provider = "main""#,
                r#"provider = "gone""#,
                "agent.provider",
            ),
            ("max_steps = 8", "max_steps = 0", "agent.max_steps"),
            (
                "idle_timeout_secs = 30",
                "max_tokens = 0",
                "providers.main.max_tokens",
            ),
            ("max_steps = 8", "max_steps = 100000", "agent.max_steps"),
            (
                "max_steps = 8",
                "max_offered_tools = 1",
                "agent.max_offered_tools",
            ),
            (
                "max_steps = 8",
                "max_offered_tools = 100000",
                "agent.max_offered_tools",
            ),
            (
                "max_steps = 8",
                "system_prompt_file = \"/etc/p\"",
                "not both",
            ),
            ("[providers.local]", "[providers.\"a.b\"]", "providers.a.b"),
        ];
        for (from, to, expect) in cases {
            let error = refused(from, to);
            assert!(error.contains(expect), "{to:?}: {error}");
        }
    }
}
