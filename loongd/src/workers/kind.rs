//! The worker kinds: what a pool runs (the worker program and the sandbox around it) and
//! what loads a plugin into one of its workers (the wire form and the call's deadline).

use std::{path::PathBuf, sync::Arc, time::Duration};

use loong_ipc::{BuiltinSpec, HttpSpec, PeerSpec, WasmPlugin, WorkerRequest};
use loong_sandbox::{NetGrant, Tier};

/// The worker executables, found next to loongd.
pub const WASM_WORKER_NAME: &str = "loong-worker-wasm";
pub const STDIO_WORKER_NAME: &str = "loong-worker-stdio";
pub const HTTP_WORKER_NAME: &str = "loong-worker-http";
pub const BUILTIN_WORKER_NAME: &str = "loong-worker-builtin";
pub const PLAN_WORKER_NAME: &str = "loong-worker-plan";
pub const AGENT_WORKER_NAME: &str = "loong-worker-agent";
pub const GATEWAY_WORKER_NAME: &str = "loong-worker-gateway";
/// The gateway worker's memory: its HTTP server, the MCP sessions and the requests in flight.
pub const GATEWAY_WORKER_MEMORY_BYTES: u64 = 512 * 1024 * 1024;
/// Tasks the gateway worker's sandbox may hold: the spawn helper and the reaper, the serve
/// loop, the kernel link's reader, the runtime's threads, and room to spare.
pub const GATEWAY_WORKER_TASKS: u64 = 16;
pub const BROWSER_WORKER_NAME: &str = "loong-worker-browser";
/// A browser session's memory (cgroup `memory.max`): the worker and every Chromium process
/// (browser, renderer, network and storage services). A page that allocates past it is
/// OOM-killed with its session; loongd is not in the cgroup.
pub const BROWSER_WORKER_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// Tasks a browser session's sandbox may hold: Chromium's processes start a few dozen threads
/// each (`--no-zygote`, no GPU process).
pub const BROWSER_WORKER_TASKS: u64 = 512;
/// Who the agent worker's connections are made for, in `net.*` records and the broker's refusals.
pub const AGENT_NET_OWNER: &str = "agent";
/// An agent worker's memory: the HTTP client, one conversation window and one answer.
pub const AGENT_WORKER_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Tasks an agent worker's sandbox may hold: the spawn helper and the reaper, the worker's
/// thread, the resolver's blocking threads, and room to spare.
pub const AGENT_WORKER_TASKS: u64 = 16;
pub const CHANNEL_WORKER_NAME: &str = "loong-worker-channel";
/// A channel worker's memory: the HTTP client, one bounded platform answer and one answer
/// being sent.
pub const CHANNEL_WORKER_MEMORY_BYTES: u64 = 128 * 1024 * 1024;
/// Tasks a channel worker's sandbox may hold: as the agent worker's, plus the kernel link's
/// reader thread.
pub const CHANNEL_WORKER_TASKS: u64 = 16;
/// A plan worker's memory: the interpreter, one plan and its steps' outputs.
pub const PLAN_WORKER_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Tasks a plan worker's sandbox may hold: the spawn helper and the reaper, the worker's
/// one thread, and one to spare.
pub const PLAN_WORKER_TASKS: u64 = 4;
/// An HTTP worker's memory and tasks: one single-threaded exchange at a time.
pub const HTTP_WORKER_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
pub const HTTP_WORKER_TASKS: u64 = 4;
/// A stdio worker's memory (cgroup `memory.max`): the worker and its program.
pub const STDIO_WORKER_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// Tasks a stdio worker and its program may run (a JavaScript runtime starts about a dozen
/// threads).
pub const STDIO_WORKER_TASKS: u64 = 64;
/// How long a stdio worker may take to (re)start its program within a call.
pub const PEER_START_ALLOWANCE: Duration = Duration::from_secs(20);
/// A WASM worker's memory (cgroup `memory.max`): the engine, its pool and one call.
pub const WORKER_MEMORY_BYTES: u64 = 768 * 1024 * 1024;
/// Tasks a WASM worker's sandbox may hold: the spawn helper and the reaper (in the cgroup
/// with it), the worker's main thread, the epoch ticker and the compiler thread, and one to
/// spare.
pub const WORKER_THREADS: u64 = 6;
/// How long past a plugin's own timeout loongd waits before it kills the worker.
pub const CALL_GRACE: Duration = Duration::from_millis(1_000);

