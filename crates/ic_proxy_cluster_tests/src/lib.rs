//! A harness for tests against real PostgreSQL 15 servers running the
//! installed `cloudberry_ic_proxy`: [`PgInstance`] is one server, [`PgCluster`]
//! a set of them described in each one's `gp_segment_configuration`.
//!
//! Servers run as a non-root OS user (`postgres`; initdb refuses root), each
//! in its own temporary directory owned by that user, which holds the data
//! directory, the Unix socket and the server log. Dropping an instance stops
//! its server (`-m immediate`) and removes the directory, also when a test
//! fails. Nothing here sleeps to synchronize: every wait polls a condition
//! with a deadline ([`wait_until`]).
//!
//! The extension is not built here: `cargo pgrx install` must have put it in
//! the server's library directory first (scripts/test.sh does).

pub mod builtin;

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use ic_proxy_core::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The `postgresql.conf` line that loads the extension at server start.
pub const PRELOAD: &str = "shared_preload_libraries = 'cloudberry_ic_proxy'";

/// How long a server may take to start or stop.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// `pg_config` of the server under test: `$PG_CONFIG`, else Debian's PostgreSQL 15.
pub fn pg_config() -> PathBuf {
    std::env::var_os("PG_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin/pg_config"))
}

fn pg_config_value(flag: &str) -> PathBuf {
    let out = Command::new(pg_config())
        .arg(flag)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {flag}: {e}", pg_config().display()));
    assert!(
        out.status.success(),
        "{} {flag} failed: {}",
        pg_config().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Directory of `initdb`, `pg_ctl`, `psql`.
pub fn pg_bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| pg_config_value("--bindir"))
}

/// `pg_regress` as shipped with the server's PGXS.
pub fn pg_regress_path() -> PathBuf {
    // --pgxs is <pkglibdir>/pgxs/src/makefiles/pgxs.mk
    let pgxs = pg_config_value("--pgxs");
    pgxs.parent()
        .and_then(Path::parent)
        .map(|src| src.join("test/regress/pg_regress"))
        .expect("pg_config --pgxs has the form .../pgxs/src/makefiles/pgxs.mk")
}

// ---- the OS user servers run as ------------------------------------------------

/// The non-root OS user that owns the servers' files and runs them.
pub struct ServerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// `$IC_PROXY_TEST_OS_USER`, else `postgres`.
pub fn server_user() -> &'static ServerUser {
    static USER: OnceLock<ServerUser> = OnceLock::new();
    USER.get_or_init(|| {
        let name = std::env::var("IC_PROXY_TEST_OS_USER").unwrap_or_else(|_| "postgres".into());
        let c_name = CString::new(name.clone()).expect("user name without NUL");
        // SAFETY: getpwnam returns NULL or a pointer to a static passwd
        // record; it is read at once, and test setup is the only caller.
        let pw = unsafe { libc::getpwnam(c_name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "OS user {name:?} does not exist: run scripts/setup.sh (it installs postgresql-15, which creates it)"
        );
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        ServerUser { name, uid, gid }
    })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as the server user: through `runuser` when
/// we are root, directly otherwise (then we are that user, or initdb says
/// why not). The environment is scrubbed of libpq variables and the
/// locale is C, so messages are the untranslated ones the tests compare.
pub fn command_as_server_user(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg(&server_user().name).arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").env("LANG", "C").stdin(Stdio::null());
    cmd
}

/// Runs `cmd`, feeding `stdin`; Err carries the command line, status and output.
fn run(mut cmd: Command, stdin: Option<&str>) -> Result<Output, String> {
    let describe = format!("{cmd:?}");
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {describe}: {e}"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to {describe}: {e}"))?;
    }
    child
        .wait_with_output()
        .map_err(|e| format!("waiting for {describe}: {e}"))
}

