//! Host ABI v0: the `"loong"` import module.
//!
//! Every function checks guest pointers against the guest's exported
//! `memory` and answers with an error code instead of trusting them. The
//! codes are public Loong's: `-1` error, `-2` config unavailable, `-3`
//! buffer too small (`read_config` only; a short `read_input` buffer is `-1`), `0` log
//! dropped. `write_output` answers once per call; its refusals fail the call unless the
//! guest then writes successfully (see [`OutputRefusal`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::{Caller, Extern, Linker, ResourceLimiter};

use crate::{
    HOST_MODULE, MAX_CONFIG_KEY_BYTES, MAX_LOG_ENTRIES, MAX_LOG_ENTRY_BYTES, MAX_LOG_TOTAL_BYTES,
};

pub(crate) const ERR: i32 = -1;
pub(crate) const CONFIG_UNAVAILABLE: i32 = -2;
pub(crate) const BUFFER_TOO_SMALL: i32 = -3;
pub(crate) const LOG_DROPPED: i32 = 0;

/// The names [`link`] defines; any other import is refused at load.
pub(crate) const HOST_FUNCTIONS: &[&str] = &[
    "input_len",
    "read_input",
    "config_len",
    "read_config",
    "write_output",
    "log",
    "abort",
    "call_tool",
    "read_result",
];

/// `call_tool`'s codes beside a result's length: the tool call was denied (policy, or the
/// plugin does not declare `invoke_tool`), the tool failed (or is unknown), or the chain's
/// depth or the root call's budget is spent. `-1` ([`ERR`]) is a bad pointer or length.
pub(crate) const CALL_DENIED: i32 = -2;
pub(crate) const CALL_FAILED: i32 = -3;
pub(crate) const CALL_OVER_BUDGET: i32 = -4;

/// Why a kernel call made for `call_tool` has no result, as the guest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCallError {
    /// Policy denied it (`-2`).
    Denied(String),
    /// The tool failed, or there is none of that name (`-3`).
    Failed(String),
    /// The chain's depth or the root's budget is spent (`-4`).
    OverBudget(String),
    /// The call's own deadline passed while it waited: the guest is stopped as at its
    /// deadline.
    Deadline,
}

/// The worker's way to loongd for `call_tool`: a kernel call on behalf of the request the
/// worker serves, waiting at most `timeout`.
pub trait ToolCaller: Send {
    /// Calls `tool` with the JSON `input`; the tool's JSON output, or why there is none.
    fn call_tool(
        &mut self,
        tool: &str,
        input: &str,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, ToolCallError>;
}

/// Guest-readable configuration: only allowlisted keys are present.
pub(crate) type GuestConfig = Arc<BTreeMap<String, String>>;

/// Why a call was stopped by the host rather than by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostStop {
    MemoryLimit {
        requested: usize,
    },
    TableLimit,
    Abort {
        code: i32,
    },
    /// The call's deadline passed while `call_tool` waited for loongd.
    Deadline,
}

/// Why the last `write_output` was refused (it answered `-1`). As in public Loong, the call
/// fails with it unless a later `write_output` succeeds, which only a guest that has not
/// written yet can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputRefusal {
    /// Longer than the plugin's output cap.
    TooLarge,
    /// Output was already written: a call writes it once.
    Twice,
    /// A negative length, bytes outside the guest's memory, or no exported memory.
    Unreadable,
}

