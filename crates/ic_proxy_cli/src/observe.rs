//! `ic-proxy status` and `ic-proxy ping`: clients of a running proxy's
//! control socket. They find the socket, send one request, and print the
//! answer as aligned text or JSON; they never touch the backend socket or
//! the proxy's state.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::args::{ControlArgs, PingArgs, StatusArgs, DEFAULT_SOCKET_DIR};
use crate::control::{control_path, Request};
use crate::view::Record;
use crate::{EXIT_FAILURE, EXIT_USAGE};

/// Longest wait for the next line of an answer: a status is immediate; a
/// ping sends a line at least as often as a probe ends (3 s at most).
const ANSWER_IDLE: Duration = Duration::from_secs(15);
/// Longest answer line read (a last_error is short; a map entry's host at
/// most 253 characters).
const LINE_MAX: u64 = 64 * 1024;

/// Exit code when no proxy answers.
const EXIT_NO_PROXY: u8 = EXIT_USAGE;

pub fn status(args: StatusArgs) -> ExitCode {
    let records = match locate_and_ask(&args.control, Request::Status) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(proxy) = records.iter().find(|r| r.kind == "proxy") else {
        eprintln!("ic-proxy: the answer has no proxy line");
        return ExitCode::from(EXIT_FAILURE);
    };
    let peers: Vec<&Record> = records.iter().filter(|r| r.kind == "peer").collect();
    let text = if args.control.json {
        let peers: Vec<String> = peers.iter().map(|p| json_object(p)).collect();
        format!(
            "{{\"proxy\":{},\"peers\":[{}]}}\n",
            json_object(proxy),
            peers.join(",")
        )
    } else {
        let now_ms = proxy.get("now_ms").parse().unwrap_or(0);
        format!("{}\n{}", proxy_text(proxy), peer_table(&peers, now_ms))
    };
    print(&text);
    ExitCode::SUCCESS
}

pub fn ping(args: PingArgs) -> ExitCode {
    let records = match locate_and_ask(&args.control, Request::Ping(args.dbid)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut rows: Vec<&Record> = records.iter().filter(|r| r.kind == "ping").collect();
    rows.sort_by_key(|r| r.get("dbid").parse::<u16>().unwrap_or(u16::MAX));
    let text = if args.control.json {
        let rows: Vec<String> = rows.iter().map(|r| json_object(r)).collect();
        format!("[{}]\n", rows.join(","))
    } else if rows.is_empty() {
        eprintln!("ic-proxy: this instance exchanges traffic with no other entry of its map");
        String::new()
    } else {
        let header = ["dbid", "content", "ok", "rtt_ms", "error"];
        let cells = rows
            .iter()
            .map(|r| header.iter().map(|h| r.get(h).to_string()).collect())
            .collect();
        table(&header, &[true, true, false, true], cells)
    };
    print(&text);
    if rows.iter().all(|r| r.get("ok") == "true") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

fn print(text: &str) {
    let mut out = io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The answer's records; Err(exit code) after saying why.
fn locate_and_ask(args: &ControlArgs, request: Request) -> Result<Vec<Record>, ExitCode> {
    let path = locate(args).map_err(|e| {
        eprintln!("ic-proxy: {e}");
        ExitCode::from(EXIT_NO_PROXY)
    })?;
    let records = match ask(&path, request) {
        Ok(r) => r,
        Err(AskError::NoProxy(e)) => {
            eprintln!(
                "ic-proxy: no ic-proxy answers on {}: is it running? ({e}; `ic-proxy run` serves <socket-dir>/.s.PGSQL.ic_proxy.<port>.control)",
                path.display()
            );
            return Err(ExitCode::from(EXIT_NO_PROXY));
        }
        Err(AskError::Broken(e)) => {
            eprintln!("ic-proxy: {}: {e}", path.display());
            return Err(ExitCode::from(EXIT_FAILURE));
        }
    };
    if let Some(e) = records.iter().find(|r| r.kind == "error") {
        eprintln!("ic-proxy: the proxy refused: {}", e.get("message"));
        return Err(ExitCode::from(EXIT_FAILURE));
    }
    Ok(records)
}

/// The control socket the arguments name.
fn locate(args: &ControlArgs) -> Result<PathBuf, String> {
    if let Some(path) = &args.control {
        return Ok(path.clone());
    }
    let dir = args
        .socket_dir
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_SOCKET_DIR));
    let port = match (args.port, &args.data_dir) {
        (Some(port), _) => port,
        (None, Some(data_dir)) => postmaster_port(data_dir)?,
        // clap's group requires --control, --port or --data-dir.
        (None, None) => unreachable!("neither --control, --port nor --data-dir"),
    };
    Ok(control_path(dir, port))
}

/// The port on line 4 of `<data_dir>/postmaster.pid`: what names the
/// control socket of the proxy beside that server.
pub(crate) fn postmaster_port(data_dir: &Path) -> Result<u16, String> {
    let file = data_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "cannot read {}: {e}: is the server running? (or give --port)",
            file.display()
        )
    })?;
    crate::sidecar::parse_pid_file(&text)
        .map(|f| f.port)
        .map_err(|e| format!("{} is garbled: {e}: give --port", file.display()))
}

