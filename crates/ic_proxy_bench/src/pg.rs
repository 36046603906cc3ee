//! The proxy as it runs in production: the background worker "ic proxy
//! process" inside real PostgreSQL 15 servers that preload the extension.
//! Two servers (dbid 1, content -1 and dbid 2, content 0) are started with
//! the cluster-test harness (`ic_proxy_cluster_tests`): each in a temporary
//! directory owned by the non-root server user, stopped and removed when
//! [`PgPair`] is dropped, also after a failure. Backends reach each worker on
//! `<socket_dir>/.s.PGSQL.ic_proxy.<postmaster port>.<postmaster pid>`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use ic_proxy_cluster_tests::{
    child_processes, command_as_server_user, free_port, pg_config, process_alive,
    server_owned_tempdir, PgInstance,
};
use tempfile::TempDir;

use crate::latency;
use crate::transport::{Endpoints, ProxyEnd};

/// The file name the extension is built and installed as.
pub const LIB_NAME: &str = "cloudberry_ic_proxy.so";
/// The title of the worker process (its background-worker type).
const WORKER_TITLE: &str = "ic proxy process";
/// What the postmaster logs when the worker exits with an error.
const WORKER_FAILED: &str = "background worker \"ic proxy process\" (PID";
/// How often the start-up conditions are polled.
const POLL: Duration = Duration::from_millis(10);

/// How to get a library, for the messages that say one is missing.
pub const BUILD_HINT: &str = "build and install one with `cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config` (debug, into pkglibdir), or package a release build with `cargo pgrx package --pg-config /usr/lib/postgresql/15/bin/pg_config` and pass `--pg-lib $PWD/target/release/cloudberry_ic_proxy-pg15/usr/lib/postgresql/15/lib/cloudberry_ic_proxy.so` (`bash scripts/bench.sh --pg` does both)";

/// The extension library the servers preload.
#[derive(Clone, Debug)]
pub struct PgLib {
    /// Absolute path of `cloudberry_ic_proxy.so`.
    pub path: PathBuf,
    /// "given" (--pg-lib) or "found" (pkglibdir).
    pub how: &'static str,
    /// Its modification time, so a stale build shows in the report.
    pub modified: String,
}

/// The library `--pg-lib` names, else `$(pg_config --pkglibdir)/cloudberry_ic_proxy.so`
/// if it exists. Err says why there is none or why it cannot be used; a
/// given path that cannot be used is always an error, a missing default a
/// reason to skip.
pub fn find_lib(given: Option<&Path>) -> Result<PgLib, String> {
    let (path, how) = match given {
        Some(p) => {
            let abs = std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?;
            if !abs.is_file() {
                return Err(format!("--pg-lib {}: no such file", abs.display()));
            }
            (abs, "given")
        }
        None => {
            let out = Command::new(pg_config())
                .arg("--pkglibdir")
                .output()
                .map_err(|e| format!("cannot run {}: {e}", pg_config().display()))?;
            if !out.status.success() {
                return Err(format!("{} --pkglibdir failed", pg_config().display()));
            }
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let p = dir.join(LIB_NAME);
            if !p.is_file() {
                return Err(format!(
                    "no {LIB_NAME} in {} (pg_config --pkglibdir)",
                    dir.display()
                ));
            }
            (p, "found")
        }
    };
    if path.file_name().and_then(|n| n.to_str()) != Some(LIB_NAME) {
        // The worker is registered under the library's name, and the
        // postmaster looks that name up on dynamic_library_path.
        return Err(format!(
            "{}: the library must be named {LIB_NAME}",
            path.display()
        ));
    }
    check_server_side(&path)?;
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map(format_time)
        .unwrap_or_else(|_| "unknown".into());
    Ok(PgLib {
        path,
        how,
        modified,
    })
}

/// The server user must exist and be able to read the library (every
/// directory above it traversable), and the server binaries must be there.
fn check_server_side(lib: &Path) -> Result<(), String> {
    let user = std::env::var("IC_PROXY_TEST_OS_USER").unwrap_or_else(|_| "postgres".into());
    let c = std::ffi::CString::new(user.clone()).map_err(|e| e.to_string())?;
    // SAFETY: getpwnam returns NULL or a pointer to a static record, only
    // compared with NULL here.
    if unsafe { libc::getpwnam(c.as_ptr()) }.is_null() {
        return Err(format!(
            "the OS user {user:?} the servers run as does not exist (scripts/setup.sh installs postgresql-15, which creates it)"
        ));
    }
    let bindir = Command::new(pg_config())
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .ok_or_else(|| format!("cannot run {} --bindir", pg_config().display()))?;
    for prog in ["initdb", "pg_ctl", "postgres"] {
        if !bindir.join(prog).is_file() {
            return Err(format!("no {prog} in {}", bindir.display()));
        }
    }
    let readable = command_as_server_user("test")
        .arg("-r")
        .arg(lib)
        .status()
        .map_err(|e| format!("cannot run test -r as {user}: {e}"))?;
    if !readable.success() {
        return Err(format!(
            "the server user {user} cannot read {}: give it o+r and every directory above it o+x (as scripts/test.sh and scripts/bench.sh do for the repository)",
            lib.display()
        ));
    }
    Ok(())
}

fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ic_proxy_core::tls::cert_info::format_utc(secs)
}

/// A postgresql.conf string literal.
fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "''"))
}

/// One server of the pair and what the bench knows of its worker.
pub struct PgServer {
    pub instance: PgInstance,
    pub end: ProxyEnd,
    pub postmaster: u32,
    pub worker: u32,
}

/// Two PostgreSQL servers whose workers are linked to each other.
pub struct PgPair {
    /// Dropped first: the servers stop before their socket directory goes.
    pub servers: Vec<PgServer>,
    /// The workers' backend sockets (`ic_proxy.socket_dir`), owned by the
    /// server user.
    _socket_dir: TempDir,
}

/// Lines of a server log containing `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Links up, by the worker's log lines: "peer dbid N (content C) connected"
/// minus "peer dbid N: link lost (...)".
fn links_in(log: &str) -> i64 {
    let up = log
        .lines()
        .filter(|l| {
            l.contains("ic-proxy: peer dbid")
                && (l.ends_with(" connected") || l.contains(" connected ("))
        })
        .count();
    up as i64 - count(log, "link lost") as i64
}

impl PgServer {
    /// Links up now.
    fn links(&self) -> i64 {
        links_in(&self.instance.log())
    }

    /// The live worker: the postmaster's child titled "ic proxy process".
    fn find_worker(postmaster: u32) -> Option<u32> {
        child_processes(postmaster)
            .into_iter()
            .find(|(_, title)| title.contains(WORKER_TITLE))
            .map(|(pid, _)| pid)
    }

    fn last_lines(&self) -> String {
        let log = self.instance.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl PgPair {
    /// initdb and start two servers preloading `lib`, each worker with the
    /// map `1:-1:127.0.0.1:P1,2:0:127.0.0.1:P2` (free ports), then wait until
    /// both workers listen for backends, both report their link connected,
    /// and one logical connection carries a packet each way.
    pub async fn start(lib: &Path, deadline: Duration) -> Result<PgPair, String> {
        let until = Instant::now() + deadline;
        let lib = lib.to_path_buf();
        let (instances, socket_dir) = tokio::task::spawn_blocking(move || {
            let socket_dir = server_owned_tempdir("ic-proxy-bench-pg.")?;
            let ports = [free_port(), free_port()];
            let map = format!("1:-1:127.0.0.1:{},2:0:127.0.0.1:{}", ports[0], ports[1]);
            let libdir = lib.parent().unwrap_or(Path::new("/"));
            let mut instances = Vec::new();
            for dbid in [1u16, 2] {
                let lines = [
                    format!("shared_preload_libraries = {}", quoted(&lib)),
                    // The worker is registered by library name; the postmaster
                    // finds that name here, the very file it preloaded.
                    format!(
                        "dynamic_library_path = '{}:$libdir'",
                        libdir.display().to_string().replace('\'', "''")
                    ),
                    format!("ic_proxy.dbid = {dbid}"),
                    format!("ic_proxy.addresses = '{map}'"),
                    format!("ic_proxy.socket_dir = {}", quoted(socket_dir.path())),
                    // A peer that was not up yet at the first dial is dialled
                    // again soon.
                    "ic_proxy.peer_retry_interval = '200ms'".to_string(),
                ];
                let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
                instances.push(PgInstance::new(&lines)?);
            }
            for i in &mut instances {
                i.start()?;
            }
            Ok::<_, String>((instances, socket_dir))
        })
        .await
        .map_err(|e| format!("starting the servers failed: {e}"))??;

        let mut servers = Vec::new();
        for (k, instance) in instances.into_iter().enumerate() {
            let postmaster = instance
                .postmaster_pid()
                .ok_or_else(|| format!("server dbid {} is not running", k + 1))?;
            let end = ProxyEnd {
                socket: ic_proxy_client::socket_path(
                    socket_dir.path(),
                    instance.port(),
                    postmaster,
                ),
                dbid: k as u16 + 1,
                content: k as i16 - 1,
            };
            servers.push(PgServer {
                instance,
                end,
                postmaster,
                worker: 0,
            });
        }
        let mut pair = PgPair {
            servers,
            _socket_dir: socket_dir,
        };
        pair.wait_ready(until).await?;
        Ok(pair)
    }

    async fn wait_ready(&mut self, until: Instant) -> Result<(), String> {
        for s in &mut self.servers {
            let listening = format!(
                "ic-proxy: listening for backends on {}",
                s.end.socket.display()
            );
            loop {
                if !process_alive(s.postmaster) {
                    return Err(format!(
                        "server dbid {} stopped; its last log lines:\n{}",
                        s.end.dbid,
                        s.last_lines()
                    ));
                }
                // A worker that fails at start fails again on each restart.
                if s.instance.log().contains(WORKER_FAILED) {
                    return Err(format!(
                        "the worker of server dbid {} failed; its last log lines:\n{}",
                        s.end.dbid,
                        s.last_lines()
                    ));
                }
                let ready = s.instance.log().contains(&listening)
                    && s.end.socket.exists()
                    && s.links() >= 1;
                if ready {
                    if let Some(w) = PgServer::find_worker(s.postmaster) {
                        s.worker = w;
                        break;
                    }
                }
                if Instant::now() >= until {
                    return Err(format!(
                        "the worker of server dbid {} did not come up and link in time ({} links); its last log lines:\n{}",
                        s.end.dbid,
                        s.links(),
                        s.last_lines()
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        // The log says the link is up: a logical connection must now carry
        // a packet each way and end cleanly.
        let ep = self.endpoints();
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, latency::one_query(&ep, &[7u8; latency::MESSAGE])).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "a first logical connection through the workers failed: {e}"
            )),
            Err(_) => {
                Err("a first logical connection through the workers did not finish in time".into())
            }
        }
    }

    /// Backend on dbid 1's worker to backend on dbid 2's.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints::Proxy {
            a: self.servers[0].end.clone(),
            b: self.servers[1].end.clone(),
        }
    }

    /// The worker pids, sending (dbid 1) then receiving (dbid 2).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.worker).collect()
    }

