//! Cross-process tests: real `loongd` and `loongctl` binaries, real sockets, temporary homes.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which the test
//! command does). Each module is one area.

mod agent;
mod agent_tools;
mod approval_bounds;
mod approvals;
mod audit;
mod authority;
mod bridges;
mod browser;
mod builtins;
mod channel_approvals;
mod channels;
mod chat;
mod cold_start;
mod compat_sdk;
mod control_socket;
mod daemon_lifecycle;
mod dns;
mod dns_server;
mod egress;
mod egress_limits;
mod file_binding;
mod gateway;
mod gateway_chat;
mod gateway_guard;
mod gateway_listen;
mod gateway_streams;
mod kernel_calls;
mod keys;
mod lists;
mod manifest_agreement;
mod mcp_serve;
mod metrics;
mod onboard;
mod outcomes;
mod package_checks;
mod package_copy;
mod packaging;
mod plans;
mod revocation;
mod rootless;
mod sandbox;
mod sandbox_client;
mod sandbox_probes;
mod schema_versions;
mod secrets;
mod supply_chain;
mod support;
mod terminal;
mod tidy;
mod tls;
mod upstream_abi;
mod upstream_packages;
mod workers;