/// What loads a plugin into a worker.
#[derive(Debug)]
pub(crate) enum Wire {
    Wasm(WasmPlugin),
    Peer(PeerSpec),
    /// An `http_json` connector and the addresses its endpoint was pinned to at discovery:
    /// loongd connects to these (and nowhere else) for each call.
    Http {
        spec: HttpSpec,
        addrs: Vec<std::net::SocketAddr>,
        /// For `web.fetch` (`spec.fetch`): whether a URL may resolve to loopback, private or
        /// link-local addresses. Each call's URL is resolved and checked then.
        fetch_allow_private: bool,
        /// The connector's `metadata.headers_json`, as written: loongd fills in each
        /// `${secret:NAME}` per call (`super::secrets_for_call`), for this endpoint only.
        headers: Vec<(String, String)>,
    },
    Builtin(BuiltinSpec),
}

/// A plugin as the supervisor loads it: the wire form and a generation that changes when
/// the plugin is rediscovered.
#[derive(Debug, Clone)]
pub(crate) struct Loadable {
    pub id: String,
    pub wire: Arc<Wire>,
    pub generation: u64,
}

impl Loadable {
    pub(super) fn request(&self) -> WorkerRequest {
        match &*self.wire {
            Wire::Wasm(w) => WorkerRequest::Load(Box::new(w.clone())),
            Wire::Peer(p) => WorkerRequest::Start(Box::new(p.clone())),
            Wire::Http { spec, .. } => {
                // The trust anchors travel with the spec: the worker reads no file.
                let mut spec = spec.clone();
                spec.trust = super::trust::anchors();
                WorkerRequest::Connector(Box::new(spec))
            }
            Wire::Builtin(b) => WorkerRequest::Builtin(Box::new(b.clone())),
        }
    }

    /// How long loongd waits for a call's answer before it kills the worker.
    pub(super) fn call_deadline(&self) -> Duration {
        match &*self.wire {
            Wire::Wasm(w) => Duration::from_millis(w.timeout_ms) + CALL_GRACE,
            // The worker may have to restart its program first.
            Wire::Peer(p) => {
                Duration::from_millis(p.timeout_ms) + PEER_START_ALLOWANCE + CALL_GRACE
            }
            Wire::Http { spec, .. } => Duration::from_millis(spec.timeout_ms) + CALL_GRACE,
            Wire::Builtin(b) => Duration::from_millis(b.timeout_ms) + CALL_GRACE,
        }
    }
}

/// What a pool runs: the worker program and the sandbox around it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerKind {
    /// `wasm` or `stdio`.
    pub name: &'static str,
    pub program: PathBuf,
    pub tier: Tier,
    pub memory_bytes: u64,
    pub tasks: u64,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub net: Vec<NetGrant>,
    /// A second socket (fd 4) on which loongd passes connected sockets.
    pub broker: bool,
    /// A listening socket loongd bound for the worker, passed as fd 4 (the gateway's); each
    /// worker started gets its own copy. Never with `broker`.
    pub listener: Option<Arc<std::os::fd::OwnedFd>>,
    /// The plugin's own package directory, readable inside (a foreign program's files).
    pub package: Option<PathBuf>,
    /// Whom the egress broker's records and refusals name for a worker with `net` grants
    /// (the plugin, or the built-in tool).
    pub net_owner: Option<String>,
    /// `sandbox.allow_private_network` for the `net` grants' names.
    pub allow_private_network: bool,
    /// The egress broker's limits for one worker: connections open at once, bytes over its
    /// life (`[egress]` in loongd.toml).
    pub egress_limits: (usize, u64),
    /// The plugin's own `sandbox.egress` limits, which may only tighten `egress_limits`.
    pub egress_asked: loong_profiles::plugin::EgressLimits,
}

