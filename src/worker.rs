//! The background worker "ic proxy process": its main thread handles
//! signals, runs the latch loop, re-reads the configuration on SIGHUP and
//! hands the new map to the runtime, publishes status to shared memory and
//! writes the runtime's log lines through elog. The runtime's threads never
//! call PostgreSQL: they talk to this thread through a channel, a watch and
//! atomics.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ic_proxy_core::tls::{TlsMode, TlsPolicy};
use ic_proxy_core::{socket_path, Listeners, ProxyHandle, ProxySettings, RuntimeConfig, StopError};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::log_bridge::LogBridge;
use crate::{gucs, shmem};

/// How often the main thread wakes to publish status and drain the log.
const TICK: Duration = Duration::from_millis(200);
/// How often the worker asks whether the proxy went quiet after work, so the
/// memory the work left with the C library goes back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How long a clean stop may take.
const STOP_GRACE: Duration = Duration::from_secs(3);

pub fn register() {
    BackgroundWorkerBuilder::new("ic proxy process")
        .set_type("ic proxy process")
        .set_library("cloudberry_ic_proxy")
        .set_function("ic_proxy_worker_main")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

// ---- configuration -------------------------------------------------------------

/// The configuration in force. `previous` is kept for the secret when its
/// file cannot be used: a reload never weakens or breaks authentication by
/// accident.
fn runtime_config(previous: Option<&RuntimeConfig>) -> RuntimeConfig {
    RuntimeConfig {
        map: gucs::addresses(),
        early_cache_bytes: gucs::early_cache_bytes(),
        early_packet_ttl: gucs::early_packet_ttl(),
        retry_interval: gucs::peer_retry_interval(),
        peer_secret: match gucs::peer_auth_secret_file() {
            None => None,
            Some(path) => match ic_proxy_core::auth::load_secret(&path) {
                Ok(s) => Some(s),
                Err(e) => {
                    let kept = previous.and_then(|p| p.peer_secret.clone());
                    warning!(
                        "ic-proxy: cannot use {}: {e}; {}",
                        path.display(),
                        if kept.is_some() {
                            "the previous secret stays in force"
                        } else {
                            "peers are refused until it is fixed"
                        }
                    );
                    // No usable secret: refuse every peer rather than run unauthenticated.
                    Some(kept.unwrap_or_else(|| Arc::from(&b""[..])))
                }
            },
        },
        backend_socket: Default::default(),
        tls: tls_policy(previous.map(|p| &p.tls)),
    }
}

/// TLS on peer links as the settings say. Files that cannot be used are
/// reported, and the material in force stays (a reload never drops TLS by
/// accident); with none in force, `on` links in plaintext and `require`
/// refuses every peer until the files are fixed.
fn tls_policy(previous: Option<&TlsPolicy>) -> TlsPolicy {
    let (mode, verify) = (gucs::tls_mode(), gucs::tls_verify());
    match TlsPolicy::load(mode, verify, gucs::tls_files().as_ref()) {
        Ok(p) => p,
        Err(e) => {
            let kept = previous.and_then(|p| p.material.clone());
            warning!(
                "ic-proxy: TLS on peer links cannot use its files: {e}; {}",
                match (&kept, mode) {
                    (Some(_), _) => "the certificates in force stay in use",
                    (None, TlsMode::Require) =>
                        "every peer is refused until they are fixed (ic_proxy.tls = require)",
                    (None, _) => "links stay in plaintext until they are fixed",
                }
            );
            TlsPolicy {
                mode,
                verify,
                material: kept,
            }
        }
    }
}

/// Blocks every signal on this thread while the runtime starts its threads,
/// so they inherit the mask and PostgreSQL's handlers only ever run on the
/// main thread; the old mask is restored afterwards.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// How the latch loop ended.
enum Exit {
    /// SIGTERM: a clean stop.
    Stop,
    /// The runtime ended by itself (a failure): stop, and be restarted.
    Failed,
    /// No one left to serve: stop at once.
    PostmasterDied,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn ic_proxy_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let logs = LogBridge::install();
    let Some(settings) = settings_from_gucs() else {
        return; // exit 0: not restarted; the reason is logged and shown
    };
    let fd_limits = raise_fd_limit();
    let threads = gucs::worker_threads();
    let runtime = start_runtime(threads);
    let mut proxy = ProxyHandle::new(runtime_config(None));
    let counters = &proxy.status().counters;
    counters.fd_soft_limit.store(fd_limits.soft, Relaxed);
    counters.fd_hard_limit.store(fd_limits.hard, Relaxed);
    let shown = Shown::new(&settings, threads);
    with_signals_blocked(|| proxy.spawn(runtime.handle(), settings, Listeners::default()));
    log!("ic-proxy: started (dbid {}, socket {}, dialect {}, {threads} threads, open files limit {fd_limits})",
        shown.dbid, shown.socket_path.display(), shown.dialect);
    let exit = serve(&mut proxy, &logs, &shown);
    stop(runtime, proxy, exit, &logs, &shown);
}

/// The proxy's settings from the GUCs; None (logged, and shown in
/// `ic_proxy_info()`) when the proxy must stay off until a restart.
fn settings_from_gucs() -> Option<ProxySettings> {
    let Some(dbid) = gucs::dbid() else {
        log!("ic-proxy: ic_proxy.dbid is not set; the proxy stays off (set it and restart the server to start it)");
        shmem::mark_stopped("");
        return None;
    };
    let (port, postmaster_pid, my_pid) = unsafe {
        (
            pg_sys::PostPortNumber as u16,
            pg_sys::PostmasterPid as u32,
            pg_sys::MyProcPid,
        )
    };
    let socket = socket_path(&gucs::socket_dir(), port, postmaster_pid);
    let mut settings = ProxySettings::new(dbid, socket);
    settings.pid = my_pid;
    settings.dialect = gucs::dialect();
    settings.max_packet_size = gucs::max_packet_size();
    settings.peer_queue_bytes = gucs::peer_queue_bytes();
    // The built-in proxy of Cloudberry/Greenplum binds the same path at every
    // start, whatever gp_interconnect_type says: the worker always takes it
    // back, or the backends would reach that proxy instead.
    settings.take_over = true;
    settings.flow = gucs::flow_params();
    if let Some(problem) = gucs::flow_problem(&settings.flow) {
        // A restart would fail the same way: stay off (exit 0, not
        // restarted) and say why, in the log and in ic_proxy_info().
        let message = format!("ic-proxy: cannot start: {}", problem.message);
        let mut report = pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            "ic_proxy_worker_main",
        )
        .set_hint(problem.hint.clone());
        if !problem.detail.is_empty() {
            report = report.set_detail(problem.detail.clone());
        }
        report.report(PgLogLevel::WARNING);
        shmem::mark_stopped(&format!("{}. {}", problem.message, problem.hint));
        return None;
    }
    Some(settings)
}

