//! The worker supervisor, split by concern:
//!
//! - `kind.rs`: the worker kinds (WASM, stdio, HTTP, built-in: the program, its tier, memory,
//!   tasks and grants) and the wire form that loads a plugin into one of their workers.
//! - `worker.rs`: one worker process and loongd's end of its socket (requests with deadlines,
//!   the kernel calls it makes while it serves one, pings, a passed connection, its faults
//!   and their classes).
//! - `socket.rs`: loongd's end of a worker's socket, registered for reading only (a worker
//!   reading a request does not wake loongd).
//! - `pool.rs`: a pool of workers of one kind (`Supervisor`): permits, check-out, spawn
//!   through the spawner, retire and replace with backoff, health pings, drain, and the call
//!   path (`call`, `check_load`), which has no branch for any one kind.
//! - `compiled.rs`: the compiled-module cache (WASM artifacts made by a worker that ran no
//!   guest code, stored under the home, checked by digest before a worker maps them).
//! - `broker.rs`: the connection broker for kinds without a network of their own.
//! - `browser.rs`: the browser tools' sessions, each a pool of one browser worker.
//!
//! Beside them: plugin discovery (`plugins.rs`), the staging copy of a package
//! (`staging.rs`), the built-in tools (`builtins.rs`), the lockfile (`lock.rs`) and address
//! pinning (`net.rs`).

mod broker;
pub(crate) mod browser;
pub(crate) mod builtins;
pub(crate) mod compiled;
mod kind;
pub(crate) mod lock;
pub(crate) mod net;
pub(crate) mod plugins;
mod pool;
mod socket;
pub(crate) mod staging;
pub(crate) mod trust;
mod worker;

pub(crate) use kind::{Loadable, Wire, WorkerKind};
pub(crate) use pool::{health_loop, CallError, Called, LoadInfo, Supervisor};
pub(crate) use worker::{KernelAnswer, KernelCalls};
