//! One decision through the pipeline, in memory: token grants → pack grants → denylist →
//! extensions. Goal: at most 2 µs median. The file-root extension canonicalises paths (real
//! syscalls), so a file-system decision is measured separately.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use loong_profiles::pack::{parse_denylist, Capability, Grant, Pack};
use loongd::authority::{
    decide::{decide, FileRoots, Request, ShellRules},
    shell::CommandLine,
    Token,
};

fn bench(c: &mut Criterion) {
    let grants: Vec<Grant> = [
        "fs.read:/usr/share",
        "process.exec:sh",
        "process.exec:grep",
        "process.exec:cat",
        "net.egress:*.example.com:443",
        "tool.invoke:echo",
    ]
    .iter()
    .map(|g| Grant::parse(g).expect("grant"))
    .collect();
    let pack = Pack {
        id: "p".into(),
        domain: "d".into(),
        version: "1".into(),
        summary: String::new(),
        grants: grants.clone(),
        connectors: Vec::new(),
        approval: "never".into(),
    };
    let token = Token {
        id: "t".into(),
        pack: "p".into(),
        agent: "a".into(),
        grants,
        issued_ms: 0,
        expires_ms: i64::MAX,
        generation: 0,
        revoked_ms: None,
    };
    let deny = parse_denylist(loong_profiles::DENYLIST, "denylist.toml").expect("denylist");
    let argv: Vec<String> = ["sh", "-c", "cat /usr/share/x | grep y"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut g = c.benchmark_group("decision");
    g.bench_function("net_egress", |b| {
        let req = Request {
            token: Some(&token),
            cap: Capability::NetEgress,
            target: Some("api.example.com:443"),
            command: None,
            resolved: None,
        };
        b.iter(|| {
            black_box(decide(
                black_box(&req),
                &pack,
                &deny,
                &[&FileRoots, &ShellRules],
                None,
            ))
        })
    });
    g.bench_function("process_exec_shell_rules", |b| {
        let req = Request {
            token: Some(&token),
            cap: Capability::ProcessExec,
            target: Some("sh"),
            command: Some(CommandLine::Argv(&argv)),
            resolved: None,
        };
        b.iter(|| {
            black_box(decide(
                black_box(&req),
                &pack,
                &deny,
                &[&FileRoots, &ShellRules],
                None,
            ))
        })
    });
    g.bench_function("fs_read_canonicalised", |b| {
        let req = Request {
            token: Some(&token),
            cap: Capability::FsRead,
            target: Some("/usr/share/doc"),
            command: None,
            resolved: None,
        };
        b.iter(|| {
            black_box(decide(
                black_box(&req),
                &pack,
                &deny,
                &[&FileRoots, &ShellRules],
                None,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
