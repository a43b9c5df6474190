//! A plugin set as a whole: plugins loaded side by side, listed and shown by pages, reloads and
//! removals cut short, and the set's bounds (its tools, a discovery's whole time, an install
//! past them).

use std::{fs, path::Path, time::Duration};

use crate::{
    bridges::*,
    support::{is_root, skip, text, wait_until, Home},
    workers::{details, invoke, plugins, records},
};

#[test]
fn plugins_load_side_by_side_and_a_slow_or_failing_server_holds_no_other() {
    if !is_root() {
        return skip(
            "plugins_load_side_by_side_and_a_slow_or_failing_server_holds_no_other",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    // `a-gate` sorts first and answers only once two servers after it have started: loaded
    // one after another, it would wait for them in vain and be refused.
    install_scale_peer(&home, dir.path(), &script, "a-gate", "gate", 2);
    install_scale_peer(&home, dir.path(), &script, "b-fast-1", "mark", 3);
    install_scale_peer(&home, dir.path(), &script, "b-fast-2", "mark", 3);
    install_scale_peer(&home, dir.path(), &script, "c-broken", "exit", 1);
    install_scale_peer(&home, dir.path(), &script, "d-after", "serve", 1);
    home.start();
    let check = |when: &str| {
        let ps = plugins(&home);
        let state = |id: &str| {
            ps.iter()
                .find(|p| p["id"] == id)
                .map(|p| p["state"].as_str().unwrap_or_default().to_string())
        };
        for id in ["a-gate", "b-fast-1", "b-fast-2", "d-after"] {
            assert_eq!(state(id).as_deref(), Some("ready"), "{when}: {id}: {ps:?}");
        }
        assert_eq!(
            state("c-broken").as_deref(),
            Some("failed"),
            "{when}: {ps:?}"
        );
        // The records of one discovery follow the set's order, whatever order the loads
        // finished in: the newest record of each, by sequence number.
        let mut all = records(&home, "plugin.loaded");
        all.extend(records(&home, "plugin.refused"));
        let mut newest: Vec<(u64, String)> = Vec::new();
        for id in ["a-gate", "b-fast-1", "b-fast-2", "c-broken", "d-after"] {
            let seq = all
                .iter()
                .filter(|r| crate::workers::detail(r)["plugin"] == id)
                .filter_map(|r| r["seq"].as_u64())
                .max()
                .unwrap_or_else(|| panic!("{when}: no record of {id}"));
            newest.push((seq, id.to_string()));
        }
        let mut by_seq = newest.clone();
        by_seq.sort();
        assert_eq!(by_seq, newest, "{when}: records in the set's order");
    };
    check("at start");
    // A reload loads them side by side again.
    for f in fs::read_dir(dir.path()).expect("dir").flatten() {
        if f.file_name().to_string_lossy().starts_with("started-") {
            fs::remove_file(f.path()).expect("remove mark");
        }
    }
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    check("after a reload");
    let (code, _, err) = invoke(&home, &["d-after/tool_0", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_list_page_names_a_plugins_first_tools_and_their_count_and_show_names_all() {
    if !is_root() {
        return skip(
            "a_list_page_names_a_plugins_first_tools_and_their_count_and_show_names_all",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    install_scale_peer(&home, dir.path(), &script, "many", "serve", 40);
    // Control: a server of few tools is listed whole.
    install_scale_peer(&home, dir.path(), &script, "few", "serve", 3);
    home.start();
    let ps = plugins(&home);
    let many = ps.iter().find(|p| p["id"] == "many").expect("listed");
    assert_eq!(many["tool_count"], 40, "{many}");
    let listed: Vec<&str> = many["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(listed.len(), 16, "{many}");
    assert_eq!(listed[0], "many/tool_0");
    let few = ps.iter().find(|p| p["id"] == "few").expect("listed");
    assert_eq!(few["tool_count"], 3, "{few}");
    assert_eq!(few["tools"].as_array().map(Vec::len), Some(3), "{few}");
    // The text list says how many more there are and where to see them.
    let out = home.ctl(&["plugins", "list"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("… and 24 more (`loongctl plugins show many`)"),
        "{shown}"
    );
    assert!(
        !shown.contains("more (`loongctl plugins show few`)"),
        "{shown}"
    );
    // `plugins show` names every tool, with its schema.
    let out = home.ctl(&["plugins", "show", "many", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let all = v[0]["tools"].as_array().expect("tools");
    assert_eq!(all.len(), 40, "{v}");
    assert_eq!(all[39], "many/tool_39");
    let schemas = v[0]["input_schemas"].as_array().expect("schemas");
    assert_eq!(schemas.len(), 40, "{v}");
    assert!(
        schemas[39].as_str().unwrap_or_default().contains("\"n\""),
        "{v}"
    );
    let out = home.ctl(&["plugins", "show", "no-such-plugin"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no plugin no-such-plugin"),
        "{}",
        text(&out.stderr)
    );
}

/// How many processes run `script` as the server `id`.
fn servers_running(script: &Path, id: &str) -> usize {
    let needle = format!("{}\0mark\0", script.display());
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains(&needle) && c.contains(&format!("\0{id}\0"))
            })
        })
        .count()
}

#[test]
fn a_reload_that_ends_before_its_loads_leaves_no_server_running() {
    use loong_ipc::{Call, ControlRequest, ControlResponse, ErrorKind, Reply};
    if !is_root() {
        return skip(
            "a_reload_that_ends_before_its_loads_leaves_no_server_running",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    install_scale_peer(&home, dir.path(), &script, "a-mark", "mark", 1);
    install_scale_peer(&home, dir.path(), &script, "b-slow", "slow", 1);
    home.start();
    // Control: the set in place runs one server of each.
    assert!(
        wait_until(Duration::from_secs(10), || servers_running(
            &script, "a-mark"
        ) == 1),
        "one a-mark server at start"
    );
    // A reload whose deadline passes while `b-slow` still loads: its handler is dropped and
    // the set in place stays. Neither what it loaded (`a-mark`) nor what it was loading may
    // go on running outside every set.
    let mut c = crate::support::Raw::connect(&home.socket());
    c.handshake();
    c.send(&Call::Request {
        id: 1,
        deadline_ms: 1500,
        body: ControlRequest::PluginReload,
    })
    .expect("send");
    match c.recv::<Reply<ControlResponse>>() {
        Some(Reply::Response {
            id: 1,
            result: Err(e),
        }) => assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e:?}"),
        other => panic!("expected the reload past its deadline, got {other:?}"),
    }
    // Past the slow server's answer, and then some: what the dropped reload started is gone.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        wait_until(Duration::from_secs(10), || servers_running(
            &script, "a-mark"
        ) == 1),
        "a-mark servers: {} (one is the set's)",
        servers_running(&script, "a-mark")
    );
    // The set in place still serves, and a reload after it loads as before.
    let (code, _, err) = invoke(&home, &["a-mark/tool_0", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(Duration::from_secs(10), || servers_running(
            &script, "a-mark"
        ) == 1),
        "one a-mark server after a reload: {}",
        servers_running(&script, "a-mark")
    );
}

#[test]
fn a_removal_whose_request_ends_during_its_reload_still_takes_the_plugin_away() {
    use loong_ipc::{Call, ControlRequest, ControlResponse, ErrorKind, Reply};
    if !is_root() {
        return skip(
            "a_removal_whose_request_ends_during_its_reload_still_takes_the_plugin_away",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    // `a-mark` is installed (a package with a lock entry), `b-slow` lies in the directory.
    install_scale_peer(&home, dir.path(), &script, "a-mark", "mark", 1);
    let package = shared_dir("lpk");
    let staged = package.path().join("a-mark");
    fs::rename(home.path().join("plugins/a-mark"), &staged).expect("move the package");
    install_scale_peer(&home, dir.path(), &script, "b-slow", "slow", 1);
    home.start();
    let out = home.ctl(&["plugins", "install", &staged.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    if plugins(&home)
        .iter()
        .any(|p| p["id"] == "a-mark" && p["state"] == "disabled")
    {
        let out = home.ctl(&["plugins", "enable", "a-mark"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let (code, _, err) = invoke(&home, &["a-mark/tool_0", "--input", "{}"]);
    assert_eq!(code, 0, "control: a-mark serves before its removal: {err}");
    // The removal's reload waits for `b-slow` past the request's deadline: the package and
    // its lock entry are gone by then, so the set must lose it too, answered or not.
    let mut c = crate::support::Raw::connect(&home.socket());
    c.handshake();
    c.send(&Call::Request {
        id: 1,
        deadline_ms: 1500,
        body: ControlRequest::PluginRemove {
            id: "a-mark".into(),
        },
    })
    .expect("send");
    match c.recv::<Reply<ControlResponse>>() {
        Some(Reply::Response {
            id: 1,
            result: Err(e),
        }) => assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e:?}"),
        other => panic!("expected the removal past its deadline, got {other:?}"),
    }
    let gone = wait_until(Duration::from_secs(20), || {
        !plugins(&home).iter().any(|p| p["id"] == "a-mark")
    });
    assert!(gone, "a-mark is still in the set: {:?}", plugins(&home));
    let (code, _, _) = invoke(&home, &["a-mark/tool_0", "--input", "{}"]);
    assert_ne!(code, 0, "a removed plugin still serves");
    assert!(
        plugins(&home)
            .iter()
            .any(|p| p["id"] == "b-slow" && p["state"] == "ready"),
        "{:?}",
        plugins(&home)
    );
}

#[test]
fn plugins_show_past_the_frame_limit_is_a_clear_refusal_and_the_connection_serves_on() {
    if !is_root() {
        return skip(
            "plugins_show_past_the_frame_limit_is_a_clear_refusal_and_the_connection_serves_on",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::with_config("[ipc]\nmax_frame_bytes = 16384\n");
    crate::kernel_calls::pack(&home);
    let (dir, script) = scale_peer();
    // 250 tools with their schemas: over 16 KiB; a page of the list carries 16 names.
    install_scale_peer(&home, dir.path(), &script, "many", "serve", 250);
    install_scale_peer(&home, dir.path(), &script, "few", "serve", 3);
    home.start();
    let ps = plugins(&home);
    let many = ps.iter().find(|p| p["id"] == "many").expect("listed");
    assert_eq!(many["tool_count"], 250, "{many}");
    // Control: a plugin whose answer fits is shown whole.
    let out = home.ctl(&["plugins", "show", "few", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = home.ctl(&["plugins", "show", "many", "--json"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("many") && err.contains("frame limit of 16384 bytes"),
        "{err}"
    );
    // The daemon still serves.
    let out = home.ctl(&["plugins", "show", "few"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `mcp serve` offers the plugins that fit and leaves out the one that does not.
    let (file, _) = crate::mcp_serve::token_file(
        &home,
        &["tool.invoke:few/tool_0", "tool.invoke:many/tool_0"],
        "tok",
    );
    let offered = crate::mcp_serve::listed(&home, &file);
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert!(offered[0].contains("few"), "{offered:?}");
}

/// The state of each plugin of `ids` in `plugins list`.
fn states(home: &Home, ids: &[&str]) -> Vec<String> {
    let ps = plugins(home);
    ids.iter()
        .map(|id| {
            ps.iter()
                .find(|p| p["id"] == *id)
                .and_then(|p| p["state"].as_str())
                .unwrap_or("absent")
                .to_string()
        })
        .collect()
}

/// A plugin set past its bound on tools (`MAX_SET_TOOLS`, made small for the test) keeps the
/// plugins that fit, in id order, and refuses the rest with a record naming the plugin and
/// the bound (its program stopped); a smaller plugin after the refused one still fits; a
/// deferred one counts as the most tools a plugin may list (the control: under the default
/// bound, every plugin loads).
#[test]
fn a_plugin_set_past_its_tool_bound_loads_what_fits_in_id_order_and_refuses_the_rest() {
    const TEST: &str =
        "a_plugin_set_past_its_tool_bound_loads_what_fits_in_id_order_and_refuses_the_rest";
    if !is_root() {
        return skip(TEST, "sandboxed stdio workers need root");
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    for (id, tools) in [
        ("t-a", 100),
        ("t-b", 100),
        ("t-c", 100),
        ("t-d", 1),
        ("t-e", 1),
    ] {
        install_scale_peer(&home, dir.path(), &script, id, "serve", tools);
    }
    // t-e is deferred: its tools are unknown until its first call.
    let manifest = home.path().join("plugins/t-e/loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&manifest).expect("manifest")).expect("json");
    m["defer_loading"] = true.into();
    fs::write(&manifest, m.to_string()).expect("manifest");
    // The built-ins (a few tools) and t-a and t-b fit in 260; t-c does not; t-d does; t-e,
    // counted at the most a plugin may list (256), does not.
    home.start_env(&[("LOONG_TEST_MAX_SET_TOOLS", "260")]);
    let ids = ["t-a", "t-b", "t-c", "t-d", "t-e"];
    assert_eq!(
        states(&home, &ids),
        ["ready", "ready", "failed", "ready", "failed"],
        "{}",
        home.log()
    );
    let refused = details(&home, "plugin.refused");
    let why = refused
        .iter()
        .find(|d| d["plugin"] == "t-c")
        .and_then(|d| d["reason"].as_str())
        .unwrap_or_else(|| panic!("no refusal of t-c: {refused:?}"));
    assert!(
        why.contains("t-c") && why.contains("260") && why.contains("MAX_SET_TOOLS"),
        "{why}"
    );
    assert!(
        refused
            .iter()
            .all(|d| d["plugin"] != "t-a" && d["plugin"] != "t-d"),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|d| d["plugin"] == "t-e"
            && d["reason"].as_str().is_some_and(|r| r.contains("deferred"))),
        "{refused:?}"
    );
    assert!(home.log().contains("t-c"), "logged: {}", home.log());
    // The refused plugin's program is stopped: no process of it is left.
    let marker = format!("{} t-c ", dir.path().display());
    assert!(
        wait_until(Duration::from_secs(20), || !running_with(&marker)),
        "t-c's server still runs"
    );
    // The control: under the default bound, every plugin loads.
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    home.start();
    let got = states(&home, &ids);
    assert!(
        got.iter().all(|s| s != "failed" && s != "absent"),
        "{got:?}\n{}",
        home.log()
    );
}

/// Whether some process's command line holds `marker` (its arguments joined by spaces).
fn running_with(marker: &str) -> bool {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let line = String::from_utf8_lossy(&c).replace('\0', " ");
                    line.contains(marker)
                })
            })
        })
        .unwrap_or(false)
}

/// A discovery whose loads all stall answers within its whole bound (`MAX_DISCOVERY_TIME`,
/// made 8 s for the test: room for the control's load on a machine busy with the other
/// tests, where 3 s once cut it too) rather than each stalled load's own deadline (30 s) over eight
/// lanes, which held the reload over a minute: the stalled loads are refused naming the
/// bound, and their programs stopped; the control: a server that answers loads in the same
/// discovery.
#[test]
fn a_discovery_whose_loads_stall_answers_within_its_whole_bound() {
    const TEST: &str = "a_discovery_whose_loads_stall_answers_within_its_whole_bound";
    if !is_root() {
        return skip(TEST, "sandboxed stdio workers need root");
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    install_scale_peer(&home, dir.path(), &script, "a-ok", "serve", 1);
    let stalled: Vec<String> = (0..10).map(|n| format!("s-{n:02}")).collect();
    for id in &stalled {
        install_scale_peer(&home, dir.path(), &script, id, "stall", 1);
    }
    let started = std::time::Instant::now();
    home.start_env(&[("LOONG_TEST_DISCOVERY_MS", "8000")]);
    let start = started.elapsed();
    let started = std::time::Instant::now();
    let out = home.ctl(&["plugins", "reload"]);
    let reload = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Each stalled load alone takes 30 s; ten over eight lanes took 60 s and more.
    assert!(
        start < Duration::from_secs(25) && reload < Duration::from_secs(25),
        "start {start:?}, reload {reload:?}"
    );
    let mut ids = vec!["a-ok"];
    ids.extend(stalled.iter().map(String::as_str));
    let got = states(&home, &ids);
    assert_eq!(got[0], "ready", "{got:?}\n{}", home.log());
    assert!(got[1..].iter().all(|s| s == "failed"), "{got:?}");
    let refused = details(&home, "plugin.refused");
    for id in &stalled {
        assert!(
            refused.iter().any(|d| d["plugin"] == id.as_str()
                && d["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("MAX_DISCOVERY_TIME"))),
            "{id}: {refused:?}"
        );
    }
    let marker = format!("{} s-", dir.path().display());
    assert!(
        wait_until(Duration::from_secs(20), || !running_with(&marker)),
        "a stalled server still runs"
    );
}

/// An install or an upgrade counts the set it would make against `MAX_SET_TOOLS` (here the
/// debug build's override, one tool more than the set holds at start): past it the install
/// is refused naming the bound, the set in place kept, rather than switched in for the next
/// reload to cut in id order. The controls: an install that fits is taken, and an upgrade of
/// it (the same count) too.
#[test]
fn an_install_past_the_sets_tool_bound_is_refused_and_the_set_in_place_kept() {
    use crate::supply_chain::{ctl_ok, example_module, wasm_package};
    const TEST: &str = "an_install_past_the_sets_tool_bound_is_refused_and_the_set_in_place_kept";
    if !is_root() {
        return skip(TEST, "sandboxed workers need root");
    }
    let home = Home::new();
    home.start();
    let held = |home: &Home| -> u64 {
        plugins(home)
            .iter()
            .filter(|p| p["state"] == "ready")
            .map(|p| p["tool_count"].as_u64().unwrap_or(0).max(1))
            .sum()
    };
    let at_start = held(&home);
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bound = (at_start + 1).to_string();
    home.start_env(&[("LOONG_TEST_MAX_SET_TOOLS", &bound)]);
    assert_eq!(held(&home), at_start, "{}", home.log());
    let work = tempfile::Builder::new()
        .prefix("lsb")
        .tempdir_in("/tmp")
        .expect("work");
    let (one, two) = (work.path().join("one"), work.path().join("two"));
    wasm_package(&one, "one", "1", &example_module("echo"), None);
    wasm_package(&two, "two", "1", &example_module("echo"), None);
    // The control: one more tool fits.
    ctl_ok(&home, &["plugins", "install", &one.display().to_string()]);
    assert_eq!(held(&home), at_start + 1);
    // Past the bound: refused, naming it; the set keeps what it held.
    let out = home.ctl(&["plugins", "install", &two.display().to_string()]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "installed past the bound");
    assert!(
        err.contains("two") && err.contains("MAX_SET_TOOLS") && err.contains(&bound),
        "{err}"
    );
    assert!(plugins(&home).iter().all(|p| p["id"] != "two"));
    assert_eq!(held(&home), at_start + 1);
    assert!(!home.path().join("plugins/two").exists());
    // An upgrade replaces its plugin's tools: it fits.
    let one2 = work.path().join("one-2");
    wasm_package(&one2, "one", "2", &example_module("echo"), None);
    ctl_ok(&home, &["plugins", "install", &one2.display().to_string()]);
    assert!(plugins(&home)
        .iter()
        .any(|p| p["id"] == "one" && p["version"] == "2" && p["state"] == "ready"));
}
