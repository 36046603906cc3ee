//! `ic-proxy-bench`: the proxy's benchmark suite (issue 6). It starts real
//! `ic-proxy run` processes on loopback, drives them with backend clients
//! from this process, and measures every figure beside a DIRECT baseline
//! taken in the same run between the same two endpoints (a plain TCP
//! loopback socket per logical connection with the same ic-tcp framing).
//! It prints one Markdown table per scenario and writes everything as JSON.
//! It fails only on lost, reordered or corrupted data, a stall, or a proxy
//! that could not be set up; never on speed.
//!
//! `--quick` runs every scenario at tiny sizes: the smoke test of the test
//! command.
//!
//! Scenario `pg` measures the proxy as it runs in production, the background
//! worker inside two real PostgreSQL 15 servers preloading the extension
//! (`--pg-lib`, else the one installed in pkglibdir; skipped without one).

mod cluster;
mod flows;
mod latency;
mod machine;
mod memory;
mod perf_fold;
mod pg;
mod report;
mod stats;
mod suite;
mod tls;
mod transport;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::json;

use cluster::{find_ic_proxy, Cluster};
use flows::Route;
use machine::MachineInfo;
use report::Report;
use stats::Percentiles;
use suite::{noise_now, Bench, Findings, PAYLOAD_8K};
use transport::{Endpoints, ProxyEnd};

/// Descriptors asked for: 100k logical connections are 200k client sockets
/// here and 100k sockets in each proxy.
const NOFILE_WANTED: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1: one-way throughput with 8 KB packets, 2 and 4 instances
    Throughput,
    /// 2: one-way throughput with 64 B, 1 KB and 3 KB packets
    Small,
    /// 3: 64-byte ping-pong and the query-like exchange, idle and busy
    Latency,
    /// 4: logical-connection churn
    Churn,
    /// 5: CPU per GB (needs throughput) and scaling from 1 to 2 threads
    Cpu,
    /// 6: memory per idle logical connection and back to idle
    Memory,
    /// 6: a mesh of many peers around one hub
    Mesh,
    /// 8: TLS links against plaintext ones: 8 KB throughput (1/16/64 conns) with CPU per
    /// GB, the query-like exchange, memory per link
    Tls,
    /// 7: 8 KB throughput, CPU per GB and ping-pong through the worker in two PostgreSQL 15
    /// servers (needs the extension library: --pg-lib)
    Pg,
}