fn next_to_loongd(name: &str) -> PathBuf {
    crate::programs::find(name)
}

impl WorkerKind {
    /// `name` of the plan worker's kind.
    pub(crate) const PLAN: &'static str = "plan";
    /// `name` of the agent worker's kind.
    pub(crate) const AGENT: &'static str = "agent";

    /// The WASM worker: restricted, no grant at all.
    pub(crate) fn wasm() -> WorkerKind {
        WorkerKind {
            name: "wasm",
            program: next_to_loongd(WASM_WORKER_NAME),
            tier: Tier::Restricted,
            memory_bytes: WORKER_MEMORY_BYTES,
            tasks: WORKER_THREADS,
            read: Vec::new(),
            write: Vec::new(),
            net: Vec::new(),
            broker: false,
            listener: None,
            package: None,
            net_owner: None,
            allow_private_network: false,
            egress_limits: (crate::egress::MAX_CONNECTIONS, crate::egress::MAX_BYTES),
            egress_asked: Default::default(),
        }
    }

    /// The plan worker (`programmatic_tool_call`): restricted, no grant at all; its only way
    /// out is a kernel call on its socket.
    pub(crate) fn plan() -> WorkerKind {
        WorkerKind {
            name: WorkerKind::PLAN,
            program: next_to_loongd(PLAN_WORKER_NAME),
            tier: Tier::Restricted,
            memory_bytes: PLAN_WORKER_MEMORY_BYTES,
            tasks: PLAN_WORKER_TASKS,
            read: Vec::new(),
            write: Vec::new(),
            net: Vec::new(),
            broker: false,
            listener: None,
            package: None,
            net_owner: None,
            allow_private_network: false,
            egress_limits: (crate::egress::MAX_CONNECTIONS, crate::egress::MAX_BYTES),
            egress_asked: Default::default(),
        }
    }

    /// The agent worker: balanced, no file-system grant, the network only to `net` (its
    /// providers' `HOST:PORT`).
    pub(crate) fn agent(net: Vec<NetGrant>) -> WorkerKind {
        WorkerKind {
            name: WorkerKind::AGENT,
            program: next_to_loongd(AGENT_WORKER_NAME),
            tier: Tier::Balanced,
            memory_bytes: AGENT_WORKER_MEMORY_BYTES,
            tasks: AGENT_WORKER_TASKS,
            read: Vec::new(),
            write: Vec::new(),
            net,
            broker: false,
            listener: None,
            package: None,
            net_owner: Some(AGENT_NET_OWNER.to_string()),
            allow_private_network: false,
            egress_limits: (crate::egress::MAX_CONNECTIONS, crate::egress::MAX_BYTES),
            egress_asked: Default::default(),
        }
    }

    /// The gateway worker: balanced, no file-system grant, no network of its own; it serves
    /// the listener loongd bound (`listener`, its fd 4).
    pub(crate) fn gateway(listener: Arc<std::os::fd::OwnedFd>) -> WorkerKind {
        WorkerKind {
            name: "gateway",
            program: next_to_loongd(GATEWAY_WORKER_NAME),
            tier: Tier::Balanced,
            memory_bytes: GATEWAY_WORKER_MEMORY_BYTES,
            tasks: GATEWAY_WORKER_TASKS,
            read: Vec::new(),
            write: Vec::new(),
            net: Vec::new(),
            broker: false,
            listener: Some(listener),
            package: None,
            net_owner: None,
            allow_private_network: false,
            egress_limits: (crate::egress::MAX_CONNECTIONS, crate::egress::MAX_BYTES),
            egress_asked: Default::default(),
        }
    }

