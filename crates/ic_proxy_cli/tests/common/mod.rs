//! What the tests of real `ic-proxy` processes share: the binary, free
//! ports, signals and waiting for an exit. Each test file uses a part.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ic-proxy");

/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Runs `ic-proxy ARGS` to its end.
pub fn ic_proxy(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run ic-proxy")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A port nobody listens on right now: bind port 0 and let it go.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", child.id());
}

/// Waits for `child` to exit; kills it and fails after `within`.
pub fn wait_exit(child: &mut Child, what: &str, within: Duration) -> ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {within:?}");
        }
        thread::sleep(POLL);
    }
}