impl Scenario {
    /// Whether it runs standalone `ic-proxy` processes.
    fn needs_ic_proxy(self) -> bool {
        self != Scenario::Pg
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "ic-proxy-bench",
    version,
    about = "Benchmarks real ic-proxy processes against a direct TCP baseline measured in the same run"
)]
struct Args {
    /// Smoke test: every scenario at tiny sizes, one run each; fails only on lost data or a stall
    #[arg(long)]
    quick: bool,
    /// Also write every result, with every run, as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The ic-proxy binary [default: the one next to this binary]
    #[arg(long, value_name = "PATH")]
    ic_proxy: Option<PathBuf>,
    /// The extension library (cloudberry_ic_proxy.so) the PostgreSQL servers of scenario pg
    /// preload [default: $(pg_config --pkglibdir)/cloudberry_ic_proxy.so if it exists]
    #[arg(long, value_name = "PATH")]
    pg_lib: Option<PathBuf>,
    /// Repetitions of every measurement [default: 3; 1 with --quick]
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Seconds per throughput run [default: 4; 0.5 with --quick]
    #[arg(long, value_name = "S")]
    secs: Option<f64>,
    /// Seconds per latency run [default: 3; 0.3 with --quick]
    #[arg(long, value_name = "S")]
    latency_secs: Option<f64>,
    /// Run only these scenarios (comma-separated)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    only: Vec<Scenario>,
    /// Most idle logical connections held [default: 100000; 100 with --quick]
    #[arg(long, value_name = "N")]
    max_idle: Option<usize>,
    /// Peers around the hub [default: 999; 20 with --quick]
    #[arg(long, value_name = "N")]
    mesh_peers: Option<usize>,
    /// Runtime threads of this process [default: the number of cores]
    #[arg(long, value_name = "N")]
    bench_threads: Option<usize>,
    /// Profiling mode: start two proxies, write their pids (sender, receiver) to --pids-file,
    /// then run 8 KB packets on --profile-conns connections for SECS seconds
    #[arg(long, value_name = "SECS", requires = "pids_file")]
    profile_load: Option<f64>,
    #[arg(long, value_name = "N", default_value_t = 16)]
    profile_conns: usize,
    /// In profiling mode, run 64-byte ping-pong on --profile-conns connections instead
    #[arg(long)]
    profile_ping_pong: bool,
    /// In profiling mode, run the query-like exchange (a fresh logical connection, 64 B each
    /// way, BYE each way) back to back instead
    #[arg(long, conflicts_with = "profile_ping_pong")]
    profile_query: bool,
    #[arg(long, value_name = "FILE")]
    pids_file: Option<PathBuf>,
    /// KEY=VALUE in the environment of every proxy process (repeatable), for experiments
    /// such as LD_PRELOAD of another allocator
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    proxy_env: Vec<(String, String)>,
    /// A flag added to every `ic-proxy run` (repeatable, e.g.
    /// --proxy-arg=--flow-pause-threshold=400), for experiments
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    proxy_arg: Vec<String>,
    /// Read `perf script` output on stdin and print where the time goes, by proxy function and system call
    #[arg(long)]
    fold_perf_script: bool,
    /// Internal: be the echoing end of a cross-process ping-pong ("direct" or dbid,content,socket)
    #[arg(long, hide = true)]
    echo_peer: Option<String>,
    #[arg(long, hide = true)]
    echo_key: Option<String>,
    /// Internal: hold this many logical connections for the memory scenario
    #[arg(long, hide = true, requires_all = ["hold_a", "hold_b"])]
    hold_pairs: Option<usize>,
    #[arg(long, hide = true)]
    hold_a: Option<String>,
    #[arg(long, hide = true)]
    hold_b: Option<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The sizes of one bench run.
#[derive(Debug, serde::Serialize)]
struct Plan {
    quick: bool,
    runs: usize,
    secs: f64,
    latency_secs: f64,
    stall_secs: f64,
    conns: Vec<usize>,
    all_to_all_conns: Vec<usize>,
    small_conns: Vec<usize>,
    ping_pong_conns: Vec<usize>,
    churn_tasks: usize,
    scaling_conns: Vec<usize>,
    idle_steps: Vec<usize>,
    mesh_peers: usize,
    pg_conns: Vec<usize>,
}

impl Plan {
    fn new(a: &Args) -> Plan {
        let q = a.quick;
        let max_idle = a.max_idle.unwrap_or(if q { 100 } else { 100_000 });
        let mut idle_steps: Vec<usize> = [1_000, 10_000, 100_000]
            .into_iter()
            .filter(|s| *s < max_idle)
            .collect();
        idle_steps.push(max_idle);
        Plan {
            quick: q,
            runs: a.runs.unwrap_or(if q { 1 } else { 3 }).max(1),
            secs: a.secs.unwrap_or(if q { 0.5 } else { 4.0 }),
            latency_secs: a.latency_secs.unwrap_or(if q { 0.3 } else { 3.0 }),
            stall_secs: if q { 10.0 } else { 20.0 },
            conns: if q { vec![1, 16] } else { vec![1, 16, 64, 256] },
            all_to_all_conns: if q { vec![1] } else { vec![1, 16] },
            small_conns: vec![1, 16],
            ping_pong_conns: if q { vec![1, 8] } else { vec![1, 64] },
            churn_tasks: if q { 4 } else { 8 },
            scaling_conns: if q { vec![16] } else { vec![1, 16, 64] },
            idle_steps,
            mesh_peers: a.mesh_peers.unwrap_or(if q { 20 } else { 999 }),
            pg_conns: if q { vec![1, 16] } else { vec![1, 16, 64] },
        }
    }

