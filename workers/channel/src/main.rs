//! `loong-worker-channel`: the balanced-tier service worker of one chat channel account.
//!
//! loongd sends it one `Serve` request (service `channel`) with the channel's configuration
//! and its platform secrets, and its network grant reaches only the platform's API host
//! (through the egress broker's proxy). While it serves, every platform byte is parsed here
//! and every message reaches loongd only as a `channel_*` kernel call, whose chain is bound
//! to the channel's own token; the worker answers `Serve` only when loongd withdraws it (or
//! when it cannot serve: a bad configuration, a kind this build leaves out).

use loong_ipc::{
    message::worker::ServeSpec, FailureKind, PluginFailure, RemoteError, WorkerRequest,
    WorkerResponse,
};
use loong_worker_runtime::{internal, refused, service::AsyncLink, Final, Handler, KernelLink};

#[cfg(any(feature = "telegram", feature = "feishu"))]
mod kernel_link;

/// The configuration loongd passes (`config_json`).
#[derive(Debug, serde::Deserialize)]
struct Config {
    kind: String,
    api_base: String,
    /// A Feishu app's id.
    #[cfg(feature = "feishu")]
    #[serde(default)]
    app_id: Option<String>,
}

#[derive(Debug, Default)]
struct Worker;

fn failed(message: String) -> Result<WorkerResponse, RemoteError> {
    Ok(WorkerResponse::Failed(PluginFailure::new(
        FailureKind::LoadRefused,
        message,
    )))
}

#[cfg(any(feature = "telegram", feature = "feishu"))]
fn secret<'a>(spec: &'a ServeSpec, role: &str) -> Option<&'a str> {
    spec.secrets
        .iter()
        .find(|(n, _)| n == role)
        .map(|(_, v)| v.expose())
}

/// Serves one channel until loongd withdraws the request.
fn serve(spec: &ServeSpec, link: AsyncLink) -> Result<WorkerResponse, RemoteError> {
    let config: Config = match serde_json::from_str(&spec.config_json) {
        Ok(c) => c,
        Err(e) => {
            link.close();
            return failed(format!("channel {}: its configuration: {e}", spec.name));
        }
    };
    match config.kind.as_str() {
        #[cfg(feature = "telegram")]
        "telegram" => serve_telegram(spec, &config, link),
        #[cfg(feature = "feishu")]
        "feishu" => serve_feishu(spec, &config, link),
        other => {
            link.close();
            failed(format!(
                "channel {} at {}: kind `{other}` is not in this build of loong-worker-channel",
                spec.name, config.api_base
            ))
        }
    }
}

/// A Telegram bot: the poll and send loops until loongd withdraws the request.
#[cfg(feature = "telegram")]
fn serve_telegram(
    spec: &ServeSpec,
    config: &Config,
    link: AsyncLink,
) -> Result<WorkerResponse, RemoteError> {
    use loong_worker_channel::{limits::TELEGRAM_POLL_TIMEOUT_SECS, serve, telegram};
    use std::sync::Arc;
    let Some(token) = secret(spec, "bot_token") else {
        link.close();
        return failed(format!("channel {}: no bot_token secret", spec.name));
    };
    let tg = match telegram::Telegram::new(&config.api_base, token, TELEGRAM_POLL_TIMEOUT_SECS) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            link.close();
            return failed(format!("channel {}: {e}", spec.name));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| internal(format!("starting the runtime: {e}")))?;
    let kernel: Arc<dyn serve::Kernel> = Arc::new(kernel_link::Link(link.clone()));
    runtime.block_on(async {
        let poll = serve::poll_telegram(tg.clone(), kernel.clone(), telegram::Poller::default());
        let send = serve::send_telegram(tg, kernel);
        tokio::select! {
            () = link.stopped() => {}
            r = poll => if let Err(e) = r { tracing::warn!(error = %e, "the poll loop ended") },
            () = send => {}
        }
    });
    link.close();
    Ok(WorkerResponse::Stopped)
}

/// A Feishu/Lark app: the webhook and send loops until loongd withdraws the request.
#[cfg(feature = "feishu")]
fn serve_feishu(
    spec: &ServeSpec,
    config: &Config,
    link: AsyncLink,
) -> Result<WorkerResponse, RemoteError> {
    use loong_worker_channel::{feishu, serve};
    use std::sync::Arc;
    let secrets = (
        secret(spec, "app_secret"),
        secret(spec, "encrypt_key"),
        secret(spec, "verification_token"),
        config.app_id.as_deref(),
    );
    let (Some(app_secret), Some(encrypt_key), Some(verification_token), Some(app_id)) = secrets
    else {
        link.close();
        return failed(format!(
            "channel {}: the app id, or the app_secret, encrypt_key or verification_token secret, is missing; add the channel again",
            spec.name
        ));
    };
    let built = feishu::Webhook::new(encrypt_key, verification_token).and_then(|hook| {
        feishu::Feishu::new(&config.api_base, app_id, app_secret).map(|fs| (hook, fs))
    });
    let (hook, fs) = match built {
        Ok((h, f)) => (Arc::new(h), Arc::new(f)),
        Err(e) => {
            link.close();
            return failed(format!("channel {}: {e}", spec.name));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| internal(format!("starting the runtime: {e}")))?;
    let kernel: Arc<dyn serve::Kernel> = Arc::new(kernel_link::Link(link.clone()));
    runtime.block_on(async {
        let errors = Arc::new(serve::feishu::Errors::default());
        let hooks = serve::feishu::webhook_loop(hook, kernel.clone(), errors.clone());
        let send = serve::feishu::send_loop(fs, kernel, errors);
        tokio::select! {
            () = link.stopped() => {}
            () = hooks => {}
            () = send => {}
        }
    });
    link.close();
    Ok(WorkerResponse::Stopped)
}

impl Handler for Worker {
    fn handle(&mut self, _req: WorkerRequest) -> Result<WorkerResponse, RemoteError> {
        Ok(refused(
            "the channel worker serves only a Serve request".into(),
        ))
    }

    fn handle_with(
        &mut self,
        req: WorkerRequest,
        link: KernelLink,
    ) -> Result<WorkerResponse, RemoteError> {
        let WorkerRequest::Serve(spec) = req else {
            return self.handle(req);
        };
        let link = AsyncLink::start(link)
            .map_err(|e| internal(format!("starting the kernel link: {e}")))?;
        serve(&spec, link)
    }
}

fn main() {
    let code = loong_worker_runtime::main_with(
        concat!("loong-worker-channel ", env!("CARGO_PKG_VERSION")),
        Final::TierOnly,
        || Ok(Worker),
    );
    std::process::exit(code);
}