/// Runs `cmd` and fails unless it exits 0.
fn run_ok(cmd: Command, stdin: Option<&str>) -> Result<Output, String> {
    let describe = format!("{cmd:?}");
    let out = run(cmd, stdin)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{describe} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A fresh temporary directory (under `$TMPDIR` or /tmp, which the server
/// user can traverse) owned by the server user, removed on drop.
pub fn server_owned_tempdir(prefix: &str) -> Result<TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    give_to_server_user(dir.path())?;
    Ok(dir)
}

/// Makes `path` (and, for a directory, everything below it) belong to the
/// server user.
pub fn give_to_server_user(path: &Path) -> Result<(), String> {
    if !running_as_root() {
        return Ok(());
    }
    let user = server_user();
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        let entries = fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            give_to_server_user(&entry.path())?;
        }
    }
    Ok(())
}

/// Copies the directory tree `from` into `to` (created) and gives the copy
/// to the server user: for inputs, such as pg_regress files, it must read
/// but that live where it cannot go.
pub fn copy_tree_for_server(from: &Path, to: &Path) -> Result<(), String> {
    fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy(&entry.path(), &target)?;
            } else {
                fs::copy(entry.path(), &target)?;
            }
        }
        Ok(())
    }
    copy(from, to).map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
    give_to_server_user(to)
}

/// A TCP port on 127.0.0.1 that was free a moment ago: bound to port 0 and
/// released. Never hands out the same port twice in one process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock();
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Polls `probe` until it returns `Some`, for at most `timeout`; the error
/// names `what` and the last value seen by `describe_last`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        // A poll interval, not a synchronization: the condition decides.
        thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

// ---- processes -------------------------------------------------------------------

/// True while `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ')' that closes the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The live children of `parent`, with their command lines (for a server,
/// the process titles: `postgres: checkpointer`, a background worker's name...).
pub fn child_processes(parent: u32) -> Vec<(u32, String)> {
    let mut children = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return children;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && process_alive(pid) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .trim_end_matches('\0')
                        .replace('\0', " ")
                })
                .unwrap_or_default();
            children.push((pid, cmdline));
        }
    }
    children.sort();
    children
}

