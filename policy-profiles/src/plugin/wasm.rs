//! What a WASM plugin's manifest says about its module and its guest: the sha256 pins in
//! every place public Loong or this project puts one, what the guest reads (public Loong's
//! request envelope or the bare input), and the configuration it may read (`sandbox.config`
//! and the `provider.`/`channel.` keys resolved from the manifest), held to the Load
//! message's bounds.

use std::collections::BTreeMap;

use super::{Findings, Identity, RawManifest, MAX_CONFIG_KEY_BYTES};

/// Public Loong's pin of a WASM module's sha256 (`metadata.component_sha256`).
pub const COMPONENT_SHA256_FIELD: &str = "metadata.component_sha256";
/// Public Loong's two other metadata pins, which it reads beside `component_sha256` (its
/// `resolve_expected_wasm_sha256` and install scan): honoured the same way, never ignored.
pub const COMPONENT_SHA256_PIN_FIELD: &str = "metadata.component_sha256_pin";
pub const COMPONENT_SHA256_HEX_FIELD: &str = "metadata.component_sha256_hex";
/// This project's own pin of a WASM module's sha256 (`sandbox.sha256`).
pub const SANDBOX_SHA256_FIELD: &str = "sandbox.sha256";
/// Guest-readable keys under this prefix read the manifest's `metadata` (public Loong's
/// provider metadata): `provider.region` is `metadata.region`.
pub const PROVIDER_CONFIG_PREFIX: &str = "provider.";
/// Guest-readable keys under this prefix read the channel's metadata, which public Loong sets
/// to `source_plugin` (the plugin id) when the manifest names a `channel_id`.
pub const CHANNEL_CONFIG_PREFIX: &str = "channel.";
/// `sandbox.input`: the guest reads public Loong's request envelope (the default).
pub const INPUT_ENVELOPE: &str = "envelope";
/// `sandbox.input`: the guest reads the caller's input as given.
pub const INPUT_BARE: &str = "bare";
/// The most characters of a malformed pin an error message shows.
const MAX_PIN_SHOWN_CHARS: usize = 80;

/// A sha256 pin as public Loong normalises it: surrounding whitespace trimmed, an optional
/// `sha256:` prefix (any case) removed, the hex lowercased. `None` when what is left is not
/// 64 hex digits.
pub fn normalize_sha256_pin(raw: &str) -> Option<String> {
    let lowered = raw.trim().to_ascii_lowercase();
    let digest = lowered.strip_prefix("sha256:").unwrap_or(&lowered).trim();
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then(|| digest.to_owned())
}

/// What the guest reads (`sandbox.input`): public Loong's request envelope unless the
/// manifest declares `"bare"`. The envelope names the manifest's `provider_id` (the plugin
/// id when there is none) and its `channel_id` (`null` when there is none).
pub(super) fn guest_input(
    raw: &RawManifest,
    identity: &Identity,
    bad: &mut Findings,
) -> Option<loong_ipc::GuestInput> {
    match raw.sandbox.input.as_deref() {
        None | Some(INPUT_ENVELOPE) => Some(loong_ipc::GuestInput::Envelope {
            provider_id: identity.provider_id.clone(),
            channel_id: identity.channel_id.clone(),
        }),
        Some(INPUT_BARE) => Some(loong_ipc::GuestInput::Bare),
        Some(other) => {
            bad.add(
                "sandbox.input",
                format!("{other:?} is not {INPUT_ENVELOPE:?} or {INPUT_BARE:?}"),
            );
            None
        }
    }
}

