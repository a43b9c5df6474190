//! The agent worker's library: provider clients for the two wire families (OpenAI chat
//! completions and Anthropic messages), written against their public specifications, and the
//! loop core that turns a model's tool calls into calls of a [`ToolRunner`].
//!
//! - [`config`], [`limits`], [`types`], [`wire`]: from `loong-agent-wire`, which loongd
//!   shares (`[providers.NAME]` and `[agent]` of `loongd.toml`, the bounds, the messages, one
//!   turn's input and output).
//! - [`client`]: the [`Provider`] trait, [`HttpProvider`] (retries, timeouts, proxies, TLS
//!   with rustls and ring), [`Failover`].
//! - [`sse`], [`openai`], [`anthropic`]: the bounded stream parser and the two wire formats;
//!   [`names`]: tool names as both families accept them.
//! - [`turn`]: one conversation turn, bounded by steps and wall-clock time; [`search`]:
//!   `tool_search`, when the token may call more tools than are offered at once;
//!   [`summary`]: the rolling summary of a session's older turns.
//!
//! The library holds no key of its own: the caller resolves the secret reference and hands
//! the value to [`HttpProvider::new`].

pub mod anthropic;
pub mod client;
pub mod error;
pub mod names;
pub mod openai;
pub mod retry;
pub mod search;
pub mod sse;
pub mod summary;
pub mod turn;

pub use loong_agent_wire::{chat, config, limits, types, wire};

pub use client::{ClientOptions, EventStream, Failover, HttpProvider, Provider, ProxyChoice};
pub use error::ProviderError;
pub use turn::{
    run_chat_turn, run_turn, ToolRunner, ToolSet, TurnEvent, TurnLimits, TurnOutcome, TurnStop,
};
pub use types::{Event, FailoverEvent, Message, Request, StopReason, ToolCall, ToolSpec, Usage};