fn send_signal(pid: u32, signal: i32) -> Result<(), String> {
    let pid_t = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    // SAFETY: kill has no memory effects; the pid is one we read ourselves.
    if unsafe { libc::kill(pid_t, signal) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Waits until every pid in `pids` is gone.
pub fn wait_for_exit(pids: &[u32], timeout: Duration) -> Result<(), String> {
    wait_until(&format!("processes {pids:?} to exit"), timeout, || {
        pids.iter().all(|&p| !process_alive(p)).then_some(())
    })
}

// ---- one server ----------------------------------------------------------------

/// One PostgreSQL server in a temporary directory owned by the server user:
/// `<root>/data` (the data directory), `<root>/server.log`, and the Unix
/// socket in `<root>` itself. Its TCP port is chosen free at creation; with
/// the default `listen_addresses = ''` it only names the socket, and
/// `postgresql.conf` lines can open TCP (`listen_addresses = '127.0.0.1'`).
pub struct PgInstance {
    root: TempDir,
    port: u16,
    /// Processes of a server killed with [`PgInstance::kill9`] that may still
    /// hold its shared memory; start and drop wait for or kill them.
    orphans: Vec<u32>,
}

impl PgInstance {
    /// initdb with `settings` (postgresql.conf lines) appended after the
    /// harness's own; the server is not started.
    pub fn new(settings: &[&str]) -> Result<PgInstance, String> {
        let root = server_owned_tempdir("ic_proxy_pg.")?;
        let instance = PgInstance {
            root,
            port: free_port(),
            orphans: Vec::new(),
        };
        let mut initdb = command_as_server_user(pg_bindir().join("initdb"));
        initdb
            .current_dir(instance.root.path())
            .arg("-D")
            .arg(instance.data_dir())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]);
        run_ok(initdb, None)?;

        let mut conf = vec![
            "# ---- written by ic_proxy_cluster_tests ----".to_string(),
            format!("port = {}", instance.port),
            format!(
                "unix_socket_directories = '{}'",
                instance.socket_dir().display()
            ),
            "listen_addresses = ''".to_string(),
            "fsync = off".to_string(),
            "log_line_prefix = '%m [%p] %b '".to_string(),
        ];
        conf.extend(settings.iter().map(|s| s.to_string()));
        instance.append_conf(&conf.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(instance)
    }

    /// [`PgInstance::new`], then [`PgInstance::start`].
    pub fn start_new(settings: &[&str]) -> Result<PgInstance, String> {
        let mut instance = PgInstance::new(settings)?;
        instance.start()?;
        Ok(instance)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory that holds everything of this instance.
    pub fn root_dir(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Where the server's Unix socket is (`unix_socket_directories`).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// The whole server log so far (empty before the first start).
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the server log contains `needle`; the error shows the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        wait_until(&format!("{needle:?} in the server log"), timeout, || {
            self.log().contains(needle).then_some(())
        })
        .map_err(|e| format!("{e}\n---- server log ----\n{}", self.log()))
    }

    /// Writes `contents` to `name` in the data directory as the server user
    /// (as an administrator editing it by hand would), replacing it.
    pub fn write_data_file(&self, name: &str, contents: &str) -> Result<(), String> {
        let mut tee = command_as_server_user("tee");
        tee.arg(self.data_dir().join(name)).stdout(Stdio::null());
        run_ok(tee, Some(contents)).map(drop)
    }

    /// Appends lines to postgresql.conf; they take effect on the next
    /// start, restart or (for reloadable settings) reload.
    pub fn append_conf(&self, lines: &[&str]) -> Result<(), String> {
        let mut text = String::new();
        for line in lines {
            let _ = writeln!(text, "{line}");
        }
        let mut tee = command_as_server_user("tee");
        tee.arg("-a")
            .arg(self.data_dir().join("postgresql.conf"))
            .stdout(Stdio::null());
        run_ok(tee, Some(&text)).map(drop)
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = command_as_server_user(pg_bindir().join("pg_ctl"));
        cmd.current_dir(self.root.path())
            .arg("-D")
            .arg(self.data_dir())
            .arg("-t")
            .arg(SERVER_TIMEOUT.as_secs().to_string());
        cmd
    }

    /// `pg_ctl start -w`: returns once the server accepts connections. After
    /// [`PgInstance::kill9`] it first waits for the old server's processes.
    pub fn start(&mut self) -> Result<(), String> {
        if !self.orphans.is_empty() {
            wait_for_exit(&self.orphans, SERVER_TIMEOUT)
                .map_err(|e| format!("the killed server's processes linger: {e}"))?;
            self.orphans.clear();
        }
        let mut cmd = self.pg_ctl();
        cmd.arg("-l").arg(self.log_path()).args(["-w", "start"]);
        run_ok(cmd, None)
            .map(drop)
            .map_err(|e| format!("{e}\n---- server log ----\n{}", self.log()))
    }

    /// `pg_ctl stop -m fast -w`.
    pub fn stop(&mut self) -> Result<(), String> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-m", "fast", "-w", "stop"]);
        run_ok(cmd, None).map(drop)
    }

    /// Stop, then start: what a `postmaster` context setting needs.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop()?;
        self.start()
    }

    /// `SELECT pg_reload_conf()`: the postmaster rereads its files (SIGHUP).
    pub fn reload(&self) -> Result<(), String> {
        self.psql("SELECT pg_reload_conf()").map(drop)
    }

    /// The postmaster's pid while the server runs (first line of postmaster.pid).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse::<u32>().ok()?;
        process_alive(pid).then_some(pid)
    }

    /// The postmaster's live children with their process titles.
    pub fn server_processes(&self) -> Vec<(u32, String)> {
        self.postmaster_pid()
            .map(child_processes)
            .unwrap_or_default()
    }

    /// SIGKILLs the postmaster, as a crash would, and waits until it is
    /// gone. Returns its children at the time of the kill: they notice the
    /// postmaster's death by themselves (a test may wait for that with
    /// [`wait_for_exit`]); [`PgInstance::start`] waits for them.
    pub fn kill9(&mut self) -> Result<Vec<u32>, String> {
        let pid = self
            .postmaster_pid()
            .ok_or_else(|| "kill9: the server is not running".to_string())?;
        let children: Vec<u32> = child_processes(pid).into_iter().map(|(p, _)| p).collect();
        send_signal(pid, libc::SIGKILL)?;
        wait_for_exit(&[pid], SERVER_TIMEOUT)?;
        if Path::new(&format!("/proc/{pid}")).exists() {
            // A zombie: in a container whose init does not reap orphans the
            // dead postmaster keeps its pid, and a new postmaster would take
            // postmaster.pid (and the socket's lock file) for a live
            // server's. A reaping init removes the pid; here the harness
            // removes the stale lock files instead.
            let locks = [
                self.data_dir().join("postmaster.pid"),
                self.socket_dir()
                    .join(format!(".s.PGSQL.{}.lock", self.port)),
            ];
            for lock in locks {
                match fs::remove_file(&lock) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(format!("remove {}: {e}", lock.display()))
                    }
                    _ => {}
                }
            }
        }
        self.orphans.extend(&children);
        Ok(children)
    }

    /// Runs `sql` with `psql -X -q -At -v ON_ERROR_STOP=1` in database
    /// `postgres`: Ok(stdout) with the final newline removed, or Err(stderr)
    /// of the failed statement (the ERROR, DETAIL and HINT lines).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.psql_in("postgres", sql)
    }

    /// [`PgInstance::psql`] in database `dbname`.
    pub fn psql_in(&self, dbname: &str, sql: &str) -> Result<String, String> {
        let mut cmd = command_as_server_user(pg_bindir().join("psql"));
        cmd.current_dir(self.root.path())
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", dbname, "-f", "-"]);
        let out = run(cmd, Some(sql))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_string())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(if stderr.trim().is_empty() {
                format!("psql failed ({}) with no message", out.status)
            } else {
                stderr.into_owned()
            })
        }
    }

    /// `SHOW name`.
    pub fn show(&self, name: &str) -> Result<String, String> {
        self.psql(&format!("SHOW {name}"))
    }

    /// Polls `SHOW name` in new sessions until it gives `expected`.
    pub fn wait_for_setting(
        &self,
        name: &str,
        expected: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut last = String::new();
        wait_until(&format!("SHOW {name} = {expected:?}"), timeout, || {
            last = match self.show(name) {
                Ok(v) => v,
                Err(e) => e,
            };
            (last == expected).then_some(())
        })
        .map_err(|e| format!("{e}; last seen {last:?}"))
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        // Whatever happened: no server outlives its test, no directory stays.
        if let Some(pid) = self.postmaster_pid() {
            let children: Vec<u32> = child_processes(pid).into_iter().map(|(p, _)| p).collect();
            let mut cmd = self.pg_ctl();
            cmd.args(["-m", "immediate", "-w", "stop"]);
            if run_ok(cmd, None).is_err() {
                let _ = send_signal(pid, libc::SIGKILL);
            }
            self.orphans.push(pid);
            self.orphans.extend(children);
        }
        if wait_for_exit(&self.orphans, Duration::from_secs(10)).is_err() {
            for &pid in &self.orphans {
                if process_alive(pid) {
                    let _ = send_signal(pid, libc::SIGKILL);
                }
            }
        }
    }
}

