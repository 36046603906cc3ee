//! The command line of `ic-proxy`: every subcommand, option and value parser.
//! Parsing only: nothing here opens a socket or reads a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use ic_proxy_client::{socket_path, ClientOptions, ConnSpec, Endpoint};
use ic_proxy_core::protocol::{
    Dialect, DEFAULT_PACKET_SIZE, MAX_PACKET_SIZE_LIMIT, MIN_PACKET_SIZE,
};
use ic_proxy_core::tls::{TlsFiles, TlsMode, TlsVerify};

/// Where Cloudberry backends look for their proxy's socket.
pub const DEFAULT_SOCKET_DIR: &str = "/tmp";

/// Bytes of an ic-tcp packet's length field.
pub const ICTCP_LEN_FIELD: usize = 4;

#[derive(Debug, Parser)]
#[command(
    name = "ic-proxy",
    version,
    about = "Cloudberry's interconnect proxy outside PostgreSQL, with backend-side test clients"
)]
pub struct Cli {
    /// Least severe messages logged to stderr [default: info for run, warn otherwise]
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "LEVEL",
        display_order = 100
    )]
    pub log_level: Option<LogLevel>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one proxy until SIGTERM or SIGINT; SIGHUP re-reads --addresses-file
    Run(RunArgs),
    /// Send stdin over one logical connection as a sending backend would
    Send(ConnArgs),
    /// Write what one logical connection receives to stdout
    Recv(RecvArgs),
    /// Validate an address map
    Check(CheckArgs),
    /// Show a running proxy: itself and one row per map entry (what
    /// ic_proxy_info() and ic_proxy_status() show), over its control socket
    Status(StatusArgs),
    /// Have a running proxy probe its peers through the mesh, as
    /// ic_proxy_ping() does
    Ping(PingArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }
}

/// Header dialect and packet size: both ends of the socket must agree.
#[derive(Debug, Args)]
pub struct WireArgs {
    /// Header dialect: c (36 bytes with magic, current Cloudberry) or b (32 bytes)
    #[arg(long, default_value = "c", value_name = "c|b", value_parser = parse_dialect)]
    pub dialect: Dialect,
    /// Largest ic-tcp packet, length field included (gp_max_packet_size, 512..=65471)
    #[arg(long, default_value_t = DEFAULT_PACKET_SIZE, value_name = "N", value_parser = parse_packet_size)]
    pub max_packet_size: usize,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("map").required(true).args(["addresses", "addresses_file"])))]
pub struct RunArgs {
    /// The address map, dbid:content:host:port[,...]
    #[arg(long, value_name = "MAP")]
    pub addresses: Option<String>,
    /// A file holding the address map; SIGHUP re-reads it
    #[arg(long, value_name = "FILE")]
    pub addresses_file: Option<PathBuf>,
    /// This instance's dbid; its peer address is its entry in the map.
    /// With --data-dir: gp_dbid of DIR/internal.auto.conf when not given
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..),
        required_unless_present = "data_dir"
    )]
    pub dbid: Option<u16>,
    /// The postmaster port in the socket name
    #[arg(
        long,
        value_name = "P",
        required_unless_present = "data_dir",
        conflicts_with = "data_dir"
    )]
    pub port: Option<u16>,
    /// The postmaster pid in the socket name
    #[arg(
        long,
        value_name = "PID",
        required_unless_present = "data_dir",
        conflicts_with = "data_dir"
    )]
    pub pid: Option<u32>,
    /// Sidecar: follow the server in this data directory. Port and
    /// postmaster pid come from its postmaster.pid, read every 500 ms: the
    /// socket follows restarts, and none is served while the server is down
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of the backend socket .s.PGSQL.ic_proxy.<port>.<pid>
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SOCKET_DIR)]
    pub socket_dir: PathBuf,
    #[command(flatten)]
    pub wire: WireArgs,
    /// Runtime worker threads
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Bytes of packets that may wait for a backend not yet connected [default: 64 MiB]
    #[arg(long, value_name = "BYTES")]
    pub early_cache_size: Option<usize>,
    /// Bytes of DATA all logical connections to one peer may queue here
    /// while its link is busy; past it their backends wait [default: 16 MiB]
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(65536..))]
    pub peer_queue_size: Option<u32>,
    /// DATA_ACK flow control: a logical connection's sender pauses at this
    /// many unacknowledged DATA packets (ic_proxy.flow_pause_threshold)
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub flow_pause_threshold: u32,
    /// ... and resumes below this many (ic_proxy.flow_resume_threshold)
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub flow_resume_threshold: u32,
    /// The receiver acknowledges every this many DATA packets
    /// (ic_proxy.flow_ack_interval); peers may use other values
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub flow_ack_interval: u32,
    /// File with the secret every peer must prove it holds (HMAC-SHA256
    /// challenge-response); read at start. Without it peers are not
    /// authenticated, as with the C proxy
    #[arg(long, value_name = "FILE")]
    pub peer_auth_secret_file: Option<PathBuf>,
    /// Serve the status figures in the Prometheus text format at
    /// http://ADDR/metrics (e.g. 127.0.0.1:9187); off by default
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Take the backend socket's path over from another live process (the
    /// built-in proxy of Cloudberry/Greenplum binds it at every start), at
    /// start and within 2 s whenever it is taken again. Without it a live
    /// socket is left alone
    #[arg(long)]
    pub take_over: bool,
    /// TLS 1.3 on links between proxies: off (C proxies can join), on
    /// (offered; plaintext with peers without it) or require
    #[arg(long, value_name = "MODE", default_value = "off", value_parser = parse_tls_mode)]
    pub tls: TlsMode,
    /// This proxy's certificate (PEM, leaf first); re-read on SIGHUP
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// The CA that signs every proxy's certificate (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// What a peer's certificate must pass: full (the CA and a name
    /// matching its map entry's host) or ca
    #[arg(long, value_name = "WHAT", default_value = "full", value_parser = parse_tls_verify)]
    pub tls_verify: TlsVerify,
}

