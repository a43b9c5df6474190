//! Kernel calls: a worker asks loongd for an effect while it serves a call.
//!
//! The worker connection otherwise runs one way (loongd asks, the worker answers). While a
//! worker serves request `call`, it may send [`Reply::Kernel`](super::envelope::Reply) frames
//! carrying a [`KernelCall`]; loongd answers each with one
//! [`Call::KernelReply`](super::envelope::Call) of the same `id`, in any order. Several may be
//! in flight at once (up to loongd's per-worker limit), matched by id; the worker withdraws
//! one with [`Reply::KernelCancel`](super::envelope::Reply). loongd decides each under the
//! authority of the call chain `call` belongs to: the worker never names a token or a chain,
//! and a `call` that is not the request loongd has in flight on that connection is refused.
//!
//! # Room for the next kinds
//!
//! A kernel call is a `kind` (a short name) and a `payload` (the postcard encoding of that
//! kind's body), not an enum, so that a new kind (memory, egress, a channel's send) is added
//! without a protocol bump and without breaking a peer that does not know it: the frame
//! still decodes, and loongd answers an unknown kind with [`ErrorKind::NotFound`] naming it.
//! To add one: define its body type here, give it a `KIND_*` name, a variant of
//! [`KernelRequest`] and an arm in [`KernelRequest::encode`] and [`KernelCall::request`], and
//! say what its answer's bytes are.
//!
//! [`ErrorKind::NotFound`]: super::envelope::ErrorKind

use serde::{Deserialize, Serialize};

use super::{check_len, envelope::RequestId, BoundError};

/// The kind of [`InvokeTool`].
pub const KIND_INVOKE_TOOL: &str = "invoke_tool";
/// The kind of [`ShowText`].
pub const KIND_SHOW_TEXT: &str = "show_text";
/// Bound on the text of one [`ShowText`].
pub const MAX_SHOW_TEXT_BYTES: usize = 64 * 1024;
/// The prefixes of the kinds a service worker's kernel calls have ([`ServiceCall`]): loongd
/// takes a `gateway_*` kind only from the gateway's Serve call and a `channel_*` kind only
/// from a channel's.
pub const SERVICE_KIND_PREFIXES: [&str; 2] = ["gateway_", "channel_"];
/// Bound on a kernel call's kind.
pub const MAX_KERNEL_KIND_BYTES: usize = 64;
/// Bound on a tool's name in [`InvokeTool`] (`PLUGIN/TOOL` included).
pub const MAX_KERNEL_TOOL_BYTES: usize = 256;
/// Bound on a kernel call's payload: a call's input and room for its other fields.
pub const MAX_KERNEL_PAYLOAD_BYTES: usize = super::worker::MAX_CALL_BYTES + 4096;
/// Bound on a kernel call's answer: a call's output.
pub const MAX_KERNEL_ANSWER_BYTES: usize = super::worker::MAX_CALL_BYTES;

/// One kernel call on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct KernelCall {
    /// The worker's id for this kernel call, unique among its kernel calls in flight.
    pub id: RequestId,
    /// The loongd request the worker serves, on whose behalf it asks.
    pub call: RequestId,
    /// Milliseconds the worker will wait for the answer (loongd also holds it to the chain's
    /// own deadline and budget).
    pub deadline_ms: u32,
    /// What is asked ([`KIND_INVOKE_TOOL`], …; at most [`MAX_KERNEL_KIND_BYTES`]).
    pub kind: String,
    /// The kind's body, postcard-encoded (at most [`MAX_KERNEL_PAYLOAD_BYTES`]).
    pub payload: Vec<u8>,
}

/// Call a tool (a plugin, `PLUGIN/TOOL`, or a built-in). The answer's bytes are the tool's
/// JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InvokeTool {
    /// The tool (at most [`MAX_KERNEL_TOOL_BYTES`]).
    pub tool: String,
    /// Its JSON input.
    pub input: String,
}

/// Show a piece of the answer's text to whoever asked, as it arrives (the agent worker's
/// text deltas, relayed on the request's output stream). Only the agent's own turn may send
/// it. The answer's bytes are empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ShowText {
    /// The text (at most [`MAX_SHOW_TEXT_BYTES`]).
    pub text: String,
}

/// A service worker's kernel call: a kind with one of [`SERVICE_KIND_PREFIXES`] and its body,
/// which the service's own module (in loongd and in the worker) defines and decodes; this
/// crate checks only the bounds. The answer's bytes are that kind's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCall {
    /// `gateway_list`, `channel_send`, … (at most [`MAX_KERNEL_KIND_BYTES`]).
    pub kind: String,
    /// The kind's body, postcard-encoded (at most [`MAX_KERNEL_PAYLOAD_BYTES`]).
    pub payload: Vec<u8>,
}