// ---- several servers -------------------------------------------------------------

/// One instance of a [`PgCluster`] and its place in the cluster.
pub struct Member {
    pub dbid: u16,
    /// -1 for the coordinator, 0.. for segments.
    pub content: i16,
    pub instance: PgInstance,
}

/// N servers playing a Cloudberry cluster: the first is the coordinator
/// (dbid 1, content -1), the others segments (dbid k+1, content k-1).
pub struct PgCluster {
    members: Vec<Member>,
}

impl PgCluster {
    /// initdb of `n` instances, each with the postgresql.conf lines
    /// `settings(dbid, content)` returns; none is started, so a test can
    /// first write settings that need every port (e.g. the address map).
    pub fn new(n: usize, settings: impl Fn(u16, i16) -> Vec<String>) -> Result<PgCluster, String> {
        assert!(n >= 1, "a cluster needs a coordinator");
        let mut members = Vec::with_capacity(n);
        for k in 0..n {
            let dbid = u16::try_from(k + 1).expect("dbid fits u16");
            let content = i16::try_from(k).expect("content fits i16") - 1;
            let lines = settings(dbid, content);
            let instance = PgInstance::new(&lines.iter().map(String::as_str).collect::<Vec<_>>())?;
            members.push(Member {
                dbid,
                content,
                instance,
            });
        }
        Ok(PgCluster { members })
    }

