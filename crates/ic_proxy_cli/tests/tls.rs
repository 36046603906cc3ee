//! `ic-proxy run` with TLS between two real processes: the flags, a checked
//! megabyte over a TLS link, and files it cannot use refused at start.

mod common;

use std::time::Duration;

use common::{
    assert_run_refused, free_port, http_get, ic_proxy, metrics_addr, sample, spec_1_to_2,
    stream_megabyte, text, ProxyProcess,
};
use ic_proxy_core::tls::cert_info::format_utc;
use ic_proxy_core::tls::{TlsFiles, TlsMode, TlsVerify};
use ic_proxy_tests::certs::{policy, Flaw, TestCa};

fn tls_flags(files: &TlsFiles) -> Vec<String> {
    let path = |p: &std::path::Path| p.display().to_string();
    vec![
        "--tls".into(),
        "require".into(),
        "--tls-cert-file".into(),
        path(&files.cert),
        "--tls-key-file".into(),
        path(&files.key),
        "--tls-ca-file".into(),
        path(&files.ca),
    ]
}

#[test]
fn two_processes_with_tls_carry_a_checked_megabyte() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cli");
    let files = ca.issue("proxy", "127.0.0.1", Flaw::None);
    let map = format!(
        "1:-1:127.0.0.1:{},2:0:127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let flags = tls_flags(&files);
    let args: Vec<&str> = ["--addresses", map.as_str()]
        .into_iter()
        .chain(flags.iter().map(String::as_str))
        .collect();
    let with_metrics: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--metrics-listen", "127.0.0.1:0"])
        .collect();
    let mut p1 = ProxyProcess::start(dir.path(), 1, &with_metrics);
    let mut p2 = ProxyProcess::start(dir.path(), 2, &args);
    for p in [&mut p1, &mut p2] {
        let log = p.wait_for_log("connected (TLS1.3 TLS13_");
        assert!(log.contains("TLS on peer links: require"), "{log}");
    }

    // Its own certificate, as `ic-proxy status` and the metrics show it.
    let own = policy(TlsMode::Require, TlsVerify::Full, &files)
        .material
        .expect("the files load")
        .identity
        .clone();
    assert_eq!(own.subject, "CN=ic-proxy proxy");
    let control = p1.names.control.display().to_string();
    let out = ic_proxy(&["status", "--json", "--control", &control]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    let expected = format!(
        "\"tls\":\"require\",\"tls_certificate\":\"CN=ic-proxy proxy\",\"tls_certificate_expires\":\"{}\"",
        format_utc(own.not_after)
    );
    assert!(json.contains(&expected), "{expected} not in {json}");
    let out = ic_proxy(&["status", "--control", &control]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!(
            "require; certificate CN=ic-proxy proxy, expires {}",
            format_utc(own.not_after)
        )),
        "{shown}"
    );
    let addr = metrics_addr(&mut p1);
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        sample(&body, "ic_proxy_tls_certificate_expiry_timestamp_seconds"),
        own.not_after as f64
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(stream_megabyte(
        p1.socket(),
        p2.socket(),
        spec_1_to_2(5, 1),
        1,
        Duration::from_secs(60),
    ))
    .expect("a megabyte over TLS");
    p1.stop_with(libc::SIGTERM);
    p2.stop_with(libc::SIGTERM);
}

#[test]
fn tls_files_that_cannot_be_used_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "bad");
    let files = ca.issue("proxy", "127.0.0.1", Flaw::None);
    let other = TestCa::new(dir.path(), "other").issue("stranger", "127.0.0.1", Flaw::None);
    // `ic-proxy run` with `tls`; exit 2 and a message with `why`.
    let refused = |tls: &[String], why: &str| {
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        assert_run_refused(dir.path(), &tls, why);
    };
    // TLS without its files.
    refused(&["--tls".into(), "on".into()], "--tls-cert-file");
    // A certificate from another CA than the one given.
    let foreign = TlsFiles {
        ca: files.ca.clone(),
        ..other.clone()
    };
    refused(&tls_flags(&foreign), "unknown CA");
    // A key that is not the certificate's.
    let mismatched = TlsFiles {
        key: other.key.clone(),
        ..files.clone()
    };
    refused(&tls_flags(&mismatched), "certificate and key");
}
