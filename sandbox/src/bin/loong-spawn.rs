//! `loong-spawn`: the single-threaded spawn helper. loongd starts one per sandbox with the
//! plan on fd 3 and a report pipe on fd 4 (see `loong_sandbox::helper`); `--probe` tests
//! which namespaces this host can create.

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "--probe") {
        loong_sandbox::host::probe_namespaces_main()
    }
    loong_sandbox::helper::main()
}
