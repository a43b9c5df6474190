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
        Some("--serve") => {
            use loong_sandbox::helper::server;
            let mut args = std::env::args_os().skip(2);
            let claims_in = match (args.next(), args.next()) {
                (Some(flag), Some(dir)) if flag == server::CLAIMS_IN_ARG => {
                    Some(std::path::PathBuf::from(dir))
                }
                _ => None,
            };
            server::main(claims_in.as_deref())
        }
        _ => loong_sandbox::helper::main(),
    }
}