impl RunArgs {
    /// The TLS files, when all three are given.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            ca: self.tls_ca_file.clone()?,
        })
    }
}

fn parse_tls_mode(s: &str) -> Result<TlsMode, String> {
    TlsMode::parse(s).ok_or_else(|| format!("\"{s}\" is not a TLS mode: give off, on or require"))
}

fn parse_tls_verify(s: &str) -> Result<TlsVerify, String> {
    TlsVerify::parse(s).ok_or_else(|| format!("\"{s}\" is not a verification: give full or ca"))
}

/// One logical connection, as the backend at this end knows it.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("where").required(true).args(["socket", "port"])))]
pub struct ConnArgs {
    /// The proxy's backend socket
    #[arg(long, value_name = "PATH", conflicts_with_all = ["socket_dir", "port", "pid"])]
    pub socket: Option<PathBuf>,
    /// With --port and --pid: the socket's directory [default: /tmp]
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
    /// With --pid: the postmaster port in the socket name
    #[arg(long, value_name = "P", requires = "pid")]
    pub port: Option<u16>,
    /// With --port: the postmaster pid in the socket name
    #[arg(long, value_name = "PID", requires = "port")]
    pub pid: Option<u32>,
    #[command(flatten)]
    pub wire: WireArgs,
    /// gp_session_id
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub session: i32,
    /// gp_command_count
    #[arg(long, value_name = "N")]
    pub command: u32,
    /// Sending slice index (the same at both ends)
    #[arg(long, value_name = "N")]
    pub send_slice: i16,
    /// Receiving slice index (the same at both ends)
    #[arg(long, value_name = "N")]
    pub recv_slice: i16,
    /// This backend
    #[arg(long, value_name = "CONTENT:DBID:PID", allow_hyphen_values = true, value_parser = parse_endpoint)]
    pub local: Endpoint,
    /// The backend at the other end
    #[arg(long, value_name = "CONTENT:DBID:PID", allow_hyphen_values = true, value_parser = parse_endpoint)]
    pub remote: Endpoint,
    /// Seconds to keep trying to connect and be acknowledged
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub connect_timeout: Duration,
}

impl ConnArgs {
    pub fn socket_path(&self) -> PathBuf {
        match (&self.socket, self.port, self.pid) {
            (Some(path), _, _) => path.clone(),
            (None, Some(port), Some(pid)) => {
                let dir = self
                    .socket_dir
                    .as_deref()
                    .unwrap_or(Path::new(DEFAULT_SOCKET_DIR));
                socket_path(dir, port, pid)
            }
            // clap's groups require --socket or both --port and --pid.
            _ => unreachable!("neither --socket nor --port/--pid"),
        }
    }

    pub fn spec(&self) -> ConnSpec {
        ConnSpec {
            session_id: self.session,
            command_id: self.command,
            send_slice: self.send_slice,
            recv_slice: self.recv_slice,
            local: self.local,
            remote: self.remote,
        }
    }

    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            dialect: self.wire.dialect,
            max_packet_size: self.wire.max_packet_size,
            connect_deadline: self.connect_timeout,
            ..ClientOptions::default()
        }
    }

    /// The largest payload of one ic-tcp packet.
    pub fn max_payload(&self) -> usize {
        self.wire.max_packet_size - ICTCP_LEN_FIELD
    }
}

#[derive(Debug, Args)]
pub struct RecvArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// At the end, print the number of packets and bytes received to stderr
    #[arg(long)]
    pub count: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["map", "file"])))]
