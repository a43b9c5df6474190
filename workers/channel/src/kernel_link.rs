//! [`Kernel`] over the `Serve` request's link: each call a `channel_*` kernel call with a
//! postcard body (`loong_ipc::message::channel`).

use std::time::Duration;

use loong_ipc::{
    message::channel::{
        ChannelAck, ChannelEvent, ChannelEventTaken, ChannelMessage, ChannelOffset,
        ChannelOutboxItem, ChannelOutboxWait, ChannelPress, ChannelReceived, ChannelStatus,
        ChannelTaken, OutboxKind, WebhookAnswer, WebhookReply, WebhookRequest, WebhookWait,
        KIND_CHANNEL_ACK, KIND_CHANNEL_EVENT, KIND_CHANNEL_OFFSET, KIND_CHANNEL_OUTBOX,
        KIND_CHANNEL_RECEIVED, KIND_CHANNEL_STATUS, KIND_CHANNEL_WEBHOOK_ANSWER,
        KIND_CHANNEL_WEBHOOK_NEXT, MAX_CHANNEL_STATUS_BYTES, MAX_OUTBOX_ITEMS, MAX_OUTBOX_WAIT_MS,
        MAX_WEBHOOK_ANSWER_BYTES, MAX_WEBHOOK_WAIT_MS,
    },
    KernelRequest, ServiceCall,
};
use loong_worker_channel::serve::{
    Batch, BoxFuture, EventTaken, HookAnswer, HookRequest, Incoming, Kernel, KernelError, Offer,
    Outgoing, Taken,
};

// What the worker hands over is what loongd takes: a batch past either bound would be
// refused whole, and the offset would never pass it.
const _: () = assert!(
    loong_worker_channel::limits::MAX_HANDED_TEXT_BYTES
        == loong_ipc::message::channel::MAX_CHANNEL_TEXT_BYTES
);
const _: () = assert!(
    loong_worker_channel::limits::TELEGRAM_MAX_UPDATES as usize
        == loong_ipc::message::channel::MAX_CHANNEL_BATCH
);
const _: () = assert!(
    loong_worker_channel::limits::MAX_HANDED_PRESS_DATA_BYTES
        == loong_ipc::message::channel::MAX_PRESS_DATA_BYTES
);
const _: () = assert!(
    loong_worker_channel::limits::MAX_HANDED_ID_BYTES
        == loong_ipc::message::channel::MAX_CHANNEL_ID_BYTES
);
use loong_worker_runtime::service::AsyncLink;

/// How long one kernel call may take (an outbox wait included).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// [`Kernel`] over the link of the `Serve` request.
pub(crate) struct Link(pub(crate) AsyncLink);

impl Link {
    async fn call<T: serde::Serialize>(
        &self,
        kind: &'static str,
        body: &T,
    ) -> Result<Vec<u8>, KernelError> {
        let err = |message: String| KernelError {
            call: kind,
            message,
        };
        let payload = postcard::to_allocvec(body).map_err(|e| err(e.to_string()))?;
        let req = KernelRequest::Service(ServiceCall {
            kind: kind.to_owned(),
            payload,
        });
        self.0
            .call(req, CALL_TIMEOUT)
            .await
            .map_err(|e| err(e.to_string()))
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, KernelError> {
    postcard::from_bytes(bytes).map_err(|e| KernelError {
        call: kind,
        message: format!("the answer does not decode: {e}"),
    })
}

impl Kernel for Link {
    fn offset(&self) -> BoxFuture<'_, Result<Option<i64>, KernelError>> {
        Box::pin(async move {
            let bytes = self.call(KIND_CHANNEL_OFFSET, &()).await?;
            Ok(decode::<ChannelOffset>(KIND_CHANNEL_OFFSET, &bytes)?.offset)
        })
    }

    fn received(&self, batch: Batch) -> BoxFuture<'_, Result<Taken, KernelError>> {
        Box::pin(async move {
            let body = ChannelReceived {
                next_offset: batch.next_offset,
                skipped: batch.skipped,
                presses: batch
                    .presses
                    .into_iter()
                    .map(|p| ChannelPress {
                        callback: p.callback,
                        chat: p.chat,
                        user: p.user,
                        data: p.data,
                    })
                    .collect(),
                messages: batch
                    .messages
                    .into_iter()
                    .map(|m| ChannelMessage {
                        key: m.key,
                        chat: m.chat,
                        message_id: m.message_id,
                        thread: m.thread,
                        sender: m.sender,
                        text: m.text,
                    })
                    .collect(),
            };
            let answer = self.call(KIND_CHANNEL_RECEIVED, &body).await?;
            postcard::from_bytes::<ChannelTaken>(&answer)
                .map(|t| Taken {
                    typing: t.typing,
                    presses: t
                        .presses
                        .into_iter()
                        .map(|p| (p.callback, p.text))
                        .collect(),
                })
                .map_err(|e| KernelError {
                    call: KIND_CHANNEL_RECEIVED,
                    message: format!("the answer does not decode: {e}"),
                })
        })
    }

