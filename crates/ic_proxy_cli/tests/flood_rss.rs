//! Memory under a flood of early packets, measured where it matters: the
//! resident memory of a standalone `ic-proxy run` process. A fake peer links
//! as an instance of the map and sends packets for logical connections
//! nobody ever claims, several times the early-packet cache's cap; the
//! proxy's RSS must grow by about the cap, not by the flood. Big packets and
//! one-byte packets (where per-packet bookkeeping, not payload, is the cost)
//! are both tried.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{free_port, run_command, ProxyProcess};
use ic_proxy_core::protocol::{
    encode_packet, ictcp_packet, Dialect, Endpoint, Header, PacketDecoder, PacketType,
};
use ic_proxy_core::PROBE_SESSION_ID;

const DEADLINE: Duration = Duration::from_secs(60);
const D: Dialect = Dialect::C;
/// The early-packet cache's cap in these tests.
const CAP: usize = 8 << 20;
/// What the process may grow by besides the cache: read and write buffers,
/// allocator slack, the runtime. Measured well under this.
const SLACK: usize = 24 << 20;

/// Resident memory of `pid` in bytes (`field` = "VmRSS" or "VmHWM").
fn memory(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("memory field");
    kib * 1024
}

/// The proxy under test (dbid 1) and the peer port it listens on.
struct Proxy {
    process: ProxyProcess,
    port: u16,
}

impl Proxy {
    fn start(dir: &Path) -> Proxy {
        let (port, fake_port) = (free_port(), free_port());
        let map = format!("1:-1:127.0.0.1:{port},3:1:127.0.0.1:{fake_port}");
        let log = dir.join("proxy.log");
        let cap = CAP.to_string();
        let dir_arg = dir.to_str().expect("a UTF-8 path");
        let args = [
            "--addresses",
            &map,
            "--dbid",
            "1",
            "--port",
            "5432",
            "--pid",
            "4242",
        ];
        let more = [
            "--threads",
            "2",
            "--early-cache-size",
            &cap,
            "--socket-dir",
            dir_arg,
        ];
        let cmd = run_command(&log, &[&args[..], &more[..]].concat());
        Proxy {
            process: ProxyProcess::spawn(cmd, log),
            port,
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }
}

/// A fake proxy of dbid 3 (content 1), linked to the proxy under test.
struct Fake {
    s: TcpStream,
    buf: BytesMut,
}

fn header(ptype: PacketType, session_id: i32, command_id: u32, dst_pid: i32) -> Header {
    Header {
        len: 0,
        ptype,
        src: Endpoint {
            content: 1,
            dbid: 3,
            pid: 777,
        },
        dst: Endpoint {
            content: -1,
            dbid: 1,
            pid: dst_pid,
        },
        session_id,
        command_id,
        send_slice: 1,
        recv_slice: 0,
    }
}

impl Fake {
    fn link(p: &mut Proxy) -> Fake {
        let until = Instant::now() + DEADLINE;
        let s = loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", p.port)) {
                break s;
            }
            assert!(
                p.process.child.try_wait().unwrap().is_none(),
                "proxy died:\n{}",
                p.log()
            );
            assert!(Instant::now() < until, "no peer listener:\n{}", p.log());
            thread::sleep(Duration::from_millis(20));
        };
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut f = Fake {
            s,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        encode_packet(&header(PacketType::PeerHello, 0, 0, 0), D, &[], &mut out);
        f.s.write_all(&out).unwrap();
        let ack = f.recv();
        assert_eq!(ack.ptype, PacketType::PeerHelloAck, "{}", p.log());
        f
    }

    fn recv(&mut self) -> Header {
        let dec = PacketDecoder::new(D, 8192);
        loop {
            if let Some(p) = dec.decode(&mut self.buf).expect("a valid packet") {
                return p.header;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).expect("read from the proxy");
            assert!(n > 0, "the proxy closed the link");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits until the proxy has handled everything sent so far: a probe's
    /// echo comes back only after every packet before it was routed.
    fn sync(&mut self) {
        let mut out = BytesMut::new();
        encode_packet(
            &header(PacketType::Data, PROBE_SESSION_ID, 0, 0),
            D,
            b"sync",
            &mut out,
        );
        self.s.write_all(&out).unwrap();
        while self.recv().session_id != PROBE_SESSION_ID {}
    }

    /// After a flood of probes whose echoes nobody read: reads and drops
    /// echoes until the echo of a marker probe comes back, sending the marker
    /// again every 256 echoes (the proxy drops probes while its echoes for
    /// us fill their queue). Once it is back, everything sent before it has
    /// been handled.
    fn drain_until_marker(&mut self) {
        const MARKER: u32 = u32::MAX;
        let mut marker = BytesMut::new();
        encode_packet(
            &header(PacketType::Data, PROBE_SESSION_ID, MARKER, 0),
            D,
            b"mark",
            &mut marker,
        );
        loop {
            self.s.write_all(&marker).unwrap();
            for _ in 0..256 {
                let h = self.recv();
                if h.session_id == PROBE_SESSION_ID && h.command_id == MARKER {
                    return;
                }
            }
        }
    }

    /// Sends `keys` logical connections nobody claims, `per_key` DATA packets
    /// each, payload `size` bytes; in writes of about 1 MB.
    fn flood(&mut self, keys: u32, per_key: u32, size: usize) -> usize {
        let mut payload = BytesMut::new();
        ictcp_packet(&vec![0xA5; size.max(4) - 4], &mut payload);
        payload.truncate(size);
        let mut out = BytesMut::new();
        let mut total = 0;
        for k in 0..keys {
            for _ in 0..per_key {
                // Unique keys: the command id and the receiver's pid differ.
                encode_packet(
                    &header(PacketType::Data, 77, 10_000 + k, 50_000 + k as i32),
                    D,
                    &payload,
                    &mut out,
                );
            }
            if out.len() >= 1 << 20 {
                total += out.len();
                self.s.write_all(&out).unwrap();
                out.clear();
            }
        }
        total += out.len();
        self.s.write_all(&out).unwrap();
        total
    }
}

fn cache_full_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("the early-packet cache is full"))
        .count()
}