#[derive(Debug)]
enum AskError {
    /// Nothing listens there.
    NoProxy(io::Error),
    /// Something listens but the answer is unusable.
    Broken(String),
}

fn ask(path: &Path, request: Request) -> Result<Vec<Record>, AskError> {
    let mut stream = UnixStream::connect(path).map_err(AskError::NoProxy)?;
    let broken = |what: &str, e: io::Error| {
        AskError::Broken(
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                format!("{what}: no answer within {ANSWER_IDLE:?}")
            } else {
                format!("{what}: {e}")
            },
        )
    };
    stream
        .set_read_timeout(Some(ANSWER_IDLE))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_IDLE)))
        .map_err(|e| broken("socket", e))?;
    stream
        .write_all(request.line().as_bytes())
        .map_err(|e| broken("sending the request", e))?;
    let mut reader = BufReader::new(stream);
    let mut records = Vec::new();
    loop {
        let mut line = String::new();
        let n = Read::take(&mut reader, LINE_MAX)
            .read_line(&mut line)
            .map_err(|e| broken("reading the answer", e))?;
        if n == 0 || !line.ends_with('\n') {
            return Err(AskError::Broken(
                "the answer was cut short (did the proxy stop?)".into(),
            ));
        }
        let line = line.trim_end_matches('\n');
        if line == "end" {
            return Ok(records);
        }
        records.push(Record::decode(line).map_err(|e| {
            AskError::Broken(format!("not an answer of ic-proxy's control socket: {e}"))
        })?);
    }
}