    fn outbox(&self) -> BoxFuture<'_, Result<Vec<Outgoing>, KernelError>> {
        Box::pin(async move {
            let wait = ChannelOutboxWait {
                max_items: MAX_OUTBOX_ITEMS,
                wait_ms: MAX_OUTBOX_WAIT_MS,
            };
            let bytes = self.call(KIND_CHANNEL_OUTBOX, &wait).await?;
            let items: Vec<ChannelOutboxItem> = decode(KIND_CHANNEL_OUTBOX, &bytes)?;
            Ok(items
                .into_iter()
                .map(|i| {
                    let offer = match (i.kind, i.kind.buttons()) {
                        (OutboxKind::Offer { approval }, Some((approve, deny))) => Some(Offer {
                            approval,
                            approve,
                            deny,
                        }),
                        _ => None,
                    };
                    Outgoing {
                        id: i.id,
                        chat: i.chat,
                        reply_to: i.reply_to,
                        thread: i.thread,
                        text: i.text,
                        offer,
                    }
                })
                .collect())
        })
    }

    fn ack(
        &self,
        id: i64,
        offer: Option<[u8; 8]>,
        sent_ids: Vec<String>,
        failed: Option<String>,
    ) -> BoxFuture<'_, Result<(), KernelError>> {
        // Bounded as loongd checks it: a long refusal is cut, never the reason the ack fails.
        let failed = failed
            .map(|f| loong_worker_channel::error::printable(&f, MAX_CHANNEL_STATUS_BYTES / 4));
        Box::pin(async move {
            let ack = ChannelAck {
                id,
                kind: offer.map_or(OutboxKind::Answer, |approval| OutboxKind::Offer {
                    approval,
                }),
                sent_ids,
                failed,
            };
            self.call(KIND_CHANNEL_ACK, &ack).await.map(drop)
        })
    }

    fn status(
        &self,
        conflict: Option<String>,
        last_error: Option<String>,
    ) -> BoxFuture<'_, Result<(), KernelError>> {
        Box::pin(async move {
            let body = ChannelStatus {
                conflict,
                last_error,
            };
            self.call(KIND_CHANNEL_STATUS, &body).await.map(drop)
        })
    }

    fn webhooks(&self) -> BoxFuture<'_, Result<Vec<HookRequest>, KernelError>> {
        Box::pin(async move {
            let wait = WebhookWait {
                wait_ms: MAX_WEBHOOK_WAIT_MS,
            };
            let bytes = self.call(KIND_CHANNEL_WEBHOOK_NEXT, &wait).await?;
            let items: Vec<WebhookRequest> = decode(KIND_CHANNEL_WEBHOOK_NEXT, &bytes)?;
            Ok(items
                .into_iter()
                .map(|r| HookRequest {
                    id: r.id,
                    headers: r.headers,
                    body: r.body,
                })
                .collect())
        })
    }

    fn answer_webhook(&self, a: HookAnswer) -> BoxFuture<'_, Result<(), KernelError>> {
        // Bounded as loongd checks it (a refusal's body names the error, which is short).
        let mut body = a.body;
        body.truncate(MAX_WEBHOOK_ANSWER_BYTES);
        let refused = a
            .refused
            .map(|f| loong_worker_channel::error::printable(&f, MAX_CHANNEL_STATUS_BYTES / 4));
        Box::pin(async move {
            let answer = WebhookAnswer {
                id: a.id,
                reply: WebhookReply {
                    status: a.status,
                    body,
                },
                refused,
            };
            self.call(KIND_CHANNEL_WEBHOOK_ANSWER, &answer)
                .await
                .map(drop)
        })
    }

    fn event(
        &self,
        event_id: String,
        message: Option<Incoming>,
    ) -> BoxFuture<'_, Result<EventTaken, KernelError>> {
        Box::pin(async move {
            let body = ChannelEvent {
                event_id,
                message: message.map(|m| ChannelMessage {
                    key: m.key,
                    chat: m.chat,
                    message_id: m.message_id,
                    thread: m.thread,
                    sender: m.sender,
                    text: m.text,
                }),
            };
            let bytes = self.call(KIND_CHANNEL_EVENT, &body).await?;
            let taken: ChannelEventTaken = decode(KIND_CHANNEL_EVENT, &bytes)?;
            Ok(if taken.replayed {
                EventTaken::Replayed
            } else {
                EventTaken::Fresh
            })
        })
    }
}
