//! `ic-proxy run --data-dir DIR`: the sidecar beside one server (Greenplum
//! 6/7, Cloudberry or PostgreSQL) that follows it. The dbid comes from
//! `--dbid` or from `gp_dbid` in `DIR/internal.auto.conf`, once, at start;
//! the postmaster's pid and port come from `DIR/postmaster.pid`, read every
//! [`POLL`], and decide which backend socket the runtime serves: the
//! current postmaster's `.s.PGSQL.ic_proxy.<port>.<pid>`, or none while the
//! server is down. It only reads the data directory, and nothing it finds
//! there after start ends the proxy: peer links outlive server restarts.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ic_proxy_client::socket_path;
use ic_proxy_core::address_map::MAX_DBID;
use ic_proxy_core::{BackendSocket, ProxySettings, RuntimeConfig};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::args::RunArgs;

/// How often postmaster.pid is read: a restarted server's socket is served
/// within about this much after its postmaster wrote the file.
pub const POLL: Duration = Duration::from_millis(500);

const PID_FILE: &str = "postmaster.pid";
const AUTO_CONF: &str = "internal.auto.conf";

/// Who this proxy is and where its backends connect: from `--dbid`,
/// `--port` and `--pid`, or from the server's data directory.
pub struct Identity {
    pub dbid: u16,
    /// [`ProxySettings::socket_path`]; for a sidecar, the socket at start.
    pub socket_path: PathBuf,
    /// Set with `--data-dir`: what keeps the socket on the current postmaster.
    pub follower: Option<ServerFollower>,
}

impl Identity {
    /// `RuntimeConfig::backend_socket` at start.
    pub fn backend_socket(&self) -> BackendSocket {
        self.follower
            .as_ref()
            .map_or(BackendSocket::FromSettings, ServerFollower::backend_socket)
    }
}

/// The usage error of a sidecar that cannot tell its dbid: what was looked
/// at, and the flag that settles it.
#[derive(Debug)]
pub struct NoDbid {
    pub problem: String,
}

impl fmt::Display for NoDbid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no dbid: {}\nhint: Pass --dbid N with this instance's dbid in gp_segment_configuration \
             (Greenplum 6/7 and Cloudberry keep it as gp_dbid in the data directory's {AUTO_CONF}).",
            self.problem
        )
    }
}

pub fn identity(args: &RunArgs) -> Result<Identity, NoDbid> {
    let Some(data_dir) = &args.data_dir else {
        // clap requires --dbid, --port and --pid without --data-dir.
        let (Some(dbid), Some(port), Some(pid)) = (args.dbid, args.port, args.pid) else {
            unreachable!("clap requires --dbid, --port and --pid without --data-dir");
        };
        return Ok(Identity {
            dbid,
            socket_path: socket_path(&args.socket_dir, port, pid),
            follower: None,
        });
    };
    let dbid = dbid_of(data_dir, args.dbid)?;
    let follower = ServerFollower::start(data_dir.clone(), args.socket_dir.clone());
    let socket_path = follower.socket_path().unwrap_or_else(|| {
        // No backend looks for port 0; the runtime serves nothing while the
        // config says Off.
        socket_path(&args.socket_dir, 0, 0)
    });
    Ok(Identity {
        dbid,
        socket_path,
        follower: Some(follower),
    })
}

/// `--dbid` when given (a different `gp_dbid` is worth a warning), else
/// `gp_dbid` from `DIR/internal.auto.conf`.
fn dbid_of(data_dir: &Path, given: Option<u16>) -> Result<u16, NoDbid> {
    let conf = data_dir.join(AUTO_CONF);
    let from_file = match std::fs::read_to_string(&conf) {
        Ok(text) => parse_gp_dbid(&text).map_err(|e| format!("{}: {e}", conf.display())),
        Err(e) => Err(format!("cannot read {}: {e}", conf.display())),
    };
    match (given, from_file) {
        (Some(dbid), Ok(Some(other))) if other != dbid => {
            log::warn!(
                "ic-proxy: --dbid {dbid} differs from gp_dbid = {other} in {}; using --dbid {dbid}",
                conf.display()
            );
            Ok(dbid)
        }
        (Some(dbid), _) => Ok(dbid),
        (None, Ok(Some(dbid))) => {
            log::info!("ic-proxy: dbid {dbid} (gp_dbid in {})", conf.display());
            Ok(dbid)
        }
        (None, Ok(None)) => Err(NoDbid {
            problem: format!(
                "--dbid was not given and {} has no gp_dbid line",
                conf.display()
            ),
        }),
        (None, Err(e)) => Err(NoDbid {
            problem: format!("--dbid was not given and {e}"),
        }),
    }
}

