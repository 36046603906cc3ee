//! The background worker "ic proxy process": its main thread handles
//! signals, runs the latch loop, re-reads the configuration on SIGHUP and
//! hands the new map to the runtime, publishes status to shared memory and
//! writes the runtime's log lines through elog. The runtime's threads never
//! call PostgreSQL: they talk to this thread through a channel, a watch and
//! atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ic_proxy_core::{run, socket_path, Listeners, ProxySettings, RuntimeConfig, StatusBoard};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

// ---- the log bridge ----------------------------------------------------------

struct Line {
    level: log::Level,
    text: String,
}

/// Runtime threads push log lines here; only the main thread writes them
/// out with elog. A full queue drops lines (and counts them) rather than
/// slowing the data path.
struct ChannelLog {
    tx: SyncSender<Line>,
    dropped: AtomicU64,
}

static LOGGER: OnceLock<ChannelLog> = OnceLock::new();

impl log::Log for ChannelLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = Line {
            level: r.level(),
            text: r.args().to_string(),
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
    fn flush(&self) {}
}

fn install_logger() -> Receiver<Line> {
    let (tx, rx) = sync_channel(4096);
    let _ = LOGGER.set(ChannelLog {
        tx,
        dropped: AtomicU64::new(0),
    });
    if let Some(l) = LOGGER.get() {
        let _ = log::set_logger(l);
    }
    set_log_level();
    rx
}

fn set_log_level() {
    log::set_max_level(match gucs::log_verbosity() {
        gucs::LogVerbosity::Terse => log::LevelFilter::Info,
        gucs::LogVerbosity::Verbose => log::LevelFilter::Debug,
        gucs::LogVerbosity::Debug => log::LevelFilter::Trace,
    });
}

fn drain_log(rx: &Receiver<Line>) {
    while let Ok(l) = rx.try_recv() {
        match l.level {
            log::Level::Error | log::Level::Warn => warning!("{}", l.text),
            _ => log!("{}", l.text),
        }
    }
    if let Some(l) = LOGGER.get() {
        let n = l.dropped.swap(0, Relaxed);
        if n > 0 {
            warning!("ic-proxy: {n} log lines were dropped (the log queue was full)");
        }
    }
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

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn ic_proxy_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let logs = install_logger();
    let Some(dbid) = gucs::dbid() else {
        log!("ic-proxy: ic_proxy.dbid is not set; the proxy stays off (set it and restart the server to start it)");
        shmem::mark_stopped("");
        return; // exit 0: not restarted
    };
    let (port, postmaster_pid, my_pid) = unsafe {
        (
            pg_sys::PostPortNumber as u16,
            pg_sys::PostmasterPid as u32,
            pg_sys::MyProcPid,
        )
    };
    let socket = socket_path(&gucs::socket_dir(), port, postmaster_pid);
    let mut settings = ProxySettings::new(dbid, socket.clone());
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
        return;
    }
    // Every link and logical connection holds a descriptor: raise the soft
    // limit before the runtime's threads exist, so they all have it.
    let fd_limits = match ic_proxy_core::fd_limit::raise_nofile() {
        Ok(l) => l,
        Err(e) => {
            let l = ic_proxy_core::fd_limit::nofile();
            warning!("ic-proxy: cannot raise the open files limit: {e}; it stays at {l}");
            l
        }
    };
    let threads = gucs::worker_threads();
    let runtime = with_signals_blocked(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("ic-proxy")
            .enable_all()
            .build()
    });
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            warning!("ic-proxy: cannot start the runtime: {e}");
            shmem::mark_stopped(&format!("cannot start the runtime: {e}"));
            unsafe { pg_sys::proc_exit(1) };
        }
    };
    let first = runtime_config(None);
    // The map the runtime has, for the status rows and this instance's content.
    let mut map = first.map.clone();
    let (config_tx, config_rx) = watch::channel(Arc::new(first));
    let status = StatusBoard::new();
    status.counters.fd_soft_limit.store(fd_limits.soft, Relaxed);
    status.counters.fd_hard_limit.store(fd_limits.hard, Relaxed);
    let shutdown = CancellationToken::new();
    let identity_socket = socket.display().to_string();
    let dialect_name = settings.dialect.name();
    let max_packet = settings.max_packet_size as u32;
    let handle = {
        let (settings, status, shutdown) = (settings, status.clone(), shutdown.clone());
        with_signals_blocked(|| {
            runtime.spawn(async move {
                run(settings, config_rx, Listeners::default(), shutdown, status).await
            })
        })
    };
    log!("ic-proxy: started (dbid {dbid}, socket {identity_socket}, dialect {dialect_name}, {threads} threads, open files limit {fd_limits})");

    let publish = |map: &ic_proxy_core::address_map::AddressMap, running: bool| {
        let content = map.get(dbid).map(|e| e.content);
        let id = shmem::Identity {
            worker_pid: my_pid,
            dbid,
            content,
            threads: threads as u16,
            dialect: dialect_name,
            max_packet_size: max_packet,
            socket_path: &identity_socket,
            map,
        };
        shmem::publish(&id, &status.snapshot(), running);
    };

    let mut exit_code = 0;
    let mut trim = ic_proxy_core::TrimPolicy::default();
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
            // No one to serve: stop at once, without the grace period.
            shutdown.cancel();
            runtime.shutdown_timeout(Duration::from_millis(200));
            let _ = std::fs::remove_file(&socket);
            unsafe { pg_sys::proc_exit(1) };
        }
        if BackgroundWorker::sigterm_received() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            set_log_level();
            let next = runtime_config(Some(&config_tx.borrow()));
            let changed = config_tx.send_if_modified(|cur| {
                if **cur == next {
                    false
                } else {
                    *cur = Arc::new(next.clone());
                    true
                }
            });
            if changed {
                map = next.map.clone();
                log!(
                    "ic-proxy: configuration reloaded ({} entries in the map)",
                    next.map.len()
                );
            }
        }
        drain_log(&logs);
        // Once the proxy went quiet after work, give back what the work left.
        if trim_checked.elapsed() >= TRIM_EVERY {
            trim_checked = std::time::Instant::now();
            if trim.tick(&status) {
                // SAFETY: malloc_trim takes no pointer and only walks the C
                // library's own free lists; any thread may call it.
                unsafe { libc::malloc_trim(0) };
            }
        }
        if handle.is_finished() {
            warning!("ic-proxy: the proxy runtime stopped unexpectedly; restarting the worker");
            exit_code = 1;
            break;
        }
        publish(&map, true);
    }

    shutdown.cancel();
    let stopped = runtime.block_on(async { tokio::time::timeout(STOP_GRACE, handle).await });
    if let Ok(Ok(Err(e))) = &stopped {
        warning!("ic-proxy: {e}");
        exit_code = 1;
    }
    runtime.shutdown_timeout(Duration::from_millis(500));
    drain_log(&logs);
    shmem::mark_stopped(if exit_code == 0 {
        ""
    } else {
        "the proxy runtime failed (see the server log); the worker restarts"
    });
    log!("ic-proxy: stopped");
    if exit_code != 0 {
        unsafe { pg_sys::proc_exit(exit_code) };
    }
}
