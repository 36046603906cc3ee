//! `ic-proxy run`: hosts one proxy runtime the way the extension's worker
//! does, minus PostgreSQL. It owns the process's signals (SIGHUP reloads
//! the map file, SIGTERM and SIGINT stop) and never lets a bad reload
//! replace a working map.

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ic_proxy_core::address_map::AddressMap;
use ic_proxy_core::flow::FlowParams;
use ic_proxy_core::tls::{TlsFiles, TlsMode, TlsPolicy, TlsVerify};
use ic_proxy_core::{Listeners, ProxyHandle, ProxySettings, RuntimeConfig, StopError};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::args::RunArgs;
use crate::map_source::{problem_lines, LoadError, MapSource};
use crate::sidecar::{describe_backend_socket, ServerFollower};
use crate::{count, EXIT_FAILURE, EXIT_USAGE};

/// How long runtime threads may linger once the proxy has stopped; the core
/// already bounds its own stop.
const RUNTIME_GRACE: Duration = Duration::from_secs(1);
/// How long the proxy may take to stop (the core bounds it to about 3 s).
const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn run_proxy(args: RunArgs) -> ExitCode {
    let source = match (&args.addresses, &args.addresses_file) {
        (Some(map), _) => MapSource::Inline(map.clone()),
        (None, Some(file)) => MapSource::File(file.clone()),
        // clap's group requires one of them.
        (None, None) => unreachable!("neither --addresses nor --addresses-file"),
    };
    let map = match source.load() {
        Ok(map) => map,
        Err(e) => {
            eprintln!("ic-proxy: {e}");
            if let LoadError::Invalid(problems) = &e {
                for line in problem_lines(problems) {
                    eprintln!("{line}");
                }
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let identity = match crate::sidecar::identity(&args) {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("ic-proxy: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut settings = ProxySettings::new(identity.dbid, identity.socket_path.clone());
    // --pid names the socket after the postmaster; PEER_HELLO carries the
    // proxy's own pid, as the C proxy sends MyProcPid.
    settings.pid = std::process::id() as i32;
    settings.dialect = args.wire.dialect;
    settings.max_packet_size = args.wire.max_packet_size;
    if let Some(bytes) = args.peer_queue_size {
        settings.peer_queue_bytes = bytes as usize;
    }
    settings.take_over = args.take_over;
    settings.flow = FlowParams {
        pause_at: args.flow_pause_threshold,
        resume_at: args.flow_resume_threshold,
        ack_interval: args.flow_ack_interval,
    };
    if let Err(e) = settings.flow.validate() {
        eprintln!(
            "ic-proxy: --flow-pause-threshold {} --flow-resume-threshold {} --flow-ack-interval {}: {e}",
            args.flow_pause_threshold, args.flow_resume_threshold, args.flow_ack_interval
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let mut config = RuntimeConfig::new(map);
    config.backend_socket = identity.backend_socket();
    if let Some(bytes) = args.early_cache_size {
        config.early_cache_bytes = bytes;
    }
    let tls = TlsSource {
        mode: args.tls,
        verify: args.tls_verify,
        files: args.tls_files(),
    };
    match tls.load() {
        Ok(policy) => config.tls = policy,
        Err(e) => {
            eprintln!("ic-proxy: --tls {}: {e}", args.tls);
            return ExitCode::from(EXIT_USAGE);
        }
    }
    if let Some(path) = &args.peer_auth_secret_file {
        match ic_proxy_core::auth::load_secret(path) {
            Ok(secret) => config.peer_secret = Some(secret),
            Err(e) => {
                eprintln!("ic-proxy: cannot use {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }

    // Every link and logical connection holds a descriptor: raise the soft
    // limit before the runtime's threads exist, so they all have it.
    let fd_limits = match ic_proxy_core::fd_limit::raise_nofile() {
        Ok(l) => {
            log::info!("ic-proxy: open files limit {l}");
            l
        }
        Err(e) => {
            let l = ic_proxy_core::fd_limit::nofile();
            log::warn!("ic-proxy: cannot raise the open files limit: {e}; it stays at {l}");
            l
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .thread_name("ic-proxy-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("ic-proxy: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let secret_file = args.peer_auth_secret_file.clone();
    let follower = identity.follower;
    let observe = crate::control::Observe {
        // A sidecar's control socket is named after its server's port as
        // found at start (`ic-proxy status --data-dir` reads the same
        // postmaster.pid); a sidecar started while its server is down has
        // none until it is restarted.
        control: args
            .port
            .or_else(|| follower.as_ref().and_then(|f| f.port()))
            .map(|port| crate::control::control_path(&args.socket_dir, port)),
        metrics: args.metrics_listen,
        threads: args.threads,
    };
    let sources = Sources {
        map: source,
        secret_file,
        tls,
    };
    let code = runtime.block_on(serve(
        settings, config, sources, fd_limits, follower, observe,
    ));
    runtime.shutdown_timeout(RUNTIME_GRACE);
    code
}

struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }
}

async fn serve(
    settings: ProxySettings,
    config: RuntimeConfig,
    sources: Sources,
    fd_limits: ic_proxy_core::fd_limit::FdLimits,
    follower: Option<ServerFollower>,
    observe: crate::control::Observe,
) -> ExitCode {
    // Before the socket exists, so nobody can signal a proxy that would
    // still die of the default action.
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("ic-proxy: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    log::info!(
        "ic-proxy: dbid {}: backends connect to {}, peers to {}",
        settings.dbid,
        describe_backend_socket(&settings, &config.backend_socket),
        peer_address(&config.map, settings.dbid)
    );

    let mut proxy = ProxyHandle::new(config);
    let counters = &proxy.status().counters;
    counters.fd_soft_limit.store(fd_limits.soft, Relaxed);
    counters.fd_hard_limit.store(fd_limits.hard, Relaxed);
    // The observers and the follower; the proxy has its own stop.
    let host = CancellationToken::new();
    let view = crate::view::ProxyView::new(
        &settings,
        observe.threads,
        proxy.status().clone(),
        proxy.config(),
    );
    let observers = match crate::control::Observers::start(&observe, Arc::new(view), &host).await {
        Ok(o) => o,
        Err(e) => {
            log::error!("ic-proxy: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(follower) = follower {
        tokio::spawn(follower.follow(proxy.config_sender(), host.clone()));
    }
    proxy.spawn(
        &tokio::runtime::Handle::current(),
        settings,
        Listeners::default(),
    );
    let mut trim_tick = tokio::time::interval(crate::memory::TRIM_EVERY);
    loop {
        tokio::select! {
            _ = trim_tick.tick() => {
                if proxy.trim_due() {
                    crate::memory::release_free_memory();
                }
            }
            ended = proxy.ended() => {
                // Only a failure ends the runtime before it is stopped.
                host.cancel();
                return exit_code(ended);
            }
            _ = signals.hangup.recv() => {
                sources.reload(&proxy);
            }
            _ = signals.terminate.recv() => {
                log::info!("ic-proxy: SIGTERM received, stopping");
                break;
            }
            _ = signals.interrupt.recv() => {
                log::info!("ic-proxy: SIGINT received, stopping");
                break;
            }
        }
    }
    host.cancel();
    let code = exit_code(proxy.stop(STOP_GRACE).await);
    observers.stop().await;
    log::info!("ic-proxy: stopped");
    code
}

fn exit_code(ended: Result<(), StopError>) -> ExitCode {
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("ic-proxy: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn peer_address(map: &AddressMap, dbid: u16) -> String {
    match map.get(dbid) {
        Some(e) => format!("{} (content {})", e.socket_addr_string(), e.content),
        None => format!("nothing (dbid {dbid} is not in the address map)"),
    }
}

/// What SIGHUP re-reads: the map file, the secret file, the TLS files.
struct Sources {
    map: MapSource,
    secret_file: Option<std::path::PathBuf>,
    tls: TlsSource,
}

impl Sources {
    /// Each one valid and changed goes to the runtime; anything else leaves
    /// what is in force.
    fn reload(&self, proxy: &ProxyHandle) {
        reload(&self.map, proxy);
        reload_secret(self.secret_file.as_deref(), proxy);
        reload_tls(&self.tls, proxy);
    }
}

/// Where TLS comes from: the flags, whose files are re-read on SIGHUP.
struct TlsSource {
    mode: TlsMode,
    verify: TlsVerify,
    files: Option<TlsFiles>,
}

impl TlsSource {
    fn load(&self) -> Result<TlsPolicy, ic_proxy_core::tls::TlsError> {
        TlsPolicy::load(self.mode, self.verify, self.files.as_ref())
    }
}

/// SIGHUP: re-read the TLS files (new links use them; links the new CA no
/// longer validates end); files that cannot be used leave TLS in force.
fn reload_tls(tls: &TlsSource, proxy: &ProxyHandle) {
    if tls.mode == TlsMode::Off {
        return;
    }
    let policy = match tls.load() {
        Ok(p) => p,
        Err(e) => {
            log::error!(
                "ic-proxy: reload of the TLS files: {e}; the certificates in force stay in use"
            );
            return;
        }
    };
    let current = proxy.current();
    if current.tls == policy {
        return;
    }
    log::info!("ic-proxy: reload of the TLS files: new certificates for new links");
    proxy.reload(RuntimeConfig {
        tls: policy,
        ..(*current).clone()
    });
}

/// SIGHUP: re-read the peer authentication secret file, when there is one,
/// and hand a changed secret to the runtime (which then ends every link made
/// without it); a file that cannot be used leaves the secret in force.
fn reload_secret(path: Option<&std::path::Path>, proxy: &ProxyHandle) {
    let Some(path) = path else {
        return;
    };
    let secret = match ic_proxy_core::auth::load_secret(path) {
        Ok(s) => s,
        Err(e) => {
            log::error!(
                "ic-proxy: reload of {}: {e}; keeping the peer authentication secret in force",
                path.display()
            );
            return;
        }
    };
    let current = proxy.current();
    if current.peer_secret.as_deref() == Some(&*secret) {
        return;
    }
    log::info!(
        "ic-proxy: reload of {}: a new peer authentication secret",
        path.display()
    );
    proxy.reload(RuntimeConfig {
        peer_secret: Some(secret),
        ..(*current).clone()
    });
}

/// SIGHUP: re-read the map file and hand a valid, changed map to the
/// runtime; anything else leaves the map in force untouched.
fn reload(source: &MapSource, proxy: &ProxyHandle) {
    if let MapSource::Inline(_) = source {
        log::warn!("ic-proxy: SIGHUP: the map came from --addresses, nothing to re-read");
        return;
    }
    let current = proxy.current();
    let map = match source.load() {
        Ok(map) => map,
        Err(e) => {
            log::error!(
                "ic-proxy: reload of {source} rejected: {e}; keeping the map in force ({})",
                count(current.map.len() as u64, "entry")
            );
            if let LoadError::Invalid(problems) = &e {
                for line in problem_lines(problems) {
                    log::error!("ic-proxy: {line}");
                }
            }
            return;
        }
    };
    if map == current.map {
        log::info!("ic-proxy: reload of {source}: the map is unchanged");
        return;
    }
    let diff = AddressMap::diff(&current.map, &map);
    log::info!(
        "ic-proxy: reload of {source}: applying {} ({} added, {} removed, {} changed)",
        count(map.len() as u64, "entry"),
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    );
    proxy.reload(RuntimeConfig {
        map,
        ..(*current).clone()
    });
}