pub struct CheckArgs {
    /// The address map, dbid:content:host:port[,...]
    #[arg(value_name = "MAP", allow_hyphen_values = true)]
    pub map: Option<String>,
    /// Read the map from this file instead
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Where `status` and `ping` find a running proxy's control socket.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("proxy").required(true).args(["control", "port", "data_dir"])))]
pub struct ControlArgs {
    /// The proxy's control socket
    #[arg(long, value_name = "PATH", conflicts_with_all = ["socket_dir", "port", "data_dir"])]
    pub control: Option<PathBuf>,
    /// With --port or --data-dir: the proxy's socket directory [default: /tmp]
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
    /// The postmaster port the proxy was started with (run --port)
    #[arg(long, value_name = "P", conflicts_with = "data_dir")]
    pub port: Option<u16>,
    /// A data directory whose postmaster.pid names the port (its line 4)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of aligned text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Probe only this map entry [default: every peer this instance
    /// exchanges traffic with]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=32767))]
    pub dbid: Option<u16>,
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    s.parse::<Dialect>().map_err(|e| e.to_string())
}

fn parse_packet_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of bytes"))?;
    if (MIN_PACKET_SIZE..=MAX_PACKET_SIZE_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is outside {MIN_PACKET_SIZE}..={MAX_PACKET_SIZE_LIMIT}"
        ))
    }
}

/// `CONTENT:DBID:PID`, e.g. `-1:1:4242` for a coordinator backend.
fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let fields: Vec<&str> = s.split(':').collect();
    let [content, dbid, pid] = fields[..] else {
        return Err(format!(
            "{s:?} is not CONTENT:DBID:PID (e.g. -1:1:4242), found {} field(s)",
            fields.len()
        ));
    };
    Ok(Endpoint {
        content: content
            .parse()
            .map_err(|_| format!("content {content:?} is not a number in -32768..32767"))?,
        dbid: dbid
            .parse()
            .map_err(|_| format!("dbid {dbid:?} is not a number in 0..65535"))?,
        pid: pid
            .parse()
            .map_err(|_| format!("pid {pid:?} is not a number in -2147483648..2147483647"))?,
    })
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a usable duration"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn endpoint_parses_negative_content() {
        assert_eq!(
            parse_endpoint("-1:1:4242"),
            Ok(Endpoint {
                content: -1,
                dbid: 1,
                pid: 4242
            })
        );
        assert!(parse_endpoint("0:2")
            .unwrap_err()
            .contains("found 2 field(s)"));
        assert!(parse_endpoint("0:x:1").unwrap_err().contains("dbid \"x\""));
    }

    #[test]
    fn packet_size_bounds() {
        assert_eq!(parse_packet_size("512"), Ok(512));
        assert_eq!(parse_packet_size("65471"), Ok(65471));
        assert_eq!(
            parse_packet_size("511"),
            Err("511 is outside 512..=65471".to_string())
        );
        assert!(parse_packet_size("65472").is_err());
        assert!(parse_packet_size("8k").is_err());
    }

    #[test]
    fn data_dir_replaces_port_and_pid_and_may_replace_dbid() {
        let parse = |extra: &[&str]| {
            let argv = ["ic-proxy", "run", "--addresses", "1:-1:h:1"]
                .into_iter()
                .chain(extra.iter().copied());
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Run(a)) => Ok(a),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.kind()),
            }
        };
        let a = parse(&["--data-dir", "/d"]).unwrap();
        assert_eq!((a.dbid, a.port, a.pid), (None, None, None));
        assert_eq!(
            parse(&["--data-dir", "/d", "--dbid", "3"]).unwrap().dbid,
            Some(3)
        );
        assert!(parse(&["--dbid", "1", "--port", "1", "--pid", "2"]).is_ok());
        use clap::error::ErrorKind;
        assert_eq!(
            parse(&["--data-dir", "/d", "--pid", "2"]).unwrap_err(),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            parse(&["--data-dir", "/d", "--port", "2"]).unwrap_err(),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            parse(&["--port", "1", "--pid", "2"]).unwrap_err(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn socket_is_given_or_computed() {
        let common = [
            "--session",
            "7",
            "--command",
            "3",
            "--send-slice",
            "1",
            "--recv-slice",
            "0",
            "--local",
            "-1:1:10",
            "--remote",
            "0:2:20",
        ];
        let parse = |extra: &[&str]| {
            let argv = ["ic-proxy", "send"].iter().chain(extra).chain(&common);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Send(a)) => Ok(a),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.kind()),
            }
        };
        let a = parse(&["--port", "5432", "--pid", "99"]).unwrap();
        assert_eq!(
            a.socket_path(),
            PathBuf::from("/tmp/.s.PGSQL.ic_proxy.5432.99")
        );
        assert_eq!(a.spec().local.content, -1);
        assert_eq!(a.max_payload(), 8188);
        let a = parse(&["--socket-dir", "/run", "--port", "1", "--pid", "2"]).unwrap();
        assert_eq!(a.socket_path(), PathBuf::from("/run/.s.PGSQL.ic_proxy.1.2"));
        let a = parse(&["--socket", "/x/s"]).unwrap();
        assert_eq!(a.socket_path(), PathBuf::from("/x/s"));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--port", "1"]).is_err());
        assert!(parse(&["--socket", "/x/s", "--port", "1", "--pid", "2"]).is_err());
    }
}