/// The last `gp_dbid` setting of a configuration file (`gp_dbid = 3`,
/// `gp_dbid=3`, `gp_dbid = '3'`, `gp_dbid 3`), as PostgreSQL reads it: the
/// last line wins, `#` starts a comment, names ignore case.
pub fn parse_gp_dbid(text: &str) -> Result<Option<u16>, String> {
    let mut found = None;
    for line in text.lines() {
        let line = strip_comment(line).trim();
        let name_len = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(line.len());
        if !line[..name_len].eq_ignore_ascii_case("gp_dbid") {
            continue;
        }
        let rest = line[name_len..].trim_start();
        let value = rest.strip_prefix('=').unwrap_or(rest).trim();
        let unquoted = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(value)
            .trim();
        match unquoted.parse::<u16>() {
            Ok(dbid) if (1..=MAX_DBID).contains(&dbid) => found = Some(dbid),
            _ => return Err(format!("gp_dbid = {value} is not a dbid in 1..{MAX_DBID}")),
        }
    }
    Ok(found)
}

/// The line up to a `#` that is not inside a quoted value.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// What a postmaster.pid holds that the sidecar uses: line 1, the pid
/// (negative for a single-user backend), and line 4, the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidFile {
    pub pid: i64,
    pub port: u16,
}

/// Lines 1 and 4 of postmaster.pid (PostgreSQL's layout since 9.1: pid,
/// data directory, start time, port, socket directory, listen address,
/// shared memory key, status; Greenplum 6 stops before the status).
pub fn parse_pid_file(text: &str) -> Result<PidFile, String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    if lines.len() < 4 {
        return Err(format!(
            "it has {} line(s), and the port is on line 4",
            lines.len()
        ));
    }
    let pid = match lines[0].parse::<i64>() {
        Ok(pid) if pid != 0 && i32::try_from(pid).is_ok() => pid,
        _ => return Err(format!("line 1 {:?} is not a process id", lines[0])),
    };
    let port = match lines[3].parse::<u16>() {
        Ok(port) if port != 0 => port,
        _ => return Err(format!("line 4 {:?} is not a port", lines[3])),
    };
    Ok(PidFile { pid, port })
}

/// The server as its data directory shows it right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// A live postmaster: its backends look for `.s.PGSQL.ic_proxy.<port>.<pid>`.
    Running { pid: u32, port: u16 },
    /// No postmaster to serve, and why.
    Down(String),
}

/// Reads `DIR/postmaster.pid` and checks that its pid is alive.
pub fn observe(data_dir: &Path) -> ServerState {
    let path = data_dir.join(PID_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound && !data_dir.is_dir() => {
            return ServerState::Down(format!(
                "the data directory {} does not exist",
                data_dir.display()
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return ServerState::Down(format!("no {}: the server is not running", path.display()))
        }
        Err(e) => return ServerState::Down(format!("cannot read {}: {e}", path.display())),
    };
    let file = match parse_pid_file(&text) {
        Ok(f) => f,
        Err(e) => return ServerState::Down(format!("{} is garbled: {e}", path.display())),
    };
    let Ok(pid) = u32::try_from(file.pid) else {
        return ServerState::Down(format!(
            "{} names a single-user backend (pid {}), not a postmaster",
            path.display(),
            -file.pid
        ));
    };
    if !process_alive(pid) {
        return ServerState::Down(format!(
            "{} names pid {pid}, which is not running (left by a crash?)",
            path.display()
        ));
    }
    ServerState::Running {
        pid,
        port: file.port,
    }
}

/// True while `pid` exists and is not a zombie (a postmaster that exited
/// but whose parent has not reaped it, as in a container whose init does
/// not reap). Linux's /proc; a process of another user counts too.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ')' that closes the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Keeps the runtime's backend socket on the server's current postmaster.
pub struct ServerFollower {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    state: ServerState,
}

impl ServerFollower {
    /// Looks at the server once and logs what it found.
    pub fn start(data_dir: PathBuf, socket_dir: PathBuf) -> ServerFollower {
        let state = observe(&data_dir);
        let follower = ServerFollower {
            data_dir,
            socket_dir,
            state,
        };
        follower.log_state(None);
        follower
    }

    /// The port of the running postmaster; None while the server is down.
    pub fn port(&self) -> Option<u16> {
        match &self.state {
            ServerState::Running { port, .. } => Some(*port),
            ServerState::Down(_) => None,
        }
    }

    /// The socket of the running postmaster; None while the server is down.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.state {
            ServerState::Running { pid, port } => Some(socket_path(&self.socket_dir, *port, *pid)),
            ServerState::Down(_) => None,
        }
    }

    pub fn backend_socket(&self) -> BackendSocket {
        match (&self.state, self.socket_path()) {
            (_, Some(path)) => BackendSocket::At(path),
            (ServerState::Down(why), None) => BackendSocket::Off(why.clone()),
            (ServerState::Running { .. }, None) => unreachable!("a running server has a socket"),
        }
    }

    /// Reads postmaster.pid again; logs a change of situation, once.
    fn refresh(&mut self) {
        let now = observe(&self.data_dir);
        if now != self.state {
            let before = std::mem::replace(&mut self.state, now);
            self.log_state(Some(&before));
        }
    }

    fn log_state(&self, before: Option<&ServerState>) {
        let dir = self.data_dir.display();
        match (&self.state, before) {
            (ServerState::Running { pid, port }, Some(ServerState::Running { pid: old, .. })) => {
                log::info!(
                    "ic-proxy: the server in {dir} restarted (postmaster pid {old} -> {pid}, port {port}); backends connect to {}",
                    socket_path(&self.socket_dir, *port, *pid).display()
                )
            }
            (ServerState::Running { pid, port }, _) => log::info!(
                "ic-proxy: the server in {dir} runs (postmaster pid {pid}, port {port}); backends connect to {}",
                socket_path(&self.socket_dir, *port, *pid).display()
            ),
            (ServerState::Down(why), _) => log::warn!(
                "ic-proxy: {why}; no backend socket until the server in {dir} runs (peer links stay up; postmaster.pid is read every {} ms)",
                POLL.as_millis()
            ),
        }
    }

    /// Every [`POLL`] until `shutdown`: re-reads postmaster.pid and, when
    /// the socket to serve differs from the runtime's, sends the change.
    /// Comparing with the runtime's config rather than with the last send
    /// also repairs a concurrent reload that carried an older socket.
    pub async fn follow(
        mut self,
        config: watch::Sender<Arc<RuntimeConfig>>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.refresh();
            let want = self.backend_socket();
            config.send_if_modified(|current| {
                if current.backend_socket == want {
                    return false;
                }
                Arc::make_mut(current).backend_socket = want.clone();
                true
            });
        }
    }
}