/// Per-call state: one per `Store`.
pub(crate) struct HostState {
    /// The way to loongd for `call_tool` (`None`: a call without a kernel link, which
    /// `call_tool` answers as denied).
    pub kernel: Option<Box<dyn ToolCaller>>,
    /// What the last `call_tool` left for `read_result`: the tool's output, or the error's
    /// `{"kind", "message"}`.
    pub last_result: Option<Vec<u8>>,
    /// When the call's deadline passes (a kernel call waits at most until then).
    pub deadline: std::time::Instant,
    pub input: Arc<[u8]>,
    pub config: GuestConfig,
    /// What `write_output` accepted; `None` when the guest wrote nothing.
    pub output: Option<Vec<u8>>,
    pub output_refused: Option<OutputRefusal>,
    pub max_output: usize,
    pub logs: Vec<String>,
    pub log_bytes: usize,
    pub logs_dropped: u32,
    pub max_memory: usize,
    pub peak_memory: usize,
    pub stop: Option<HostStop>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("kernel", &self.kernel.is_some())
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.stop = Some(HostStop::MemoryLimit { requested: desired });
            return Err(wasmtime::format_err!(
                "linear memory of {desired} bytes exceeds the plugin's limit of {} bytes",
                self.max_memory
            ));
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > crate::MAX_TABLE_ELEMENTS {
            self.stop = Some(HostStop::TableLimit);
            return Err(wasmtime::format_err!(
                "table of {desired} elements exceeds the limit of {}",
                crate::MAX_TABLE_ELEMENTS
            ));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        crate::MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        crate::MAX_TABLES
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Copies `len` bytes at `ptr` out of the guest's memory, or `None` when the
/// guest has no memory or the range is out of bounds.
fn guest_read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let (start, len) = (usize::try_from(ptr).ok()?, usize::try_from(len).ok()?);
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let data = memory.data(&*caller);
    Some(data.get(start..start.checked_add(len)?)?.to_vec())
}

/// Whether `[ptr, ptr + len)` lies inside the guest's memory (`false` for a negative pointer
/// or length, or a guest with no memory).
fn guest_range_in_memory(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> bool {
    let (Ok(start), Ok(len)) = (usize::try_from(ptr), usize::try_from(len)) else {
        return false;
    };
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return false;
    };
    start
        .checked_add(len)
        .is_some_and(|end| end <= memory.data_size(&*caller))
}

/// Writes `bytes` into the guest's memory at `ptr`; `false` when out of bounds.
fn guest_write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> bool {
    let Ok(start) = usize::try_from(ptr) else {
        return false;
    };
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return false;
    };
    let data = memory.data_mut(&mut *caller);
    match start
        .checked_add(bytes.len())
        .and_then(|end| data.get_mut(start..end))
    {
        Some(slot) => {
            slot.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// The value of a guest-readable key, or `None` when it is not granted.
fn config_value(
    caller: &mut Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
) -> Result<String, i32> {
    if usize::try_from(key_len).map_or(true, |len| len > MAX_CONFIG_KEY_BYTES) {
        return Err(ERR);
    }
    let key = guest_read(caller, key_ptr, key_len).ok_or(ERR)?;
    let key = String::from_utf8(key).map_err(|_| ERR)?;
    caller
        .data()
        .config
        .get(&key)
        .cloned()
        .ok_or(CONFIG_UNAVAILABLE)
}

/// Writes `bytes` to the guest buffer `(ptr, buf_len)`: the length written,
/// `-3` when the buffer is too small, `-1` when it is out of bounds.
///
/// The whole buffer the guest names must lie in its memory, whatever the bytes' length: a
/// guest that claims a buffer it does not have gets `-1` (`read_input(0, 0x7fffffff)` in a
/// one-page memory is an error, as `docs/plugins.md` says), never a partial write.
fn write_if_fits(caller: &mut Caller<'_, HostState>, ptr: i32, buf_len: i32, bytes: &[u8]) -> i32 {
    if !guest_range_in_memory(caller, ptr, buf_len) {
        return ERR;
    }
    match usize::try_from(buf_len) {
        Ok(len) if len >= bytes.len() => {
            if guest_write(caller, ptr, bytes) {
                len_i32(bytes.len())
            } else {
                ERR
            }
        }
        Ok(_) => BUFFER_TOO_SMALL,
        Err(_) => ERR,
    }
}

/// The bytes a `write_output(ptr, len)` hands over, or why they are refused; checked in
/// public Loong's order: the length, the cap, the guest's memory, then whether output was
/// already written.
fn write_output(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<Vec<u8>, OutputRefusal> {
    let wanted = usize::try_from(len).map_err(|_| OutputRefusal::Unreadable)?;
    if wanted > caller.data().max_output {
        return Err(OutputRefusal::TooLarge);
    }
    let bytes = guest_read(caller, ptr, len).ok_or(OutputRefusal::Unreadable)?;
    if caller.data().output.is_some() {
        return Err(OutputRefusal::Twice);
    }
    Ok(bytes)
}

/// Whether an import of host function `name` needs the guest's exported `memory` (public
/// Loong's list: every function that takes a pointer).
pub(crate) fn uses_guest_memory(name: &str) -> bool {
    matches!(
        name,
        "read_input"
            | "config_len"
            | "read_config"
            | "write_output"
            | "log"
            | "call_tool"
            | "read_result"
    )
}

/// `call_tool(name_ptr, name_len, input_ptr, input_len)`: the result's length, or a code.
/// `Err` stops the guest (its deadline passed while the call waited).
fn call_tool(
    caller: &mut Caller<'_, HostState>,
    name: (i32, i32),
    input: (i32, i32),
) -> wasmtime::Result<i32> {
    caller.data_mut().last_result = None;
    let bounded = |len: i32, max: usize| usize::try_from(len).is_ok_and(|l| l <= max);
    if !bounded(name.1, crate::MAX_TOOL_NAME_BYTES) || !bounded(input.1, crate::MAX_INPUT_BYTES) {
        return Ok(ERR);
    }
    let (Some(tool), Some(body)) = (
        guest_read(caller, name.0, name.1),
        guest_read(caller, input.0, input.1),
    ) else {
        return Ok(ERR);
    };
    let (Ok(tool), Ok(body)) = (String::from_utf8(tool), String::from_utf8(body)) else {
        return Ok(ERR);
    };
    let state = caller.data_mut();
    let left = state
        .deadline
        .saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        state.stop = Some(HostStop::Deadline);
        return Err(wasmtime::format_err!("the call's deadline passed"));
    }
    let mut answer = match state.kernel.as_mut() {
        None => Err(ToolCallError::Denied(
            "this call has no kernel link: tools cannot be called from it".into(),
        )),
        Some(k) => k.call_tool(&tool, &body, left),
    };
    // Whatever came back, a guest whose deadline passed meanwhile stops here: the answer may
    // have raced the deadline, and the guest must not outlive it.
    if std::time::Instant::now() >= state.deadline {
        answer = Err(ToolCallError::Deadline);
    }
    let (code, kind, message) = match answer {
        Ok(out) if out.len() > crate::MAX_TOOL_RESULT_BYTES => (
            CALL_FAILED,
            "failed",
            format!(
                "the result of {tool} is {} bytes, above the {}-byte limit",
                out.len(),
                crate::MAX_TOOL_RESULT_BYTES
            ),
        ),
        Ok(out) => {
            let len = len_i32(out.len());
            state.last_result = Some(out);
            return Ok(len);
        }
        Err(ToolCallError::Deadline) => {
            state.stop = Some(HostStop::Deadline);
            return Err(wasmtime::format_err!(
                "the call's deadline passed while {tool} ran"
            ));
        }
        Err(ToolCallError::Denied(m)) => (CALL_DENIED, "denied", m),
        Err(ToolCallError::Failed(m)) => (CALL_FAILED, "failed", m),
        Err(ToolCallError::OverBudget(m)) => (CALL_OVER_BUDGET, "budget_exceeded", m),
    };
    let why = serde_json::json!({ "kind": kind, "message": message });
    state.last_result = serde_json::to_vec(&why).ok();
    Ok(code)
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(ERR)
}

/// Defines the `"loong"` host functions in `linker`.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(HOST_MODULE, "input_len", |caller: Caller<'_, HostState>| {
        len_i32(caller.data().input.len())
    })?;
    linker.func_wrap(
        HOST_MODULE,
        "read_input",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
            let input = caller.data().input.clone();
            // Public Loong answers a buffer shorter than the input with -1, not -3.
            match write_if_fits(&mut caller, ptr, len, &input) {
                BUFFER_TOO_SMALL => ERR,
                code => code,
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "config_len",
        |mut caller: Caller<'_, HostState>, key_ptr: i32, key_len: i32| -> i32 {
            match config_value(&mut caller, key_ptr, key_len) {
                Ok(value) => len_i32(value.len()),
                Err(code) => code,
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "read_config",
        |mut caller: Caller<'_, HostState>,
         key_ptr: i32,
         key_len: i32,
         buf_ptr: i32,
         buf_len: i32|
         -> i32 {
            let value = match config_value(&mut caller, key_ptr, key_len) {
                Ok(value) => value,
                Err(code) => return code,
            };
            write_if_fits(&mut caller, buf_ptr, buf_len, value.as_bytes())
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "write_output",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
            match write_output(&mut caller, ptr, len) {
                Ok(written) => {
                    let state = caller.data_mut();
                    state.output = Some(written);
                    state.output_refused = None;
                    len
                }
                Err(refusal) => {
                    caller.data_mut().output_refused = Some(refusal);
                    ERR
                }
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "log",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
            // As public Loong: an entry over the entry bound, outside memory or not UTF-8 is
            // an error (-1); one past the count or total bound is dropped (0) and counted.
            let Ok(wanted) = usize::try_from(len) else {
                return ERR;
            };
            if wanted > MAX_LOG_ENTRY_BYTES {
                return ERR;
            }
            let Some(bytes) = guest_read(&mut caller, ptr, len) else {
                return ERR;
            };
            let Ok(entry) = String::from_utf8(bytes) else {
                return ERR;
            };
            let state = caller.data_mut();
            if state.logs.len() >= MAX_LOG_ENTRIES
                || state.log_bytes.saturating_add(entry.len()) > MAX_LOG_TOTAL_BYTES
            {
                state.logs_dropped += 1;
                return LOG_DROPPED;
            }
            state.log_bytes += entry.len();
            state.logs.push(entry);
            len
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "call_tool",
        |mut caller: Caller<'_, HostState>,
         name_ptr: i32,
         name_len: i32,
         input_ptr: i32,
         input_len: i32|
         -> wasmtime::Result<i32> {
            call_tool(&mut caller, (name_ptr, name_len), (input_ptr, input_len))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "read_result",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
            // Copies as much of the last result as the buffer holds (the length `call_tool`
            // answered is the whole of it).
            let Some(result) = caller.data().last_result.clone() else {
                return ERR;
            };
            if !guest_range_in_memory(&mut caller, ptr, len) {
                return ERR;
            }
            let n = usize::try_from(len).map_or(0, |l| l.min(result.len()));
            if guest_write(&mut caller, ptr, &result[..n]) {
                len_i32(n)
            } else {
                ERR
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "abort",
        |mut caller: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
            caller.data_mut().stop = Some(HostStop::Abort { code });
            Err(wasmtime::format_err!("plugin called abort({code})"))
        },
    )?;
    Ok(())
}
