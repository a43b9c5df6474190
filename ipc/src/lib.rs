//! `loong-ipc`: the only crate both ends of a Loong socket share.
//!
//! Layers, kept apart as in mini-redis:
//! - [`frame`]: bytes ↔ one postcard message behind a `u32` little-endian length prefix;
//!   the length is checked against the connection's limit before anything is allocated.
//! - [`message`]: what the frames mean: the handshake, the request/reply envelope and the
//!   message families (the control API spoken by loongctl and loongd).
//! - [`connection`] (feature `tokio`): async framed reading and writing with deadlines.
//! - [`client`]: a small blocking client, so loongctl stays light and needs no runtime.
//! - [`spin`]: how long an end busy-polls its socket before it sleeps (both ends' waits).
//!
//! Every wire type is a closed enum or struct defined here, with a doc comment per variant.
//! Kernel-internal types never derive `Serialize`; they are converted at the edge.

pub mod client;
#[cfg(feature = "tokio")]
pub mod connection;
pub mod frame;
pub mod mcp_names;
pub mod message;
pub mod package;
pub mod paths;
pub mod schema;
pub mod spin;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use frame::{FrameError, FrameLimit};
pub use message::{
    control::{
        ApprovalChain, ApprovalView, AskRequest, AskResult, AskToolCall, AuditQuery,
        AuditRecordView, AuditVerifyReport, BearerSecret, ChannelAddRequest, ChannelKind,
        ChannelView, ControlRequest, ControlResponse, DecisionView, DoctorReport, FullAccess,
        GatewayView, InvokeRequest, InvokeResult, KeyView, LockCheck, MechanismReport,
        MemoryMessage, MemorySession, PackView, Page, PluginView, SandboxExit, SandboxRunRequest,
        SecretValue, SecretView, StatusReport, TierReport, TokenView, ToolHit, ToolSearchRequest,
        WorkerView,
    },
    envelope::{
        Call, ErrorKind, RemoteError, Reply, RequestId, StreamChunk, INTERRUPTS_TO_KILL,
        MAX_CHUNK_BYTES,
    },
    handshake::{
        HandshakeError, HandshakeReply, Hello, Limits, PeerKind, RejectReason, Welcome,
        PROTOCOL_VERSION,
    },
    kernel::{
        ChatEventCall, InvokeTool, KernelCall, KernelCallError, KernelRequest, ServiceCall,
        ShowText,
    },
    outcome::{
        Budget, BudgetExceeded, Denial, DenialStage, ErrorDetail, FailureClass, PlanCallFailure,
        PlanFailed, PlanFailureKind,
    },
    worker::{
        BuiltinSpec, CallOutput, CompiledModule, CompiledUse, DecidedFile, FailureKind, GuestInput,
        HttpSpec, PeerProtocol, PeerSpec, PluginFailure, ServeSpec, ToolInfo, WasmPlugin,
        WorkerRequest, WorkerResponse, WorkerStats,
    },
};

#[cfg(test)]
mod proptests;