impl ServiceCall {
    /// Whether `kind` is a service's kind.
    pub fn is_service_kind(kind: &str) -> bool {
        SERVICE_KIND_PREFIXES
            .iter()
            .any(|p| kind.len() > p.len() && kind.starts_with(p))
    }
}

/// The kernel calls this build knows, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelRequest {
    /// [`KIND_INVOKE_TOOL`].
    InvokeTool(InvokeTool),
    /// [`KIND_SHOW_TEXT`].
    ShowText(ShowText),
    /// A service's kind (`gateway_*`, `channel_*`).
    Service(ServiceCall),
}

/// Why a kernel call cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelCallError {
    /// A kind this build does not know.
    #[error("kernel call kind {0:?} is not known to this loongd; known: invoke_tool, show_text, gateway_*, channel_*")]
    Unsupported(String),
    /// A field past its bound.
    #[error("kernel call: {0}")]
    Bound(#[from] BoundError),
    /// The payload is not its kind's body.
    #[error("kernel call {kind}: the payload does not decode: {reason}")]
    Malformed {
        /// The call's kind.
        kind: String,
        /// What the decoder said.
        reason: String,
    },
}

impl KernelRequest {
    /// The wire form of this request as kernel call `id` on behalf of request `call`.
    pub fn encode(
        &self,
        id: RequestId,
        call: RequestId,
        deadline_ms: u32,
    ) -> Result<KernelCall, KernelCallError> {
        let (kind, payload) = match self {
            KernelRequest::InvokeTool(t) => {
                check_len("tool", &t.tool, MAX_KERNEL_TOOL_BYTES)?;
                let body = postcard::to_allocvec(t).map_err(|e| KernelCallError::Malformed {
                    kind: KIND_INVOKE_TOOL.into(),
                    reason: e.to_string(),
                })?;
                (KIND_INVOKE_TOOL, body)
            }
            KernelRequest::ShowText(t) => {
                check_len("text", &t.text, MAX_SHOW_TEXT_BYTES)?;
                let body = postcard::to_allocvec(t).map_err(|e| KernelCallError::Malformed {
                    kind: KIND_SHOW_TEXT.into(),
                    reason: e.to_string(),
                })?;
                (KIND_SHOW_TEXT, body)
            }
            KernelRequest::Service(c) => {
                if !ServiceCall::is_service_kind(&c.kind) {
                    return Err(KernelCallError::Unsupported(c.kind.clone()));
                }
                (c.kind.as_str(), c.payload.clone())
            }
        };
        let call = KernelCall {
            id,
            call,
            deadline_ms,
            kind: kind.into(),
            payload,
        };
        call.check_bounds()?;
        Ok(call)
    }
}

