//! `loong-worker-channel`: the chat channel worker's platform clients, one cargo feature per
//! platform (`telegram`, `feishu`; both on by default).
//!
//! Everything a platform sends is parsed here, in the confined worker, never in loongd: the
//! parsers are bounded ([`limits`]) and fail with a [`ChannelError`] on hostile input (an
//! oversized body, invalid UTF-8, deep nesting), and an unknown update kind is skipped, not an
//! error. The HTTP client ([`http`]) goes through the egress broker's proxy from the
//! worker's environment. The logic that decides (message splitting, back-off, signature
//! checks, decryption) is pure and unit-tested; the clients only move bytes.

pub mod backoff;
pub mod error;
pub mod http;
pub mod limits;
pub mod text;

#[cfg(feature = "feishu")]
pub mod feishu;
pub mod serve;
#[cfg(feature = "telegram")]
pub mod telegram;

#[cfg(all(test, any(feature = "telegram", feature = "feishu")))]
mod testserver;

pub use backoff::Backoff;
pub use error::ChannelError;
