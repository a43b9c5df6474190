//! The rolling summary: when a session's turns past its window are folded, the model is asked
//! once, before the turn, to fold them into the session's summary; the turn is then sent the
//! summary as context (after the system prompt) and the recent turns whole.
//!
//! The summary request carries no tools, and its text is not shown to the asker. Its answer
//! is cut to [`MAX_SUMMARY_BYTES`]; each message of the transcript to [`MAX_FOLD_MESSAGE_BYTES`].

use crate::{
    client::Provider,
    error::ProviderError,
    limits::{MAX_FOLD_MESSAGE_BYTES, MAX_SUMMARY_BYTES},
    types::{Event, Message, Request, Usage},
};

/// The system prompt of the summary request.
pub const SUMMARY_SYSTEM: &str = "You keep the running summary of a conversation between a user and an assistant that can call tools. Write an updated summary that merges the previous summary (if any) with the conversation given: the facts learned, the user's goals and preferences, decisions made and what is still open. Be concise; plain text; no preamble.";
/// The words the summary request's message starts with (a provider server can recognise it).
pub const SUMMARY_REQUEST_HEAD: &str = "Update the summary of this conversation.";
/// Where the summary is placed in a turn's system prompt.
pub const SUMMARY_CONTEXT_HEAD: &str = "Summary of the earlier conversation in this session:";

/// `text` cut to `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The transcript of `messages`, one line block each, with `previous` before it.
fn transcript(previous: Option<&str>, messages: &[Message]) -> String {
    let mut out = format!("{SUMMARY_REQUEST_HEAD}\n\nPrevious summary:\n");
    out.push_str(previous.unwrap_or("(none)"));
    out.push_str("\n\nConversation to fold in:\n");
    for m in messages {
        let (who, text) = match m {
            Message::User { text } => ("user".to_string(), text.clone()),
            Message::Assistant { text, tool_calls } => {
                let mut t = text.clone();
                for c in tool_calls {
                    t.push_str(&format!("\n[calls {} with {}]", c.name, c.arguments_json));
                }
                ("assistant".to_string(), t)
            }
            Message::ToolResult {
                name,
                content,
                is_error,
                ..
            } => (
                format!("tool {name}{}", if *is_error { " (error)" } else { "" }),
                content.clone(),
            ),
        };
        out.push_str(&format!("{who}: {}\n", cut(&text, MAX_FOLD_MESSAGE_BYTES)));
    }
    out
}

/// Asks `provider` to fold `messages` into `previous`; the new summary and the usage.
pub async fn summarize(
    provider: &dyn Provider,
    previous: Option<&str>,
    messages: &[Message],
) -> Result<(String, Usage), ProviderError> {
    let request = Request {
        system: Some(SUMMARY_SYSTEM.to_string()),
        messages: vec![Message::User {
            text: transcript(previous, messages),
        }],
        tools: Vec::new(),
    };
    let mut stream = provider.stream(&request).await?;
    let mut text = String::new();
    let mut usage = Usage::default();
    while let Some(event) = stream.next().await {
        match event? {
            Event::TextDelta(d) => {
                if text.len() < MAX_SUMMARY_BYTES {
                    text.push_str(&d);
                }
            }
            Event::Usage(u) => usage = u,
            Event::ToolCall(_) | Event::ToolCallDelta { .. } | Event::Done { .. } => {}
        }
    }
    let text = cut(text.trim(), MAX_SUMMARY_BYTES).to_string();
    Ok((text, usage))
}

/// The system prompt of a turn with `summary` as context.
pub fn with_summary(system: Option<&str>, summary: Option<&str>) -> Option<String> {
    match (system, summary.filter(|s| !s.is_empty())) {
        (s, None) => s.map(str::to_owned),
        (None, Some(sum)) => Some(format!("{SUMMARY_CONTEXT_HEAD}\n{sum}")),
        (Some(s), Some(sum)) => Some(format!("{s}\n\n{SUMMARY_CONTEXT_HEAD}\n{sum}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transcript_is_bounded_per_message_and_the_summary_joins_the_system_prompt() {
        let long = "é".repeat(MAX_FOLD_MESSAGE_BYTES);
        let t = transcript(
            Some("before"),
            &[
                Message::User { text: long },
                Message::ToolResult {
                    call_id: "1".into(),
                    name: "echo".into(),
                    content: "out".into(),
                    is_error: true,
                },
            ],
        );
        assert!(t.starts_with(SUMMARY_REQUEST_HEAD));
        assert!(t.contains("Previous summary:\nbefore"));
        assert!(t.contains("tool echo (error): out"));
        assert!(t.len() < MAX_FOLD_MESSAGE_BYTES + 400, "{}", t.len());
        assert_eq!(with_summary(Some("sys"), None).as_deref(), Some("sys"));
        assert_eq!(
            with_summary(Some("sys"), Some("s")).as_deref(),
            Some(format!("sys\n\n{SUMMARY_CONTEXT_HEAD}\ns").as_str())
        );
        assert_eq!(
            with_summary(None, Some("s")).as_deref(),
            Some(format!("{SUMMARY_CONTEXT_HEAD}\ns").as_str())
        );
        assert_eq!(with_summary(None, Some("")), None);
    }
}