/// Where backends connect, for the start-up log line.
pub fn describe_backend_socket(settings: &ProxySettings, socket: &BackendSocket) -> String {
    match socket {
        BackendSocket::FromSettings => settings.socket_path.display().to_string(),
        BackendSocket::At(path) => path.display().to_string(),
        BackendSocket::Off(why) => format!("nothing yet ({why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_lines_one_and_four() {
        let pg15 = "4242\n/data/p\n1700000000\n5432\n/tmp\n*\n  5432001    3\nready   \n";
        assert_eq!(
            parse_pid_file(pg15),
            Ok(PidFile {
                pid: 4242,
                port: 5432
            })
        );
        // Greenplum 6 (PostgreSQL 9.4) has no status line.
        let gp6 = "17\n/data/gpseg0\n1700000000\n6000\n/tmp\n*\n  6000001  98304\n";
        assert_eq!(parse_pid_file(gp6).unwrap().port, 6000);
        assert_eq!(parse_pid_file("-99\nd\n1\n5432\n").unwrap().pid, -99);
        assert_eq!(
            parse_pid_file(""),
            Err("it has 0 line(s), and the port is on line 4".into())
        );
        assert_eq!(
            parse_pid_file("abc\nd\n1\n5432\n"),
            Err("line 1 \"abc\" is not a process id".into())
        );
        assert_eq!(
            parse_pid_file("12\nd\n1\n99999\n"),
            Err("line 4 \"99999\" is not a port".into())
        );
        assert!(parse_pid_file("0\nd\n1\n5432\n").is_err());
    }

    #[test]
    fn gp_dbid_in_every_spelling() {
        assert_eq!(parse_gp_dbid("gp_dbid = 3\n"), Ok(Some(3)));
        assert_eq!(parse_gp_dbid("gp_dbid=3"), Ok(Some(3)));
        assert_eq!(
            parse_gp_dbid("GP_DBID = '7' # set by gpinitsystem"),
            Ok(Some(7))
        );
        assert_eq!(parse_gp_dbid("gp_dbid 12"), Ok(Some(12)));
        assert_eq!(parse_gp_dbid("gp_dbid=2\ngp_dbid=5\n"), Ok(Some(5)));
        assert_eq!(parse_gp_dbid("# gp_dbid = 3\ngp_dbidx = 4\n"), Ok(None));
        assert_eq!(parse_gp_dbid("gp_contentid = 0\n"), Ok(None));
        assert_eq!(
            parse_gp_dbid("gp_dbid = 'x'"),
            Err(format!("gp_dbid = 'x' is not a dbid in 1..{MAX_DBID}"))
        );
        assert!(parse_gp_dbid("gp_dbid = 0").is_err());
        assert!(parse_gp_dbid("gp_dbid = 40000").is_err());
    }

    #[test]
    fn the_server_as_the_data_directory_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert_eq!(
            observe(&missing),
            ServerState::Down(format!(
                "the data directory {} does not exist",
                missing.display()
            ))
        );
        let pid_file = dir.path().join(PID_FILE);
        assert_eq!(
            observe(dir.path()),
            ServerState::Down(format!(
                "no {}: the server is not running",
                pid_file.display()
            ))
        );
        let me = std::process::id();
        std::fs::write(&pid_file, format!("{me}\n/d\n1\n6001\n")).unwrap();
        assert_eq!(
            observe(dir.path()),
            ServerState::Running {
                pid: me,
                port: 6001
            }
        );
        std::fs::write(&pid_file, format!("-{me}\n/d\n1\n6001\n")).unwrap();
        assert!(matches!(observe(dir.path()), ServerState::Down(w) if w.contains("single-user")));
        std::fs::write(&pid_file, "garbage").unwrap();
        assert!(matches!(observe(dir.path()), ServerState::Down(w) if w.contains("is garbled")));
    }
}