/// Floods with `keys` x `per_key` packets of `size` bytes; returns (growth
/// of RSS, bytes flooded).
fn flood_and_measure(keys: u32, per_key: u32, size: usize) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proxy::start(dir.path());
    let mut f = Fake::link(&mut p);
    // Warm up the paths the flood takes, then take the baseline.
    f.flood(16, 2, size);
    f.sync();
    let pid = p.process.child.id();
    let before = memory(pid, "VmRSS");
    let flooded = f.flood(keys, per_key, size);
    f.sync();
    let after = memory(pid, "VmRSS");
    let peak = memory(pid, "VmHWM");
    let log = p.log();
    eprintln!(
        "flood of {flooded} bytes ({keys} keys x {per_key} x {size} B): RSS {} -> {} KiB, peak {} KiB, \
         {} 'cache is full' lines",
        before / 1024,
        after / 1024,
        peak / 1024,
        cache_full_lines(&log)
    );
    assert!(
        cache_full_lines(&log) > 0,
        "the cap never dropped anything:\n{log}"
    );
    assert!(
        p.process.child.try_wait().unwrap().is_none(),
        "proxy died:\n{log}"
    );
    (
        after
            .saturating_sub(before)
            .max(peak.saturating_sub(before)),
        flooded,
    )
}

fn assert_near_the_cap(growth: usize) {
    assert!(
        growth <= CAP + SLACK,
        "RSS grew by {} KiB for a {} KiB cap",
        growth / 1024,
        CAP / 1024
    );
}

#[test]
fn a_flood_of_full_packets_leaves_rss_near_the_cache_cap() {
    // 64 MiB of 8 KiB packets: eight times the cap.
    let (growth, flooded) = flood_and_measure(2048, 4, 8192);
    assert!(flooded >= 8 * CAP);
    assert_near_the_cap(growth);
}

#[test]
fn a_flood_of_one_byte_packets_leaves_rss_near_the_cache_cap() {
    // A million keys of one 1-byte packet: the payloads are nothing, the
    // bookkeeping of each waiting connection is what must be counted.
    let (growth, _) = flood_and_measure(1_000_000, 1, 1);
    assert_near_the_cap(growth);
}

#[test]
fn probes_from_a_peer_that_reads_nothing_leave_rss_flat() {
    // Each probe is echoed back; the fake never reads the echoes, so they
    // can only wait in the proxy. 128 MiB of probes.
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proxy::start(dir.path());
    let mut f = Fake::link(&mut p);
    f.sync();
    let pid = p.process.child.id();
    let before = memory(pid, "VmRSS");
    let mut probe = BytesMut::new();
    for i in 0..128 {
        encode_packet(
            &header(PacketType::Data, PROBE_SESSION_ID, i, 0),
            D,
            &[0x5A; 8000],
            &mut probe,
        );
    }
    let mut sent = 0;
    while sent < 128 << 20 {
        f.s.write_all(&probe).unwrap();
        sent += probe.len();
    }
    // Until everything written has been handled; the peak is in VmHWM.
    f.drain_until_marker();
    let after = memory(pid, "VmRSS").max(memory(pid, "VmHWM"));
    eprintln!(
        "probe flood of {sent} bytes: RSS {} -> {} KiB",
        before / 1024,
        after / 1024
    );
    assert!(
        p.process.child.try_wait().unwrap().is_none(),
        "proxy died:\n{}",
        p.log()
    );
    assert!(
        after.saturating_sub(before) <= SLACK,
        "RSS grew by {} KiB: echoes pile up for a peer that reads nothing",
        after.saturating_sub(before) / 1024
    );
    assert!(
        p.log().contains("probe not echoed"),
        "no drop logged:\n{}",
        p.log()
    );
}