    /// `n` instances with the extension preloaded and `ic_proxy.dbid` set,
    /// plus `extra` lines, all started.
    pub fn start_preloaded(n: usize, extra: &[&str]) -> Result<PgCluster, String> {
        let mut cluster = PgCluster::new(n, |dbid, _| {
            let mut lines = vec![PRELOAD.to_string(), format!("ic_proxy.dbid = {dbid}")];
            lines.extend(extra.iter().map(|s| s.to_string()));
            lines
        })?;
        cluster.start_all()?;
        Ok(cluster)
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn members_mut(&mut self) -> &mut [Member] {
        &mut self.members
    }

    pub fn member(&self, dbid: u16) -> &Member {
        self.members
            .iter()
            .find(|m| m.dbid == dbid)
            .unwrap_or_else(|| panic!("no member with dbid {dbid}"))
    }

    pub fn instance(&self, dbid: u16) -> &PgInstance {
        &self.member(dbid).instance
    }

    pub fn instance_mut(&mut self, dbid: u16) -> &mut PgInstance {
        &mut self
            .members
            .iter_mut()
            .find(|m| m.dbid == dbid)
            .unwrap_or_else(|| panic!("no member with dbid {dbid}"))
            .instance
    }

    pub fn start_all(&mut self) -> Result<(), String> {
        self.members.iter_mut().try_for_each(|m| m.instance.start())
    }

    pub fn stop_all(&mut self) -> Result<(), String> {
        self.members.iter_mut().try_for_each(|m| m.instance.stop())
    }

    /// Appends the same postgresql.conf lines on every instance.
    pub fn append_conf_all(&self, lines: &[&str]) -> Result<(), String> {
        self.members
            .iter()
            .try_for_each(|m| m.instance.append_conf(lines))
    }

    /// The rows describing this cluster, one per instance: (dbid, content,
    /// 'p', 'p', 'n', 'u', postmaster port, '127.0.0.1', '127.0.0.1', datadir).
    pub fn segment_configuration_insert(&self) -> String {
        let rows: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "({}, {}, 'p', 'p', 'n', 'u', {}, '127.0.0.1', '127.0.0.1', '{}')",
                    m.dbid,
                    m.content,
                    m.instance.port(),
                    m.instance
                        .data_dir()
                        .display()
                        .to_string()
                        .replace('\'', "''")
                )
            })
            .collect();
        format!(
            "INSERT INTO gp_segment_configuration \
             (dbid, content, role, preferred_role, mode, status, port, hostname, address, datadir) \
             VALUES {};",
            rows.join(", ")
        )
    }

    /// On every running instance: creates the extension if needed and
    /// replaces the rows of its `gp_segment_configuration` with this cluster.
    pub fn fill_segment_configuration(&self) -> Result<(), String> {
        let sql = format!(
            "SET client_min_messages = warning;\n\
             CREATE EXTENSION IF NOT EXISTS cloudberry_ic_proxy;\n\
             BEGIN;\n\
             DELETE FROM gp_segment_configuration;\n\
             {}\n\
             COMMIT;\n",
            self.segment_configuration_insert()
        );
        self.psql_all(&sql).map(drop)
    }

    /// Runs `sql` on every instance, in dbid order; stops at the first error,
    /// naming the instance.
    pub fn psql_all(&self, sql: &str) -> Result<Vec<String>, String> {
        self.members
            .iter()
            .map(|m| {
                m.instance
                    .psql(sql)
                    .map_err(|e| format!("dbid {}: {e}", m.dbid))
            })
            .collect()
    }
}

// ---- the proxy mesh and what its worker holds -------------------------------------

/// postgresql.conf lines that turn on the proxy of `dbid`, with its backend
/// socket in `socket_dir` and a peer redialled every 200 ms (tests wait for
/// reconnections, so the 1 s default would only slow them down).
pub fn proxy_settings(dbid: u16, socket_dir: &Path) -> Vec<String> {
    vec![
        PRELOAD.to_string(),
        format!("ic_proxy.dbid = {dbid}"),
        format!("ic_proxy.socket_dir = '{}'", socket_dir.display()),
        "ic_proxy.peer_retry_interval = '200ms'".to_string(),
    ]
}