/// Every link and logical connection holds a descriptor: the soft limit is
/// raised before the runtime's threads exist, so they all have it.
fn raise_fd_limit() -> ic_proxy_core::fd_limit::FdLimits {
    match ic_proxy_core::fd_limit::raise_nofile() {
        Ok(l) => l,
        Err(e) => {
            let l = ic_proxy_core::fd_limit::nofile();
            warning!("ic-proxy: cannot raise the open files limit: {e}; it stays at {l}");
            l
        }
    }
}

/// The tokio runtime, its threads started with every signal blocked; a
/// runtime that cannot start ends the worker (it is restarted).
fn start_runtime(threads: usize) -> tokio::runtime::Runtime {
    let runtime = with_signals_blocked(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("ic-proxy")
            .enable_all()
            .build()
    });
    match runtime {
        Ok(r) => r,
        Err(e) => {
            warning!("ic-proxy: cannot start the runtime: {e}");
            shmem::mark_stopped(&format!("cannot start the runtime: {e}"));
            unsafe { pg_sys::proc_exit(1) }
        }
    }
}

/// What the worker shows in shared memory besides the status board.
struct Shown {
    worker_pid: i32,
    dbid: u16,
    threads: u16,
    dialect: &'static str,
    max_packet_size: u32,
    socket_path: std::path::PathBuf,
}