/// The configuration the guest may read: `sandbox.config`, and each guest-readable key under
/// `provider.` or `channel.` resolved as public Loong resolves it (the rest of the key must
/// be non-empty with no whitespace; `provider.K` is `metadata.K`, `channel.source_plugin` is
/// the plugin id when the manifest names a `channel_id`; a key that resolves to nothing stays
/// unset). A resolved key that `sandbox.config` also sets is refused, as ambiguous.
pub(super) fn guest_config(raw: &RawManifest, bad: &mut Findings) -> BTreeMap<String, String> {
    let mut config = raw.sandbox.config.clone();
    for key in &raw.sandbox.guest_readable_config_keys {
        let (rest, value) = if let Some(rest) = key.strip_prefix(PROVIDER_CONFIG_PREFIX) {
            (rest, raw.metadata.get(rest).cloned())
        } else if let Some(rest) = key.strip_prefix(CHANNEL_CONFIG_PREFIX) {
            let declared = raw.channel_id.is_some();
            (
                rest,
                (declared && rest == "source_plugin").then(|| raw.plugin_id.clone()),
            )
        } else {
            continue;
        };
        if rest.is_empty() || rest.chars().any(char::is_whitespace) {
            bad.add(
                "sandbox.guest_readable_config_keys",
                format!("{key:?}: after the prefix, name a key with no whitespace"),
            );
            continue;
        }
        let Some(value) = value else { continue };
        // Against the manifest's own `sandbox.config`: a key listed twice resolves to the
        // same value twice (public Loong's allowlist is a set) and is not a conflict.
        if raw.sandbox.config.contains_key(key) {
            bad.add(
                "sandbox.config",
                format!("{key:?} is also read from the manifest's metadata; remove one"),
            );
            continue;
        }
        if value.len() > MAX_CONFIG_KEY_BYTES {
            bad.add(
                "sandbox.guest_readable_config_keys",
                format!("{key:?} resolves to a value over {MAX_CONFIG_KEY_BYTES} bytes"),
            );
            continue;
        }
        config.insert(key.clone(), value);
    }
    config_bounds(raw, &config, bad);
    config
}

/// The bounds the Load message holds a WASM plugin's configuration to, checked here so a
/// manifest over them is refused at install naming its field, never loaded and refused by
/// the worker at every call.
fn config_bounds(raw: &RawManifest, config: &BTreeMap<String, String>, bad: &mut Findings) {
    use loong_ipc::message::worker::{MAX_CONFIG_ENTRIES, MAX_CONFIG_TEXT_BYTES};
    if config.len() > MAX_CONFIG_ENTRIES {
        bad.add(
            "sandbox.config",
            format!(
                "{} entries with the resolved guest-readable keys, over {MAX_CONFIG_ENTRIES}",
                config.len()
            ),
        );
    }
    if raw.sandbox.guest_readable_config_keys.len() > MAX_CONFIG_ENTRIES {
        bad.add(
            "sandbox.guest_readable_config_keys",
            format!(
                "{} keys, over {MAX_CONFIG_ENTRIES}",
                raw.sandbox.guest_readable_config_keys.len()
            ),
        );
    }
    if let Some((key, _)) = raw
        .sandbox
        .config
        .iter()
        .find(|(k, v)| k.len() > MAX_CONFIG_TEXT_BYTES || v.len() > MAX_CONFIG_TEXT_BYTES)
    {
        let shown: String = key.chars().take(MAX_PIN_SHOWN_CHARS).collect();
        bad.add(
            "sandbox.config",
            format!("{shown:?}: a key or value is over {MAX_CONFIG_TEXT_BYTES} bytes"),
        );
    }
}

/// The module pins a manifest gives (`metadata.component_sha256`, `sandbox.sha256`), each
/// normalised; a malformed pin, or two that disagree, is a finding naming the field.
/// Returns the pin and the field(s) it was read from.
pub(super) fn module_pin(raw: &RawManifest, bad: &mut Findings) -> Option<(String, &'static str)> {
    let given = [
        (COMPONENT_SHA256_FIELD, raw.metadata.get("component_sha256")),
        (
            COMPONENT_SHA256_PIN_FIELD,
            raw.metadata.get("component_sha256_pin"),
        ),
        (
            COMPONENT_SHA256_HEX_FIELD,
            raw.metadata.get("component_sha256_hex"),
        ),
        (SANDBOX_SHA256_FIELD, raw.sandbox.sha256.as_ref()),
    ];
    let mut pin: Option<(String, &'static str)> = None;
    for (field, value) in given {
        let Some(value) = value else { continue };
        let Some(digest) = normalize_sha256_pin(value) else {
            let shown: String = value.chars().take(MAX_PIN_SHOWN_CHARS).collect();
            bad.add(
                field,
                format!(
                    "{shown:?} is not a sha256 digest: write 64 hex digits, optionally prefixed with sha256:"
                ),
            );
            continue;
        };
        pin = match pin {
            None => Some((digest, field)),
            // Two fields, in order: the second agrees with the first.
            Some((first, first_field)) if first == digest => Some((
                first,
                match (first_field, field) {
                    (COMPONENT_SHA256_FIELD, SANDBOX_SHA256_FIELD) => {
                        "metadata.component_sha256 and sandbox.sha256"
                    }
                    _ => first_field,
                },
            )),
            Some((first, first_field)) => {
                bad.add(
                    field,
                    format!(
                        "pins sha256 {digest}, but {first_field} pins {first}; make the two pins agree or keep one"
                    ),
                );
                Some((first, first_field))
            }
        };
    }
    pin
}