impl KernelCall {
    /// Checks the kind and payload against their bounds.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len("kind", &self.kind, MAX_KERNEL_KIND_BYTES)?;
        if self.payload.len() > MAX_KERNEL_PAYLOAD_BYTES {
            return Err(BoundError {
                field: "payload",
                len: self.payload.len(),
                max: MAX_KERNEL_PAYLOAD_BYTES,
            });
        }
        Ok(())
    }

    /// The typed request, or why it cannot be read (an unknown kind, a payload that is not
    /// its kind's body, a field past its bound).
    pub fn request(&self) -> Result<KernelRequest, KernelCallError> {
        self.check_bounds()?;
        let malformed = |e: postcard::Error| KernelCallError::Malformed {
            kind: self.kind.clone(),
            reason: e.to_string(),
        };
        match self.kind.as_str() {
            KIND_INVOKE_TOOL => {
                let (t, rest) =
                    postcard::take_from_bytes::<InvokeTool>(&self.payload).map_err(malformed)?;
                if !rest.is_empty() {
                    return Err(KernelCallError::Malformed {
                        kind: self.kind.clone(),
                        reason: format!("{} bytes after the body", rest.len()),
                    });
                }
                check_len("tool", &t.tool, MAX_KERNEL_TOOL_BYTES)?;
                Ok(KernelRequest::InvokeTool(t))
            }
            KIND_SHOW_TEXT => {
                let (t, rest) =
                    postcard::take_from_bytes::<ShowText>(&self.payload).map_err(malformed)?;
                if !rest.is_empty() {
                    return Err(KernelCallError::Malformed {
                        kind: self.kind.clone(),
                        reason: format!("{} bytes after the body", rest.len()),
                    });
                }
                check_len("text", &t.text, MAX_SHOW_TEXT_BYTES)?;
                Ok(KernelRequest::ShowText(t))
            }
            other if ServiceCall::is_service_kind(other) => {
                Ok(KernelRequest::Service(ServiceCall {
                    kind: other.to_string(),
                    payload: self.payload.clone(),
                }))
            }
            other => Err(KernelCallError::Unsupported(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke(tool: &str) -> KernelRequest {
        KernelRequest::InvokeTool(InvokeTool {
            tool: tool.into(),
            input: "{}".into(),
        })
    }

    #[test]
    fn a_request_travels_as_kind_and_payload_and_comes_back() {
        let call = invoke("echo").encode(7, 3, 100).expect("encodes");
        assert_eq!(
            (call.id, call.call, call.kind.as_str()),
            (7, 3, "invoke_tool")
        );
        assert_eq!(call.request(), Ok(invoke("echo")));
    }

    #[test]
    fn show_text_travels_within_its_bound_and_is_refused_past_it() {
        let show = |text: String| KernelRequest::ShowText(ShowText { text });
        let at = show("é".repeat(MAX_SHOW_TEXT_BYTES / 2));
        let call = at.encode(2, 1, 100).expect("encodes");
        assert_eq!(call.kind, KIND_SHOW_TEXT);
        assert_eq!(call.request(), Ok(at));
        let over = show("x".repeat(MAX_SHOW_TEXT_BYTES + 1));
        assert!(over.encode(3, 1, 100).is_err());
        // Past the bound on the wire too (a worker that skips the encoder's check).
        let body = postcard::to_allocvec(&ShowText {
            text: "x".repeat(MAX_SHOW_TEXT_BYTES + 1),
        })
        .expect("encodes");
        let call = KernelCall {
            id: 4,
            call: 1,
            deadline_ms: 1,
            kind: KIND_SHOW_TEXT.into(),
            payload: body,
        };
        assert!(matches!(call.request(), Err(KernelCallError::Bound(_))));
    }

    #[test]
    fn an_unknown_kind_still_decodes_as_a_frame_and_is_refused_by_name() {
        let call = KernelCall {
            id: 1,
            call: 1,
            deadline_ms: 1,
            kind: "memory_read".into(),
            payload: vec![1, 2, 3],
        };
        let bytes = postcard::to_allocvec(&call).expect("encodes");
        let back: KernelCall = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(
            back.request(),
            Err(KernelCallError::Unsupported("memory_read".into()))
        );
    }

    #[test]
    fn a_service_kind_travels_opaque_and_only_with_its_prefix() {
        let svc = |kind: &str| {
            KernelRequest::Service(ServiceCall {
                kind: kind.into(),
                payload: vec![1, 2, 3],
            })
        };
        let call = svc("gateway_list").encode(5, 1, 100).expect("encodes");
        assert_eq!(call.kind, "gateway_list");
        assert_eq!(call.request(), Ok(svc("gateway_list")));
        assert_eq!(
            svc("channel_send")
                .encode(6, 1, 100)
                .expect("encodes")
                .request(),
            Ok(svc("channel_send"))
        );
        // Not a service's prefix, or the bare prefix: refused both ways.
        for kind in ["gatewaylist", "gateway_", "memory_read", "GATEWAY_list"] {
            assert!(
                matches!(
                    svc(kind).encode(7, 1, 100),
                    Err(KernelCallError::Unsupported(_))
                ),
                "{kind}"
            );
            let call = KernelCall {
                id: 7,
                call: 1,
                deadline_ms: 1,
                kind: kind.into(),
                payload: Vec::new(),
            };
            assert!(
                matches!(call.request(), Err(KernelCallError::Unsupported(_))),
                "{kind}"
            );
        }
        // Past the payload's bound.
        let big = KernelRequest::Service(ServiceCall {
            kind: "gateway_invoke".into(),
            payload: vec![0; MAX_KERNEL_PAYLOAD_BYTES + 1],
        });
        assert!(matches!(
            big.encode(8, 1, 1),
            Err(KernelCallError::Bound(_))
        ));
    }

    #[test]
    fn bounds_and_bad_payloads_are_refused() {
        assert!(matches!(
            invoke(&"t".repeat(MAX_KERNEL_TOOL_BYTES + 1)).encode(1, 1, 1),
            Err(KernelCallError::Bound(_))
        ));
        let mut call = invoke("echo").encode(1, 1, 1).expect("encodes");
        call.payload.push(0);
        assert!(matches!(
            call.request(),
            Err(KernelCallError::Malformed { .. })
        ));
        call.payload = vec![0xff; 8];
        assert!(matches!(
            call.request(),
            Err(KernelCallError::Malformed { .. })
        ));
        call.payload = vec![0; MAX_KERNEL_PAYLOAD_BYTES + 1];
        assert!(matches!(call.request(), Err(KernelCallError::Bound(_))));
    }
}