impl Shown {
    fn new(settings: &ProxySettings, threads: usize) -> Shown {
        Shown {
            worker_pid: settings.pid,
            dbid: settings.dbid,
            threads: threads as u16,
            dialect: settings.dialect.name(),
            max_packet_size: settings.max_packet_size as u32,
            socket_path: settings.socket_path.clone(),
        }
    }

    /// Writes the proxy's state into shared memory.
    fn publish(&self, proxy: &ProxyHandle) {
        let config = proxy.current();
        let socket = self.socket_path.display().to_string();
        let id = shmem::Identity {
            worker_pid: self.worker_pid,
            dbid: self.dbid,
            content: config.map.get(self.dbid).map(|e| e.content),
            threads: self.threads,
            dialect: self.dialect,
            max_packet_size: self.max_packet_size,
            socket_path: &socket,
            map: &config.map,
            tls: &config.tls,
        };
        shmem::publish(&id, &proxy.status().snapshot(), true);
    }
}

/// The latch loop: reloads on SIGHUP, writes the log, publishes the status
/// and trims memory, until SIGTERM, the postmaster's death, or the
/// runtime's failure.
fn serve(proxy: &mut ProxyHandle, logs: &LogBridge, shown: &Shown) -> Exit {
    let mut trim_checked = std::time::Instant::now();
    loop {
        let rc = unsafe {
            let rc = pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
                TICK.as_millis() as _,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
            rc
        };
        if rc & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 {
            return Exit::PostmasterDied;
        }
        if BackgroundWorker::sigterm_received() {
            return Exit::Stop;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            LogBridge::follow_settings();
            let next = runtime_config(Some(&proxy.current()));
            let entries = next.map.len();
            if proxy.reload(next) {
                log!("ic-proxy: configuration reloaded ({entries} entries in the map)");
            }
        }
        logs.drain();
        // Once the proxy went quiet after work, give back what the work left.
        if trim_checked.elapsed() >= TRIM_EVERY {
            trim_checked = std::time::Instant::now();
            if proxy.trim_due() {
                // SAFETY: malloc_trim takes no pointer and only walks the C
                // library's own free lists; any thread may call it.
                unsafe { libc::malloc_trim(0) };
            }
        }
        if proxy.is_finished() {
            warning!("ic-proxy: the proxy runtime stopped unexpectedly; restarting the worker");
            return Exit::Failed;
        }
        shown.publish(proxy);
    }
}

/// Stops the runtime (within [`STOP_GRACE`], or at once when the
/// postmaster died) and ends the worker: exit 1 makes the postmaster
/// restart it.
fn stop(
    runtime: tokio::runtime::Runtime,
    proxy: ProxyHandle,
    exit: Exit,
    logs: &LogBridge,
    shown: &Shown,
) {
    if let Exit::PostmasterDied = exit {
        proxy.cancel();
        runtime.shutdown_timeout(Duration::from_millis(200));
        let _ = std::fs::remove_file(&shown.socket_path);
        unsafe { pg_sys::proc_exit(1) };
    }
    let mut failed = matches!(exit, Exit::Failed);
    // A runtime that stopped late, or whose task failed while stopping, was
    // still asked to stop: only its own error makes the worker restart.
    if let Err(StopError::Failed(e)) = runtime.block_on(proxy.stop(STOP_GRACE)) {
        warning!("ic-proxy: {e}");
        failed = true;
    }
    runtime.shutdown_timeout(Duration::from_millis(500));
    logs.drain();
    shmem::mark_stopped(if failed {
        "the proxy runtime failed (see the server log); the worker restarts"
    } else {
        ""
    });
    log!("ic-proxy: stopped");
    if failed {
        unsafe { pg_sys::proc_exit(1) };
    }
}
