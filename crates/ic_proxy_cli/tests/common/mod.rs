//! What the tests of real `ic-proxy` processes share: the binary, free
//! ports, signals, waiting for an exit, and a checked stream between a
//! backend on dbid 1 and one on dbid 2. Each test file uses a part.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

use ic_proxy_client::{ClientOptions, ConnSpec, Endpoint, LogicalConn};
use ic_proxy_tests::{expected_digest, recv_stream, send_stream};

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

/// Bytes of each packet a checked stream sends: a full 8 KB ic-tcp packet
/// less its length field.
pub const PAYLOAD: usize = 8188;
/// Packets of a checked stream of at least 1 MiB.
pub const MEGABYTE_PACKETS: u64 = (1 << 20) / PAYLOAD as u64 + 1;

/// A logical connection from a backend on dbid 1 (content -1) to one on
/// dbid 2 (content 0).
pub fn spec_1_to_2(session_id: i32, command_id: u32) -> ConnSpec {
    ConnSpec {
        session_id,
        command_id,
        send_slice: 1,
        recv_slice: 0,
        local: Endpoint {
            content: -1,
            dbid: 1,
            pid: 101,
        },
        remote: Endpoint {
            content: 0,
            dbid: 2,
            pid: 202,
        },
    }
}

/// Sends `packets` pattern packets over a connected pair and checks that
/// the receiver got exactly them, in order, and end of stream, all within
/// `within`. Err says what went wrong.
pub async fn carry(
    tx: LogicalConn,
    rx: LogicalConn,
    seed: u64,
    packets: u64,
    within: Duration,
) -> Result<(), String> {
    let both = async { tokio::join!(send_stream(tx, seed, packets, PAYLOAD), recv_stream(rx)) };
    let (sent, got) = tokio::time::timeout(within, both)
        .await
        .map_err(|_| format!("the stream did not end within {within:?}"))?;
    let sent = sent.map_err(|e| format!("sender: {e}"))?;
    let (got, n) = got.map_err(|e| format!("receiver: {e}"))?;
    let want = expected_digest(seed, packets, PAYLOAD);
    if sent != want || got != want || n != packets {
        return Err(format!(
            "received {n} packets, {} bytes (digest {:x}); sent {packets} packets, {} bytes (digest {:x})",
            got.bytes(),
            got.value(),
            want.bytes(),
            want.value()
        ));
    }
    Ok(())
}

/// Connects both ends of `spec` (its sender behind `from`, its receiver
/// behind `to`) and carries a checked stream of at least 1 MiB.
pub async fn stream_megabyte(
    from: &Path,
    to: &Path,
    spec: ConnSpec,
    seed: u64,
    within: Duration,
) -> Result<(), String> {
    let opts = ClientOptions::default();
    let (tx, rx) = tokio::join!(
        LogicalConn::connect(from, spec, &opts),
        LogicalConn::connect(to, spec.reversed(), &opts)
    );
    let tx = tx.map_err(|e| format!("sender: {e}"))?;
    let rx = rx.map_err(|e| format!("receiver: {e}"))?;
    carry(tx, rx, seed, MEGABYTE_PACKETS, within).await
}
