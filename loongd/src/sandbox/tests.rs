use std::{io::Write, os::fd::AsFd, sync::Mutex, time::Duration};

use loong_ipc::spin::SpinWindow;

use super::readable;

const WAIT: Duration = Duration::from_secs(10);

/// A helper gone by the time its run's relay ended (its pidfd readable already: here a
/// pipe with a byte in it, or whose writer is gone) is seen without registering the
/// descriptor with the runtime's reactor: on a runtime without one, where a registration
/// fails, the wait still ends.
#[test]
fn a_descriptor_readable_already_is_seen_without_the_reactor() {
    let no_reactor = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let spin = Mutex::new(SpinWindow::default());
    let (r, mut w) = std::io::pipe().expect("pipe");
    w.write_all(b"x").expect("write");
    no_reactor.block_on(async {
        tokio::time::timeout(WAIT, readable(r.as_fd(), &spin))
            .await
            .expect("a readable descriptor was seen at once");
    });
    let (r, w) = std::io::pipe().expect("pipe");
    drop(w);
    no_reactor.block_on(async {
        tokio::time::timeout(WAIT, readable(r.as_fd(), &spin))
            .await
            .expect("a hung-up descriptor was seen at once");
    });
}

/// The control: a descriptor that turns readable later is waited for (registered with the
/// reactor after the spin window), and the wait ends when it does, not before.
#[test]
fn a_descriptor_that_turns_readable_later_is_waited_for() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spin = Mutex::new(SpinWindow::fixed(Duration::from_millis(1)));
    let (r, mut w) = std::io::pipe().expect("pipe");
    let (told, hear) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        hear.recv().expect("told");
        w.write_all(b"x").expect("write");
    });
    runtime.block_on(async {
        let early =
            tokio::time::timeout(Duration::from_millis(100), readable(r.as_fd(), &spin)).await;
        assert!(
            early.is_err(),
            "the wait ended before the descriptor was readable"
        );
        told.send(()).expect("tell");
        tokio::time::timeout(WAIT, readable(r.as_fd(), &spin))
            .await
            .expect("the wait ended once the descriptor was readable");
    });
    writer.join().expect("writer");
}