    pub fn postmaster_pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.postmaster).collect()
    }

    /// Err if a server stopped, a worker was restarted (another pid), or a
    /// link was lost since the start.
    pub fn check(&self) -> Result<(), String> {
        for s in &self.servers {
            if !process_alive(s.postmaster) {
                return Err(format!(
                    "server dbid {} stopped; its last log lines:\n{}",
                    s.end.dbid,
                    s.last_lines()
                ));
            }
            let now = PgServer::find_worker(s.postmaster);
            if now != Some(s.worker) {
                return Err(format!(
                    "the worker of dbid {} was pid {} and is now {now:?} (it exited or was restarted); its last log lines:\n{}",
                    s.end.dbid,
                    s.worker,
                    s.last_lines()
                ));
            }
            let log = s.instance.log();
            let lost = count(&log, "link lost");
            if lost > 0 || s.links() != 1 {
                return Err(format!(
                    "the worker of dbid {} lost its link {lost} time(s); its last log lines:\n{}",
                    s.end.dbid,
                    s.last_lines()
                ));
            }
        }
        Ok(())
    }

    /// Every WARNING, ERROR, FATAL or PANIC line of the server logs, prefixed
    /// with the dbid.
    pub fn warnings(&self) -> Vec<String> {
        self.servers
            .iter()
            .flat_map(|s| {
                s.instance
                    .log()
                    .lines()
                    .filter(|l| {
                        ["WARNING:", "ERROR:", "FATAL:", "PANIC:"]
                            .iter()
                            .any(|w| l.contains(w))
                    })
                    .map(|l| format!("pg dbid {}: {l}", s.end.dbid))
                    .take(50)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `SELECT version()` of the first server.
    pub fn version(&self) -> String {
        self.servers[0]
            .instance
            .psql("SELECT version()")
            .unwrap_or_else(|e| format!("unknown ({})", e.trim()))
    }

    /// Stops both servers (`pg_ctl stop -m fast`: the workers end their
    /// sessions and links) and removes their directories, off the runtime's
    /// threads. Err if a server did not stop cleanly; it is then killed.
    pub async fn stop(self) -> Result<(), String> {
        tokio::task::spawn_blocking(move || {
            let mut pair = self;
            let mut errors = Vec::new();
            for s in &mut pair.servers {
                if let Err(e) = s.instance.stop() {
                    errors.push(format!("dbid {}: {e}", s.end.dbid));
                }
            }
            // Drop: whatever still runs is stopped at once, then the
            // directories are removed.
            drop(pair);
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        })
        .await
        .map_err(|e| format!("stopping the servers failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_civil_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(format_time(t), "2026-11-18 11:06:40 UTC");
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00:00 UTC"
        );
    }

    #[test]
    fn links_are_counted_from_the_worker_log() {
        let log = "\
2026-11-25 19:38:00.100 UTC [5686] ic proxy process LOG:  ic-proxy: started (dbid 1, socket /tmp/x/.s.PGSQL.ic_proxy.5432.77, dialect c, 2 threads)
2026-11-25 19:38:00.300 UTC [5686] ic proxy process LOG:  ic-proxy: peer dbid 2 (content 0) connected
";
        assert_eq!(links_in(log), 1);
        let lost = format!("{log}2026-11-25 19:38:09.000 UTC [5686] ic proxy process WARNING:  ic-proxy: peer dbid 2: link lost (reset); 3 logical connections ended\n");
        assert_eq!(links_in(&lost), 0);
        assert_eq!(count(&lost, "link lost"), 1);
        assert_eq!(links_in(""), 0);
    }

    #[test]
    fn conf_literals_double_quotes() {
        assert_eq!(quoted(Path::new("/tmp/a'b")), "'/tmp/a''b'");
    }
}