/// The proxy's own facts, one a line, values aligned.
fn proxy_text(p: &Record) -> String {
    let or_dash = |v: &str| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    let listener = |state: &str, detail: &str| {
        if detail.is_empty() {
            state.to_string()
        } else {
            format!("{state} ({detail})")
        }
    };
    let uptime = p.get("uptime_s").parse::<f64>().unwrap_or(0.0) as u64;
    let limits = match (p.get("fd_soft_limit"), p.get("fd_hard_limit")) {
        ("", "") => "-".to_string(),
        (soft, hard) => format!("{} soft, {} hard", or_dash(soft), or_dash(hard)),
    };
    let tls = match (p.get("tls"), p.get("tls_certificate")) {
        (mode, "") => or_dash(mode),
        (mode, subject) => format!(
            "{mode}; certificate {subject}, expires {}",
            p.get("tls_certificate_expires")
        ),
    };
    let lines = [
        ("running", p.get("running").to_string()),
        ("pid", p.get("pid").to_string()),
        ("dbid", p.get("dbid").to_string()),
        ("content", or_dash(p.get("content"))),
        (
            "peer listener",
            listener(p.get("peer_listener"), p.get("peer_listener_detail")),
        ),
        (
            "backend socket",
            listener(p.get("backend_socket"), p.get("backend_socket_detail")),
        ),
        ("dialect", p.get("dialect").to_string()),
        ("threads", p.get("threads").to_string()),
        ("max packet size", p.get("max_packet_size").to_string()),
        ("uptime", human_duration(uptime)),
        ("map generation", p.get("map_generation").to_string()),
        (
            "logical connections",
            format!(
                "{} open, {} since start",
                p.get("logical_connections"),
                p.get("logical_connections_total")
            ),
        ),
        (
            "early cache",
            format!(
                "{} bytes; {} connections dropped ({} bytes)",
                p.get("early_cache_bytes"),
                p.get("early_dropped_connections"),
                p.get("early_dropped_bytes")
            ),
        ),
        (
            "rejected connections",
            p.get("rejected_connections").to_string(),
        ),
        ("dropped packets", p.get("dropped_packets").to_string()),
        ("flow violations", p.get("flow_violations").to_string()),
        ("auth failures", p.get("auth_failures").to_string()),
        ("socket takeovers", p.get("socket_takeovers").to_string()),
        ("open files limit", limits),
        ("tls", tls),
    ];
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// One row per map entry, as `ic_proxy_status()` shows it; `since` as an
/// age by the proxy's clock (`--json` has the time itself).
fn peer_table(peers: &[&Record], now_ms: u64) -> String {
    let header = [
        "dbid",
        "content",
        "address",
        "port",
        "state",
        "since",
        "bytes_in",
        "bytes_out",
        "packets_in",
        "packets_out",
        "logical_connections",
        "cached_bytes",
        "drops",
        "reconnects",
        "protection",
        "last_error",
    ];
    let numeric = [
        true, true, false, true, false, false, true, true, true, true, true, true, true, true,
        false,
    ];
    let cells = peers
        .iter()
        .map(|p| {
            header
                .iter()
                .map(|h| match *h {
                    "since" => ago(p.get("since_ms").parse().unwrap_or(0), now_ms),
                    h => p.get(h).to_string(),
                })
                .collect()
        })
        .collect();
    table(&header, &numeric, cells)
}

/// Aligned columns: numbers to the right, text to the left; the last
/// column is not padded.
fn table(header: &[&str], numeric: &[bool], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let last = header.len() - 1;
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                s.push_str(cell);
            } else if numeric.get(i).copied().unwrap_or(false) {
                s.push_str(&format!("{cell:>w$}  ", w = widths[i]));
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in &rows {
        // A last_error of several lines stays on its row.
        let row: Vec<String> = row.iter().map(|c| c.replace('\n', " ")).collect();
        out.push_str(&line(&row));
    }
    out
}

/// Values that are text in JSON; the others are numbers or booleans, and
/// null when empty.
const TEXT_FIELDS: &[&str] = &[
    "address",
    "state",
    "peer_listener",
    "peer_listener_detail",
    "backend_socket",
    "backend_socket_detail",
    "dialect",
    "last_error",
    "protection",
    "tls",
    "tls_certificate",
    "tls_certificate_expires",
    "error",
    "message",
];

fn json_object(r: &Record) -> String {
    let fields: Vec<String> = r
        .fields
        .iter()
        .map(|(name, value)| {
            let v = if TEXT_FIELDS.contains(&name.as_str()) {
                json_string(value)
            } else if value.is_empty() {
                "null".to_string()
            } else if value == "true" || value == "false" || value.parse::<f64>().is_ok() {
                value.clone()
            } else {
                json_string(value)
            };
            format!("{}:{v}", json_string(name))
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `5 s`, `1 min 5 s`, `3 h 2 min`, `2 d 1 h`.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

/// How long before `now_ms` the time `ms` was, e.g. `1 min 5 s ago`; ""
/// for 0 (never).
fn ago(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    format!("{} ago", human_duration(now_ms.saturating_sub(ms) / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_naturally() {
        assert_eq!(ago(0, 5000), "");
        assert_eq!(ago(1000, 66_999), "1 min 5 s ago");
        assert_eq!(ago(9000, 5000), "0 s ago", "clocks never run back");
        assert_eq!(human_duration(5), "5 s");
        assert_eq!(human_duration(65), "1 min 5 s");
        assert_eq!(human_duration(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(human_duration(2 * 86400 + 3600), "2 d 1 h");
    }

    #[test]
    fn tables_align_numbers_right_and_text_left() {
        let t = table(
            &["dbid", "state", "error"],
            &[true, false],
            vec![
                vec!["2".into(), "connected".into(), "".into()],
                vec!["10".into(), "down".into(), "a\nb".into()],
            ],
        );
        assert_eq!(
            t,
            "dbid  state      error\n   2  connected\n  10  down       a b\n"
        );
    }

    #[test]
    fn json_types_follow_the_field() {
        let mut r = Record::new("ping");
        r.field("dbid", 2)
            .field("ok", "false")
            .field("rtt_ms", "")
            .field("error", "say \"no\"\n");
        assert_eq!(
            json_object(&r),
            r#"{"dbid":2,"ok":false,"rtt_ms":null,"error":"say \"no\"\n"}"#
        );
    }

    #[test]
    fn the_port_is_line_4_of_postmaster_pid() {
        let dir = tempfile::tempdir().unwrap();
        assert!(postmaster_port(dir.path())
            .unwrap_err()
            .contains("is the server running?"));
        std::fs::write(
            dir.path().join("postmaster.pid"),
            "4242\n/data\n1700000000\n5433\n/tmp\n*\n",
        )
        .unwrap();
        assert_eq!(postmaster_port(dir.path()), Ok(5433));
        std::fs::write(dir.path().join("postmaster.pid"), "4242\n").unwrap();
        assert!(postmaster_port(dir.path())
            .unwrap_err()
            .ends_with("is garbled: it has 1 line(s), and the port is on line 4: give --port"));
    }
}
