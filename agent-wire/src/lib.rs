//! What loongd and the agent worker share: the `[providers.NAME]` and `[agent]` sections of
//! `loongd.toml` ([`config`]), the agent's limits ([`limits`]), the provider-neutral message
//! types ([`types`]), the gateway's chat turn ([`chat`]) and one turn's input and output ([`wire`]). No HTTP client, no TLS: loongd
//! links this crate, never the worker's (which holds the provider clients).

pub mod chat;
pub mod config;
pub mod limits;
pub mod types;
pub mod wire;
