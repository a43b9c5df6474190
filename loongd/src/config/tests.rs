//! Tests of loongd.toml's parsing, defaults and bounds.

use super::*;

#[test]
fn a_configuration_that_is_a_fifo_or_a_link_to_a_device_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("link");
    for path in [fifo, zero] {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Config::load_or_init(&p).map_err(|e| e.to_string()));
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{}: the load hung", path.display()))
            .expect_err("refused");
        assert!(err.contains("not a regular file"), "{err}");
    }
    // The control: a configuration written in place loads.
    let good = dir.path().join("loongd.toml");
    Config::load_or_init(&good).expect("defaults written");
    assert_eq!(
        Config::load_or_init(&good).expect("load"),
        Config::default()
    );
}

fn check(text: &str, expect: Result<Config, &str>) {
    let got = Config::parse(text, Path::new("/h/loongd.toml")).map_err(|e| e.to_string());
    assert_eq!(got, expect.map_err(str::to_string), "for {text:?}");
}

/// `[providers.NAME]` and `[agent]` are read by the agent's parser: a good pair is
/// kept, an unknown key inside either is refused naming it (as loongd refuses its own).
#[test]
fn the_agent_sections_are_checked_not_ignored() {
    let good = "[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n[agent]\nprovider = \"local\"\n";
    let c = Config::parse(good, Path::new("/h/loongd.toml")).expect("parses");
    assert_eq!(
        c.agent.agent.as_ref().map(|a| a.provider.as_str()),
        Some("local")
    );
    assert_eq!(c.agent.providers["local"].base_url, "http://127.0.0.1:9/v1");
    for bad in [
        format!("{good}bogus = 1\n"),
        good.replace("model = \"m\"", "model = \"m\"\nbogus = 1"),
    ] {
        let e = Config::parse(&bad, Path::new("/h/loongd.toml"))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
    let literal = good.replace("model = \"m\"", "model = \"m\"\napi_key = \"sk-123\"");
    let e = Config::parse(&literal, Path::new("/h/loongd.toml"))
        .expect_err("a literal key is refused")
        .to_string();
    assert!(e.contains("secrets set") && !e.contains("sk-123"), "{e}");
}

#[test]
fn defaults_text_parses_to_the_defaults() {
    check(DEFAULT_CONFIG_TEXT, Ok(Config::default()));
    check("", Ok(Config::default()));
}

#[test]
fn pending_approvals_per_token_are_bounded() {
    let mut c = Config::default();
    c.approvals.max_pending_per_token = 3;
    check("[approvals]\nmax_pending_per_token = 3\n", Ok(c));
    for (text, want) in [
        (
            "[approvals]\nmax_pending_per_token = 0\n",
            ":2: 0 is outside 1..=10000 approvals",
        ),
        (
            "[approvals]\nmax_pending_per_token = 10001\n",
            ":2: 10001 is outside 1..=10000 approvals",
        ),
    ] {
        let err = Config::parse(text, Path::new("/h/loongd.toml"))
            .expect_err(text)
            .to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn channel_turns_are_bounded() {
    let mut c = Config::default();
    c.channels.turns_per_minute = 600;
    check("[channels]\nturns_per_minute = 600\n", Ok(c));
    let mut c = Config::default();
    c.channels.max_turns_at_once = 64;
    c.channels.max_turns_at_once_per_channel = 1;
    check(
        "[channels]\nmax_turns_at_once = 64\nmax_turns_at_once_per_channel = 1\n",
        Ok(c),
    );
    let mut c = Config::default();
    c.workers.agent_pool_size = 8;
    check("[workers]\nagent_pool_size = 8\n", Ok(c));
    for (text, want) in [
        (
            "[channels]\nmax_turns_at_once = 0\n",
            ":2: 0 is outside 1..=64 turns",
        ),
        (
            "[channels]\nmax_turns_at_once_per_channel = 65\n",
            ":2: 65 is outside 1..=64 turns",
        ),
        (
            "[workers]\nagent_pool_size = 0\n",
            ":2: 0 is outside 1..=64 workers",
        ),
        (
            "[channels]\nturns_per_minute = 0\n",
            ":2: 0 is outside 1..=60000 turns a minute",
        ),
        (
            "[channels]\nturns_per_minute = 60001\n",
            ":2: 60001 is outside 1..=60000 turns a minute",
        ),
    ] {
        let err = Config::parse(text, Path::new("/h/loongd.toml"))
            .expect_err(text)
            .to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn egress_limits_are_bounded() {
    let mut c = Config::default();
    c.egress.max_connections = 2;
    c.egress.max_bytes = 4096;
    c.egress.max_total_connections = 3;
    c.egress.idle_timeout_ms = 100;
    c.egress.connections_per_second = 1;
    c.egress.connections_burst = 100_000;
    check(
            "[egress]\nmax_connections = 2\nmax_bytes = 4096\nmax_total_connections = 3\nidle_timeout_ms = 100\nconnections_per_second = 1\nconnections_burst = 100000\n",
            Ok(c),
        );
    for (text, want) in [
        (
            "[egress]\nmax_connections = 0\n",
            ":2: 0 is outside 1..=4096 connections",
        ),
        (
            "[egress]\nmax_connections = 4097\n",
            ":2: 4097 is outside 1..=4096 connections",
        ),
        ("[egress]\nmax_bytes = 0\n", ":2: 0 is outside 1..="),
        (
            "[egress]\nmax_total_connections = 65537\n",
            ":2: 65537 is outside 1..=65536 connections",
        ),
        (
            "[egress]\nidle_timeout_ms = 99\n",
            ":2: 99 is outside 100..=86400000 ms",
        ),
        (
            "[egress]\nconnections_per_second = 0\n",
            ":2: 0 is outside 1..=100000 connections per second",
        ),
        (
            "[egress]\nconnections_burst = 100001\n",
            ":2: 100001 is outside 1..=100000 connections",
        ),
        ("[egress]\nresolve = 1\n", "unknown field `resolve`"),
    ] {
        let err = Config::parse(text, Path::new("/h/loongd.toml"))
            .expect_err(text)
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn metrics_listen_is_loopback_or_a_unix_socket() {
    let listen = |l: MetricsListen| {
        let mut c = Config::default();
        c.metrics.listen = Some(l);
        c
    };
    check(
        "[metrics]\nlisten = \"127.0.0.1:9464\"\n",
        Ok(listen(MetricsListen::Tcp(([127, 0, 0, 1], 9464).into()))),
    );
    check(
        "[metrics]\nlisten = \"[::1]:9464\"\n",
        Ok(listen(MetricsListen::Tcp(
            "[::1]:9464".parse().expect("addr"),
        ))),
    );
    check(
        "[metrics]\nlisten = \"unix:/run/loong/metrics.sock\"\n",
        Ok(listen(MetricsListen::Unix(
            "/run/loong/metrics.sock".into(),
        ))),
    );
    for (addr, why) in [
        ("0.0.0.0:9464", "is not a loopback address"),
        ("192.0.2.1:9464", "is not a loopback address"),
        ("[::]:9464", "is not a loopback address"),
        ("localhost:9464", "is neither IP:PORT nor unix:/PATH"),
        ("unix:metrics.sock", "needs an absolute path"),
    ] {
        let text = format!("[metrics]\nlisten = \"{addr}\"\n");
        let err = Config::parse(&text, Path::new("/h/loongd.toml")).expect_err(addr);
        let err = err.to_string();
        assert!(
            err.starts_with("/h/loongd.toml:2: ") && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn values_and_errors() {
    let mut c = Config::default();
    c.ipc.max_frame_bytes = 4096;
    c.control.allowed_group = Some("ops".into());
    check(
        "[control]\nallowed_group = \"ops\"\n[ipc]\nmax_frame_bytes = 4096\n",
        Ok(c),
    );
    check(
            "[ipc]\n\nmax_frame_byts = 4096\n",
            Err("/h/loongd.toml:3: unknown field `max_frame_byts`, expected one of `max_frame_bytes`, `frame_read_timeout_ms`, `handshake_timeout_ms`, `idle_timeout_ms`, `max_in_flight`"),
        );
    check(
        "[ipc]\nmax_frame_bytes = 0\n",
        Err("/h/loongd.toml:2: 0 is outside 1..=16777216 bytes"),
    );
    check(
        "[ipc]\nmax_frame_bytes = 16777217\n",
        Err("/h/loongd.toml:2: 16777217 is outside 1..=16777216 bytes"),
    );
    check(
        "[control]\nmax_clients = -1\n",
        Err("/h/loongd.toml:2: invalid value: integer `-1`, expected u32"),
    );
    check(
        "[ipc]\nidle_timeout_ms = 1\n",
        Err("/h/loongd.toml:2: 1 is outside 10..=86400000 ms"),
    );
    check(
            "bogus = 1\n",
            Err("/h/loongd.toml:1: unknown field `bogus`, expected one of `control`, `ipc`, `sandbox`, `audit`, `policy`, `approvals`, `channels`, `workers`, `kernel_calls`, `builtins`, `browser`, `plugins`, `log`, `metrics`, `egress`, `gateway`, `providers`, `agent`"),
        );
    check(
        "[egress]\nca_bundle = \"/etc/loong/ca.pem\"\n",
        Ok(Config {
            egress: EgressConfig {
                ca_bundle: Some("/etc/loong/ca.pem".into()),
                ..EgressConfig::default()
            },
            ..Config::default()
        }),
    );
    let relative = Config::parse(
        "[egress]\nca_bundle = \"ca.pem\"\n",
        Path::new("/h/loongd.toml"),
    )
    .expect_err("a relative bundle");
    assert!(relative.to_string().contains("ca.pem"), "{relative}");
    let hex = "ab".repeat(32);
    check(
            &format!(
                "[plugins]\nrequire_wasm_pin = true\nprivate_endpoints = [\"wa\"]\n[plugins.wasm_sha256]\necho = \" SHA256:{}\"\nx = \"{hex}\"\n",
                hex.to_uppercase()
            ),
            Ok(Config {
                plugins: PluginsConfig {
                    require_wasm_pin: true,
                    wasm_sha256: [("echo".into(), hex.clone()), ("x".into(), hex.clone())]
                        .into_iter()
                        .collect(),
                    private_endpoints: vec!["wa".into()],
                },
                ..Config::default()
            }),
        );
    check(
            "[plugins.wasm_sha256]\necho = \"sha256:abc\"\n",
            Err("/h/loongd.toml:1: plugins.wasm_sha256.echo: \"sha256:abc\" is not a sha256 digest: write 64 hex digits, optionally prefixed with sha256:"),
        );
    check(
        "[builtins]\nread_roots = [\"relative/dir\"]\n",
        Err("/h/loongd.toml:2: relative/dir: give an absolute path"),
    );
    check(
            "[builtins]\nshell_net = [\"nohost\"]\n",
            Err("/h/loongd.toml:2: network grant `nohost` is not HOST:PORT; write e.g. `api.example.com:443`, `*.example.com:443`, `10.0.0.1:5432` or `[::1]:8080`"),
        );
    check(
            "[builtins]\nshell_net = [\"*.example.com:0\"]\n",
            Err("/h/loongd.toml:2: network grant `*.example.com:0`: `0` is not a port; write a number from 1 to 65535 (without a sign or leading zeros), or `*` for every port"),
        );
    check(
            "[egress]\nresolver = \"10.0.0.53\"\n",
            Err("/h/loongd.toml:2: egress.resolver \"10.0.0.53\" is not IP:PORT; write e.g. \"127.0.0.53:53\" or \"[::1]:53\""),
        );
    check(
        "[egress]\nlookup_timeout_ms = 10\n",
        Err("/h/loongd.toml:2: 10 is outside 100..=60000 ms"),
    );
    check(
        "[workers]\nwasm_pool_size = 0\n",
        Err("/h/loongd.toml:2: 0 is outside 1..=64 workers"),
    );
    check(
        "[audit]\nsync = \"sometimes\"\n",
        Err("/h/loongd.toml:2: `sometimes` is not \"full\" or \"normal\""),
    );
    let mut c = Config::default();
    c.audit.sync = "normal".into();
    assert_eq!(c.audit.durability(), crate::audit::Durability::Normal);
    check("[audit]\nsync = \"normal\"\n", Ok(c));
    let mut c = Config::default();
    c.workers.wasm_pool_size = 4;
    check("[workers]\nwasm_pool_size = 4\n", Ok(c));
    let mut c = Config::default();
    assert!(c.workers.wasm_spare, "a spare WASM worker by default");
    c.workers.wasm_spare = false;
    check("[workers]\nwasm_spare = false\n", Ok(c));
    let mut c = Config::default();
    assert!(c.sandbox.spare, "a sandbox built ahead by default");
    c.sandbox.spare = false;
    check("[sandbox]\nspare = false\n", Ok(c));
    let mut e = Config::default();
    e.egress.resolver = Some("[::1]:5353".parse().expect("addr"));
    e.egress.lookup_timeout_ms = 250;
    e.builtins.shell_net = vec!["*.example.com:*".into()];
    check(
            "[egress]\nresolver = \"[::1]:5353\"\nlookup_timeout_ms = 250\n[builtins]\nshell_net = [\"*.example.com:*\"]\n",
            Ok(e),
        );
    let mut k = Config::default();
    k.kernel_calls.max_depth = 2;
    check("[kernel_calls]\nmax_depth = 2\n", Ok(k));
    check(
        "[kernel_calls]\nmax_depth = 17\n",
        Err("/h/loongd.toml:2: 17 is outside 1..=16 calls"),
    );
    check(
        "[ipc\n",
        Err("/h/loongd.toml:1: invalid table header\nexpected `.`, `]`"),
    );
}

#[test]
fn channel_turns_at_once_are_no_more_than_the_agent_pool_serves_beside_an_ask() {
    let mut c = Config::default();
    assert_eq!(c.channel_turns_at_once(), DEFAULT_CHANNEL_TURNS_AT_ONCE);
    for (pool, at_once, want) in [
        (1, 3, 1),
        (2, 3, 1),
        (3, 3, 2),
        (4, 3, 3),
        (64, 64, 63),
        (8, 2, 2),
    ] {
        c.workers.agent_pool_size = pool;
        c.channels.max_turns_at_once = at_once;
        assert_eq!(
            c.channel_turns_at_once(),
            want,
            "pool {pool}, at once {at_once}"
        );
    }
}

#[test]
fn channel_turns_waiting_for_approvals_leave_a_turn_slot() {
    let mut c = Config::default();
    assert_eq!(c.channel_approvals_waiting(), (1, 2));
    c.channels.max_turns_at_once = 8;
    c.channels.max_turns_at_once_per_channel = 4;
    c.workers.agent_pool_size = 16;
    assert_eq!(c.channel_approvals_waiting(), (3, 7));
    c.workers.agent_pool_size = 1;
    assert_eq!(c.channel_approvals_waiting(), (1, 1));
}