    /// A chat channel's service worker: balanced, no file-system grant, the network only to
    /// its platform's API `HOST:PORT` (`net`); its connections are the channel's.
    pub(crate) fn channel(name: &str, net: Vec<NetGrant>) -> WorkerKind {
        WorkerKind {
            name: "channel",
            program: next_to_loongd(CHANNEL_WORKER_NAME),
            tier: Tier::Balanced,
            memory_bytes: CHANNEL_WORKER_MEMORY_BYTES,
            tasks: CHANNEL_WORKER_TASKS,
            read: Vec::new(),
            write: Vec::new(),
            net,
            broker: false,
            listener: None,
            package: None,
            net_owner: Some(format!("channel:{name}")),
            allow_private_network: false,
            egress_limits: (crate::egress::MAX_CONNECTIONS, crate::egress::MAX_BYTES),
            egress_asked: Default::default(),
        }
    }

    /// A browser session's worker: balanced, no file-system grant, the network only to `net`
    /// (the one `HOST:PORT` the session was opened on), through the broker's proxy.
    pub(crate) fn browser(net: Vec<NetGrant>, owner: String) -> WorkerKind {
        WorkerKind {
            name: "browser",
            program: next_to_loongd(BROWSER_WORKER_NAME),
            tier: Tier::Balanced,
            memory_bytes: BROWSER_WORKER_MEMORY_BYTES,
            tasks: BROWSER_WORKER_TASKS,
            read: Vec::new(),
            write: Vec::new(),
            net,
            broker: false,
            listener: None,
            package: None,
            net_owner: Some(owner),
            // Loopback and private addresses only where the grant names the IP literal.
            allow_private_network: false,
            egress_limits: (crate::egress::MAX_CONNECTIONS, crate::egress::MAX_BYTES),
            egress_asked: Default::default(),
        }
    }

    /// An HTTP worker: balanced, no grant, no network of its own.
    pub(crate) fn http() -> WorkerKind {
        WorkerKind {
            name: "http",
            program: next_to_loongd(HTTP_WORKER_NAME),
            tier: Tier::Balanced,
            memory_bytes: HTTP_WORKER_MEMORY_BYTES,
            tasks: HTTP_WORKER_TASKS,
            read: Vec::new(),
            write: Vec::new(),
            net: Vec::new(),
            broker: true,
            listener: None,
            package: None,
            net_owner: None,
            allow_private_network: false,
            egress_limits: (crate::egress::MAX_CONNECTIONS, crate::egress::MAX_BYTES),
            egress_asked: Default::default(),
        }
    }

    /// A built-in tool's worker, with the tool's grants (balanced, like a foreign program:
    /// `shell.exec` starts processes, the file tools open paths).
    pub(crate) fn builtin(
        read: Vec<PathBuf>,
        write: Vec<PathBuf>,
        net: Vec<NetGrant>,
    ) -> WorkerKind {
        WorkerKind {
            name: "builtin",
            program: next_to_loongd(BUILTIN_WORKER_NAME),
            ..WorkerKind::stdio(read, write, net)
        }
    }

    /// A stdio worker with a foreign program's grants.
    pub(crate) fn stdio(read: Vec<PathBuf>, write: Vec<PathBuf>, net: Vec<NetGrant>) -> WorkerKind {
        WorkerKind {
            name: "stdio",
            program: next_to_loongd(STDIO_WORKER_NAME),
            tier: Tier::Balanced,
            memory_bytes: STDIO_WORKER_MEMORY_BYTES,
            tasks: STDIO_WORKER_TASKS,
            read,
            write,
            net,
            broker: false,
            listener: None,
            package: None,
            net_owner: None,
            allow_private_network: false,
            egress_limits: (crate::egress::MAX_CONNECTIONS, crate::egress::MAX_BYTES),
            egress_asked: Default::default(),
        }
    }
}