/// A delta that puts every instance's proxy port (its port + delta) on a
/// 127.0.0.1 port that is free right now.
pub fn free_proxy_delta(ports: &[u16]) -> Result<i32, String> {
    (1000..20000)
        .step_by(97)
        .find(|delta| {
            ports.iter().all(|p| {
                u16::try_from(i32::from(*p) + delta)
                    .is_ok_and(|proxy| TcpListener::bind(("127.0.0.1", proxy)).is_ok())
            })
        })
        .ok_or_else(|| format!("no free delta for ports {ports:?}"))
}

/// A signal to a process the test found itself (a proxy worker, say).
pub fn signal_process(pid: u32, signal: i32) -> Result<(), String> {
    send_signal(pid, signal)
}

/// What a process holds: open file descriptors (`/proc/<pid>/fd`) and
/// resident memory (`VmRSS` of `/proc/<pid>/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub fds: usize,
    pub rss_kib: u64,
}

/// The [`Footprint`] of `pid` now; Err when it is gone or unreadable.
pub fn footprint(pid: u32) -> Result<Footprint, String> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
        .count();
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(Footprint { fds, rss_kib })
}

/// The Unix socket files directly in `dir`, sorted.
pub fn socket_files(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

impl PgInstance {
    /// The pid of the running proxy worker, as `ic_proxy_info()` publishes
    /// it; None while no worker runs or the server does not answer.
    pub fn proxy_worker_pid(&self) -> Option<u32> {
        self.psql("SELECT worker_pid FROM ic_proxy_info() WHERE running")
            .ok()?
            .parse()
            .ok()
    }

    /// Waits until the proxy lists `n` map entries, each `self` or
    /// `connected`; the error shows the last status seen.
    pub fn wait_mesh(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let mut last = String::new();
        wait_until("every peer connected", timeout, || {
            last = self
                .psql(
                    "SELECT string_agg(dbid || ':' || state || ':' || coalesce(last_error, ''), ', ' \
                     ORDER BY dbid) FROM ic_proxy_status()",
                )
                .unwrap_or_else(|e| e);
            let states: Vec<&str> = last.split(", ").collect();
            (states.len() == n
                && states
                    .iter()
                    .all(|s| s.contains(":self:") || s.contains(":connected:")))
            .then_some(())
        })
        .map_err(|e| format!("{e}: {last}"))
    }
}

impl PgCluster {
    /// `n` instances brought into a live mesh the way a user does it:
    /// [`proxy_settings`] (the socket in each instance's own directory),
    /// started, `gp_segment_configuration` filled, the map from
    /// `ic_proxy_addresses_generate(delta)` applied everywhere with ALTER
    /// SYSTEM + reload, and every link connected. Returns the map.
    pub fn start_mesh(n: usize, timeout: Duration) -> Result<(PgCluster, String), String> {
        let mut cluster = PgCluster::new(n, |_, _| Vec::new())?;
        for m in &cluster.members {
            let lines = proxy_settings(m.dbid, &m.instance.socket_dir());
            m.instance
                .append_conf(&lines.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        cluster.start_all()?;
        cluster.fill_segment_configuration()?;
        let ports: Vec<u16> = cluster.members.iter().map(|m| m.instance.port()).collect();
        let delta = free_proxy_delta(&ports)?;
        let map = cluster.members[0]
            .instance
            .psql(&format!("SELECT ic_proxy_addresses_generate({delta})"))?;
        cluster.psql_all(&format!(
            "ALTER SYSTEM SET ic_proxy.addresses = '{map}';\nSELECT pg_reload_conf();"
        ))?;
        cluster.wait_mesh(timeout)?;
        Ok((cluster, map))
    }

    /// [`PgInstance::wait_mesh`] on every member, for all of them.
    pub fn wait_mesh(&self, timeout: Duration) -> Result<(), String> {
        let n = self.members.len();
        self.members.iter().try_for_each(|m| {
            m.instance
                .wait_mesh(n, timeout)
                .map_err(|e| format!("dbid {}: {e}", m.dbid))
        })
    }
}
