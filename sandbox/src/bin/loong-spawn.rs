//! `loong-spawn`: the single-threaded spawn helper. loongd starts one per sandbox with the
//! plan on fd 3 and a report pipe on fd 4 (see `loong_sandbox::helper`); `--serve` is the
//! spawn server loongd keeps running (`loong_sandbox::helper::server`); `--probe` tests which
//! namespaces this host can create; `--idmap [PATH]` runs newuidmap/newgidmap for a rootless
//! loongd under `no_new_privs` (`loong_sandbox::helper::idmap`).

fn main() {
    match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some("--probe") => loong_sandbox::host::probe_namespaces_main(),
        Some("--idmap") => {
            let path = std::env::args_os().nth(2).map(std::path::PathBuf::from);
            loong_sandbox::helper::idmap::main(path.as_deref())
        }
        Some("--serve") => loong_sandbox::helper::server::main(),
        _ => loong_sandbox::helper::main(),
    }
}