    fn stall(&self) -> Duration {
        Duration::from_secs_f64(self.stall_secs)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread or child exists, so every proxy inherits it.
    let nofile = machine::raise_nofile(NOFILE_WANTED);
    let threads = args
        .bench_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ic-proxy-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
        tokio::select! {
            code = bench_main(args, nofile) => code,
            sig = interrupted() => {
                // Leaving bench_main drops what it started: proxies are
                // stopped, PostgreSQL servers stopped, directories removed.
                eprintln!("ic-proxy-bench: {sig}: stopped what was running");
                ExitCode::from(130)
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

/// The first SIGINT or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => tokio::select! {
            _ = i.recv() => "interrupted (SIGINT)",
            _ = t.recv() => "terminated (SIGTERM)",
        },
        _ => std::future::pending().await,
    }
}

async fn bench_main(args: Args, nofile: u64) -> ExitCode {
    if args.fold_perf_script {
        let f = perf_fold::Folded::read(std::io::stdin().lock());
        println!("{}", f.markdown());
        return ExitCode::SUCCESS;
    }
    if let (Some(n), Some(a), Some(b)) = (args.hold_pairs, &args.hold_a, &args.hold_b) {
        return match (ProxyEnd::from_arg(a), ProxyEnd::from_arg(b)) {
            (Ok(a), Ok(b)) => memory::hold_main(a, b, n).await,
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("ic-proxy-bench: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(peer) = &args.echo_peer {
        return match latency::echo_peer_main(peer, args.echo_key.as_deref()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("error {e}");
                ExitCode::FAILURE
            }
        };
    }
    let wanted = |s: Scenario| args.only.is_empty() || args.only.contains(&s);
    let needs_ic_proxy = args.profile_load.is_some()
        || args.only.is_empty()
        || args.only.iter().any(|s| s.needs_ic_proxy());
    let bin = if needs_ic_proxy {
        match find_ic_proxy(args.ic_proxy.as_deref()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("ic-proxy-bench: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        PathBuf::new()
    };
    // The pg scenario: asked for by name (--only pg) or with --pg-lib, a
    // library that cannot be used is an error; in the full suite, a missing
    // one only skips it.
    let mut skipped = Vec::new();
    let pg_lib = if wanted(Scenario::Pg) && args.profile_load.is_none() {
        match pg::find_lib(args.pg_lib.as_deref()) {
            Ok(l) => Some(l),
            Err(e) if args.pg_lib.is_some() || args.only.contains(&Scenario::Pg) => {
                eprintln!("ic-proxy-bench: scenario pg: {e}\n{}", pg::BUILD_HINT);
                return ExitCode::from(2);
            }
            Err(e) => {
                skipped.push(format!(
                    "scenario pg (the worker inside PostgreSQL) skipped: {e}"
                ));
                None
            }
        }
    } else {
        None
    };
    let _ = cluster::PROXY_ENV.set(args.proxy_env.clone());
    let _ = cluster::PROXY_ARGS.set(args.proxy_arg.clone());
    if let (Some(secs), Some(file)) = (args.profile_load, &args.pids_file) {
        let load = if args.profile_ping_pong {
            ProfileLoad::PingPong
        } else if args.profile_query {
            ProfileLoad::Query
        } else {
            ProfileLoad::Stream
        };
        return profile_load(&bin, secs, args.profile_conns, load, file).await;
    }
    let plan = Plan::new(&args);
    let machine = MachineInfo::read();
    println!(
        "# ic-proxy-bench{}\n\nmachine: {} cores ({}), {:.1} GiB, kernel {}, {}, {} build; RLIMIT_NOFILE {nofile}; load average {}\n",
        if plan.quick { " --quick" } else { "" },
        machine.nproc,
        machine.cpu_model,
        machine.mem_total_gib,
        machine.kernel,
        machine.rustc,
        machine.build_profile,
        machine::load_average()
    );
    for s in &skipped {
        println!("{s}; to include it, {}\n", pg::BUILD_HINT);
    }
    let mut b = Bench {
        noise_mark: noise_now(&[]),
        report: Report {
            machine,
            load_average: [machine::load_average(), String::new()],
            options: json!({ "plan": &plan, "ic_proxy": bin.display().to_string(), "nofile": nofile,
                             "pg_lib": pg_lib.as_ref().map(|l| json!({ "path": l.path.display().to_string(), "how": l.how, "modified": l.modified })),
                             "proxy_env": args.proxy_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                             "proxy_args": args.proxy_arg }),
            sections: Vec::new(),
            targets: Vec::new(),
            problems: Vec::new(),
            proxy_warnings: Vec::new(),
            skipped,
        },
        plan,
        bin,
        nofile,
        found: Findings::default(),
        pg_lib,
        also_ours: Vec::new(),
    };
    let only = args.only.clone();
    b.run(&only).await;
    b.targets();
    b.report.load_average[1] = machine::load_average();
    println!("load average at the end: {}\n", b.report.load_average[1]);
    if b.plan.quick {
        println!("(--quick: the targets below are shown for the form only; these sizes say nothing about speed)\n");
    }
    println!("{}", b.report.targets_markdown());
    if !b.report.proxy_warnings.is_empty() {
        println!("proxy warnings:");
        for w in &b.report.proxy_warnings {
            println!("  {w}");
        }
    }
    if let Some(path) = &args.json {
        match serde_json::to_string_pretty(&b.report) {
            Ok(s) => {
                if let Err(e) = std::fs::write(path, s + "\n") {
                    b.report
                        .problems
                        .push(format!("cannot write {}: {e}", path.display()));
                } else {
                    println!("results written to {}", path.display());
                }
            }
            Err(e) => b.report.problems.push(format!("cannot encode JSON: {e}")),
        }
    }
    // Again at the end, which is what a cut log keeps.
    for s in &b.report.skipped {
        println!("{s}");
    }
    if b.report.problems.is_empty() {
        println!("ic-proxy-bench: every byte arrived intact, no stall");
        ExitCode::SUCCESS
    } else {
        println!("ic-proxy-bench: {} problem(s):", b.report.problems.len());
        for p in &b.report.problems {
            println!("  {p}");
        }
        ExitCode::FAILURE
    }
}

/// What the profiling mode runs through its two proxies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProfileLoad {
    /// 8 KB packets one way.
    Stream,
    /// 64-byte ping-pong.
    PingPong,
    /// The query-like exchange, one after the other.
    Query,
}

/// The load `perf` samples: two proxies, 8 KB packets (or `load`) on `conns` logical
/// connections for `secs`. The pids go to `pids_file` as the load starts;
/// the profiler, started on them, samples a window inside it (`bench.sh
/// --profile` runs the load 2 s longer than it records).
async fn profile_load(
    bin: &Path,
    secs: f64,
    conns: usize,
    load: ProfileLoad,
    pids_file: &Path,
) -> ExitCode {
    let pair = match Cluster::start(bin, &[-1, 0], 2).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ic-proxy-bench: starting two proxies: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pids = pair.pids();
    if let Err(e) = std::fs::write(pids_file, format!("{} {}\n", pids[0], pids[1])) {
        eprintln!("ic-proxy-bench: cannot write {}: {e}", pids_file.display());
        return ExitCode::FAILURE;
    }
    if load != ProfileLoad::Stream {
        let ep = Endpoints::Proxy {
            a: pair.end(0),
            b: pair.end(1),
        };
        let stall = Duration::from_secs(20);
        let (what, r) = if load == ProfileLoad::PingPong {
            (
                format!("64-byte ping-pong on {conns} conns"),
                latency::ping_pong(&ep, conns, secs, stall).await,
            )
        } else {
            (
                "query-like exchanges".to_string(),
                latency::query_like(&ep, secs, stall).await,
            )
        };
        return match r {
            Ok(mut v) => {
                let n = v.len();
                let p = Percentiles::of(&mut v);
                println!(
                    "profile load: {what}, {secs} s: {n} exchanges, p50 {} µs",
                    p.map_or(0, |p| p.p50 / 1000)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ic-proxy-bench: profile load: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let route = [Route {
        ep: Arc::new(Endpoints::Proxy {
            a: pair.end(0),
            b: pair.end(1),
        }),
        conns,
    }];
    match flows::one_way(&route, PAYLOAD_8K, secs, Duration::from_secs(20), &pids).await {
        Ok(o) => {
            let c = o.cpu_per_gb();
            println!(
                "profile load: {conns} conns, 8 KB packets, {:.1} s: {:.0} MB/s; core-s/GB sending {:.2}, receiving {:.2}",
                o.secs,
                o.mb_per_s(),
                c[0],
                c[1]
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ic-proxy-bench: profile load: {e}");
            ExitCode::FAILURE
        }
    }
}
