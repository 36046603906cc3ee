//! The suite: runs the scenarios in order against real proxies, each
//! measurement beside its direct baseline, fills one report section per
//! scenario and checks the targets against the figures. It never
//! fails on speed: only lost data, a stall or a failed set-up is a problem.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::flows::{self, FlowOutcome, Route};
use crate::latency::{self, EchoPeer};
use crate::machine::{self, rss_bytes, BusyLoop};
use crate::memory;
use crate::pg::{PgLib, PgPair};
use crate::report::{factor, mib, percent, runs_json, spread, Report, Section, Target};
use crate::stats::{paired_ratios, Percentiles, Spread};
use crate::transport::{self, Endpoints};
use crate::{Plan, Scenario};

/// Payload of an 8 KB ic-tcp packet: 8188 bytes + the 4-byte length.
pub(crate) const PAYLOAD_8K: usize = 8188;
/// The longest two PostgreSQL servers may take to start and link their workers.
const PG_START_DEADLINE: Duration = Duration::from_secs(90);
/// Small packets, as ic-tcp packets of 64 B, 1 KB and 3 KB.
pub(crate) const SMALL: [usize; 3] = [60, 1020, 3068];

/// The exchanges of the latency scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    /// 64-byte ping-pong on this many connections at once.
    PingPong(usize),
    /// The query-like exchange on a fresh logical connection.
    Query,
    /// Ping-pong on one connection whose echoing end is another process.
    CrossProcess,
}

/// What the targets are checked against.
#[derive(Default)]
pub(crate) struct Findings {
    /// 8 KB, two instances: proxy/direct by connection count.
    throughput_ratio: BTreeMap<usize, Spread>,
    /// (case, sending proxy, receiving proxy) core-seconds per GB.
    cpu_per_gb: Vec<(String, Option<Spread>, Option<Spread>)>,
    /// (load, p50 ratio, p99 ratio) of the query-like exchange.
    query: Vec<(&'static str, Option<Spread>, Option<Spread>)>,
    /// (load, p50 ratio) of 64 B ping-pong on one connection.
    ping_pong_1: Vec<(&'static str, Option<Spread>)>,
    /// (payload, conns, MB/s) of the small-packet runs that finished.
    small: Vec<(usize, usize, Option<Spread>)>,
    small_failed: bool,
    /// (connections, sending proxy KiB, receiving proxy KiB) per idle connection.
    idle_per_conn: Vec<(usize, f64, f64)>,
    /// (case, after / idle) of each proxy.
    back_to_idle: Vec<(String, f64)>,
    /// Most idle logical connections held and probed without error.
    held: Option<usize>,
    idle_failed: bool,
    /// (peers, every link up after the hold).
    mesh: Option<(usize, bool)>,
    /// Through the workers in PostgreSQL: 8 KB proxy/direct by connection count.
    pg_ratio: BTreeMap<usize, Spread>,
    /// (conns, sending worker, receiving worker) core-seconds per GB.
    pg_cpu_per_gb: Vec<(usize, Option<Spread>, Option<Spread>)>,
    /// 64 B ping-pong p50, worker / direct, 1 connection, other core idle.
    pg_ping_pong: Option<Option<Spread>>,
    /// 8 KB, TLS / plaintext links, by connection count.
    pub(crate) tls_throughput_ratio: BTreeMap<usize, Spread>,
    /// Median query-like p50 over a TLS link minus over a plaintext one, µs.
    pub(crate) tls_query_extra_us: Option<f64>,
}

pub(crate) struct Bench {
    /// Machine busy time, our own CPU time and the clock when the last
    /// section ended: what other processes did meanwhile.
    pub(crate) noise_mark: (f64, f64, std::time::Instant),
    pub(crate) plan: Plan,
    pub(crate) bin: PathBuf,
    pub(crate) nofile: u64,
    pub(crate) report: Report,
    pub(crate) found: Findings,
    /// The extension library of the PostgreSQL scenario; None: it is skipped.
    pub(crate) pg_lib: Option<PgLib>,
    /// Processes outside our process tree whose CPU time is the bench's own
    /// (the PostgreSQL servers, which daemonize), not other processes'.
    pub(crate) also_ours: Vec<u32>,
}

/// Keeps the largest RSS seen of some processes, sampled every 100 ms.
struct RssSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = vec![0u64; pids.len()];
            loop {
                for (p, m) in pids.iter().zip(&mut peak) {
                    *m = (*m).max(rss_bytes(*p).unwrap_or(0));
                }
                tokio::select! {
                    _ = s.cancelled() => return peak,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        RssSampler { stop, task }
    }

    async fn finish(self) -> Vec<u64> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

fn label_kb(payload: usize) -> String {
    let wire = payload + transport::LEN_FIELD;
    if wire >= 1024 {
        format!("{} KB", wire / 1024)
    } else {
        format!("{wire} B")
    }
}

impl Bench {
    pub(crate) fn problem(&mut self, what: &str, e: impl std::fmt::Display) {
        let p = format!("{what}: {e}");
        eprintln!("ic-proxy-bench: PROBLEM: {p}");
        self.report.problems.push(p);
    }

    pub(crate) fn emit(&mut self, mut s: Section) {
        let (busy0, ours0, t0) = self.noise_mark;
        self.noise_mark = noise_now(&self.also_ours);
        let (busy1, ours1, _) = self.noise_mark;
        let secs = t0.elapsed().as_secs_f64();
        let cores = self.report.machine.nproc as f64;
        let foreign = (busy1 - busy0 - (ours1 - ours0)).max(0.0);
        s.note(format!(
            "Other processes on the machine: {:.1} core-s over the {secs:.0} s of this scenario ({:.0}% of the {cores} cores).",
            foreign,
            100.0 * foreign / (secs * cores).max(1e-9)
        ));
        s.foreign_cpu_share = Some(foreign / (secs * cores).max(1e-9));
        println!("{}", s.markdown());
        self.report.sections.push(s);
    }

    pub(crate) async fn run(&mut self, only: &[Scenario]) {
        let want = |s: Scenario| only.is_empty() || only.contains(&s);
        let loads = [
            Scenario::Throughput,
            Scenario::Small,
            Scenario::Latency,
            Scenario::Churn,
            Scenario::Cpu,
        ];
        if loads.iter().any(|s| want(*s)) {
            let mut pair = match Cluster::start(&self.bin, &[-1, 0], 2).await {
                Ok(c) => c,
                Err(e) => return self.problem("starting two proxies", e),
            };
            let pids = pair.pids();
            let idle: Vec<u64> = settled_rss_each(&pids).await;
            let sampler = RssSampler::start(pids.clone());
            if want(Scenario::Throughput) {
                self.throughput(&mut pair).await;
                self.all_to_all().await;
            }
            if want(Scenario::Small) {
                self.small(&mut pair).await;
            }
            if want(Scenario::Latency) {
                self.latency(&pair).await;
            }
            if want(Scenario::Churn) {
                self.churn(&pair).await;
            }
            if want(Scenario::Cpu) {
                self.cpu_per_gb();
                self.scaling(&mut pair).await;
            }
            let peak = sampler.finish().await;
            let after: Vec<u64> = settled_after_load(&pids).await;
            if let Err(e) = pair.check() {
                self.problem("the proxies after the load scenarios", e);
            }
            self.report.proxy_warnings.extend(pair.warnings());
            if want(Scenario::Memory) {
                self.back_to_idle(&idle, &peak, &after);
            }
        }
        if want(Scenario::Tls) {
            self.tls().await;
        }
        if want(Scenario::Memory) {
            self.idle_connections().await;
        }
        if want(Scenario::Mesh) {
            self.mesh().await;
        }
        if want(Scenario::Pg) {
            if let Some(lib) = self.pg_lib.clone() {
                self.pg(&lib).await;
            }
        }
    }

    /// Alternates direct and proxy runs of the same streams; every run of
    /// each, or None (and a problem) if one failed.
    /// 8 KB packets on `conns` connections, direct (a fresh listener) and
    /// through `proxy`, alternating. Err once a problem is recorded that ends
    /// the scenario (no direct listener); Ok(None) when this step failed.
    async fn compare_8k(
        &mut self,
        what: &str,
        proxy: &Arc<Endpoints>,
        conns: usize,
        pids: &[u32],
    ) -> Result<Option<(Vec<FlowOutcome>, Vec<FlowOutcome>)>, ()> {
        let direct = match Endpoints::direct().await {
            Ok(d) => Arc::new(d),
            Err(e) => {
                self.problem("direct listener", e);
                return Err(());
            }
        };
        let proxy = Route {
            ep: proxy.clone(),
            conns,
        };
        Ok(self
            .compare_flows(
                what,
                &[Route { ep: direct, conns }],
                &[proxy],
                PAYLOAD_8K,
                pids,
            )
            .await)
    }

    async fn compare_flows(
        &mut self,
        what: &str,
        direct: &[Route],
        proxy: &[Route],
        payload: usize,
        watch: &[u32],
    ) -> Option<(Vec<FlowOutcome>, Vec<FlowOutcome>)> {
        let (mut d, mut p) = (Vec::new(), Vec::new());
        let stall = self.plan.stall();
        for _ in 0..self.plan.runs {
            match flows::one_way(direct, payload, self.plan.secs, stall, &[]).await {
                Ok(o) => d.push(o),
                Err(e) => {
                    self.problem(&format!("{what}, direct"), e);
                    return None;
                }
            }
            match flows::one_way(proxy, payload, self.plan.secs, stall, watch).await {
                Ok(o) => p.push(o),
                Err(e) => {
                    self.problem(&format!("{what}, through the proxies"), e);
                    return None;
                }
            }
        }
        Some((d, p))
    }

    /// Table cells and JSON of a compared flow: proxy MB/s, packets/s,
    /// direct MB/s, ratio.
    fn flow_cells(d: &[FlowOutcome], p: &[FlowOutcome]) -> (Vec<String>, Value, Option<Spread>) {
        let pm: Vec<f64> = p.iter().map(|o| o.mb_per_s()).collect();
        let pk: Vec<f64> = p.iter().map(|o| o.packets_per_s() / 1000.0).collect();
        let dm: Vec<f64> = d.iter().map(|o| o.mb_per_s()).collect();
        let dk: Vec<f64> = d.iter().map(|o| o.packets_per_s() / 1000.0).collect();
        let r = paired_ratios(&pm, &dm);
        (
            vec![
                spread(Spread::of(&pm), 0),
                spread(Spread::of(&pk), 1),
                spread(Spread::of(&dm), 0),
                percent(r),
            ],
            json!({
                "proxy_mb_s": runs_json(&pm),
                "proxy_kpackets_s": runs_json(&pk),
                "direct_mb_s": runs_json(&dm),
                "direct_kpackets_s": runs_json(&dk),
                "ratio": r,
            }),
            r,
        )
    }

    async fn throughput(&mut self, pair: &mut Cluster) {
        let mut s = Section::new(
            "throughput_8k",
            "1. One-way throughput, 8 KB ic-tcp packets, two instances",
            &[
                "logical conns",
                "proxy MB/s (min / med / max)",
                "proxy kpackets/s",
                "direct MB/s",
                "proxy / direct (med, min–max)",
            ],
        );
        s.note(format!(
            "8192-byte ic-tcp packets (8188 B payload + 4), one packet per write; {} s per run, {} runs, direct and proxy alternating. MB = 10^6 ic-tcp bytes delivered and digest-checked.",
            self.plan.secs, self.plan.runs
        ));
        let pids = pair.pids();
        let proxy = Arc::new(Endpoints::Proxy {
            a: pair.end(0),
            b: pair.end(1),
        });
        for &conns in &self.plan.conns.clone() {
            let what = format!("8 KB throughput, {conns} conns");
            let Ok(step) = self.compare_8k(&what, &proxy, conns, &pids).await else {
                return;
            };
            let Some((d, p)) = step else {
                continue;
            };
            let (mut cells, mut data, ratio) = Self::flow_cells(&d, &p);
            cells.insert(0, conns.to_string());
            if let Some(r) = ratio {
                self.found.throughput_ratio.insert(conns, r);
            }
            let sender: Vec<f64> = p.iter().map(|o| o.cpu_per_gb()[0]).collect();
            let receiver: Vec<f64> = p.iter().map(|o| o.cpu_per_gb()[1]).collect();
            self.found.cpu_per_gb.push((
                format!("2 instances, {conns} conns"),
                Spread::of(&sender),
                Spread::of(&receiver),
            ));
            data["conns"] = json!(conns);
            data["payload"] = json!(PAYLOAD_8K);
            data["cpu_s_per_gb"] = json!({ "sender_proxy": runs_json(&sender), "receiver_proxy": runs_json(&receiver) });
            s.row(cells, data);
        }
        if let Err(e) = pair.check() {
            self.problem("the two proxies after the 8 KB runs", e);
        }
        self.emit(s);
    }

    async fn all_to_all(&mut self) {
        let mut s = Section::new(
            "throughput_8k_all_to_all",
            "1b. One-way throughput, 8 KB packets, all-to-all among 4 instances",
            &[
                "conns per ordered pair",
                "proxy MB/s (total)",
                "proxy kpackets/s",
                "direct MB/s",
                "proxy / direct",
            ],
        );
        s.note("Every ordered pair of the 4 instances (12 pairs) streams at once; the figure is the total delivered. The direct baseline opens the same 12 × N sockets.");
        let mut quad = match Cluster::start(&self.bin, &[-1, 0, 1, 2], 2).await {
            Ok(c) => c,
            Err(e) => return self.problem("starting four proxies", e),
        };
        let pids = quad.pids();
        for &conns in &self.plan.all_to_all_conns.clone() {
            let (mut direct, mut proxy) = (Vec::new(), Vec::new());
            for i in 0..4 {
                for j in 0..4 {
                    if i == j {
                        continue;
                    }
                    match Endpoints::direct().await {
                        Ok(d) => direct.push(Route {
                            ep: Arc::new(d),
                            conns,
                        }),
                        Err(e) => return self.problem("direct listener", e),
                    }
                    proxy.push(Route {
                        ep: Arc::new(Endpoints::Proxy {
                            a: quad.end(i),
                            b: quad.end(j),
                        }),
                        conns,
                    });
                }
            }
            let what = format!("8 KB all-to-all, {conns} conns per pair");
            let Some((d, p)) = self
                .compare_flows(&what, &direct, &proxy, PAYLOAD_8K, &pids)
                .await
            else {
                continue;
            };
            let (mut cells, mut data, _) = Self::flow_cells(&d, &p);
            cells.insert(0, conns.to_string());
            // Each proxy sends a quarter of the total and receives another
            // quarter: per GB that passed through it, the busiest one.
            let per_proxy: Vec<f64> = p
                .iter()
                .map(|o| {
                    let worst = o.cpu.iter().cloned().fold(0.0, f64::max);
                    worst / (o.bytes as f64 / 1e9 / 2.0)
                })
                .collect();
            self.found.cpu_per_gb.push((
                format!("4 instances all-to-all, {conns} conns per pair (busiest proxy, per GB through it, sent or received)"),
                Spread::of(&per_proxy),
                None,
            ));
            data["conns_per_pair"] = json!(conns);
            data["cpu_s_per_gb_busiest_proxy"] = runs_json(&per_proxy);
            s.row(cells, data);
        }
        if let Err(e) = quad.check() {
            self.problem("the four proxies after the all-to-all runs", e);
        }
        self.report.proxy_warnings.extend(quad.warnings());
        self.emit(s);
    }

    async fn small(&mut self, pair: &mut Cluster) {
        let mut s = Section::new(
            "throughput_small",
            "2. One-way throughput, small packets (no stall allowed)",
            &[
                "packet",
                "logical conns",
                "proxy MB/s (min / med / max)",
                "proxy kpackets/s",
                "direct MB/s",
                "proxy / direct",
            ],
        );
        s.note("Each write carries as many packets as fit in 8 KB (a backend's send buffer), so the proxy sees many packets per read and merges them into DATA packets. Every byte of every stream is digest-checked; a stream that stops for the stall timeout fails the run.");
        let pids = pair.pids();
        let proxy = Arc::new(Endpoints::Proxy {
            a: pair.end(0),
            b: pair.end(1),
        });
        for &payload in &SMALL {
            for &conns in &self.plan.small_conns.clone() {
                let direct = match Endpoints::direct().await {
                    Ok(d) => Arc::new(d),
                    Err(e) => return self.problem("direct listener", e),
                };
                let what = format!("{} packets, {conns} conns", label_kb(payload));
                let Some((d, p)) = self
                    .compare_flows(
                        &what,
                        &[Route { ep: direct, conns }],
                        &[Route {
                            ep: proxy.clone(),
                            conns,
                        }],
                        payload,
                        &pids,
                    )
                    .await
                else {
                    self.found.small_failed = true;
                    continue;
                };
                let (mut cells, mut data, _) = Self::flow_cells(&d, &p);
                let pm: Vec<f64> = p.iter().map(|o| o.mb_per_s()).collect();
                self.found.small.push((payload, conns, Spread::of(&pm)));
                cells.insert(0, conns.to_string());
                cells.insert(0, label_kb(payload));
                data["payload"] = json!(payload);
                data["conns"] = json!(conns);
                s.row(cells, data);
            }
        }
        if let Err(e) = pair.check() {
            self.problem("the two proxies after the small-packet runs", e);
        }
        self.emit(s);
    }

    async fn latency(&mut self, pair: &Cluster) {
        let mut s = Section::new(
            "latency",
            "3. Round trips, 64-byte messages (µs)",
            &[
                "exchange",
                "other core",
                "proxy p50 (min / med / max)",
                "proxy p99",
                "proxy p99.9",
                "direct p50 (min / med / max)",
                "direct p99",
                "direct p99.9",
                "p50 proxy/direct",
                "p99 proxy/direct",
            ],
        );
        s.note(format!(
            "{} s per run, {} runs; p99 and p99.9 columns are the median over runs. \"busy\": a `nice -n 19` shell busy loop keeps the other core awake (waking an idle vCPU costs tens of µs). The query-like exchange: connect both ends (HELLO, HELLO_ACK), 64 B each way, BYE each way, on a fresh logical connection each time (direct: a fresh TCP connection with a 36-byte hello/ack).",
            self.plan.latency_secs, self.plan.runs
        ));
        let proxy = Endpoints::Proxy {
            a: pair.end(0),
            b: pair.end(1),
        };
        let direct = match Endpoints::direct().await {
            Ok(d) => d,
            Err(e) => return self.problem("direct listener", e),
        };
        // The same exchanges through proxies with one runtime thread: what
        // handing a message between threads costs.
        let single = match Cluster::start(&self.bin, &[-1, 0], 1).await {
            Ok(c) => c,
            Err(e) => return self.problem("starting two single-thread proxies", e),
        };
        let proxy_1 = Endpoints::Proxy {
            a: single.end(0),
            b: single.end(1),
        };
        let mut cases: Vec<(String, Exchange, &Endpoints)> = self
            .plan
            .ping_pong_conns
            .iter()
            .map(|c| {
                (
                    format!("ping-pong, {c} conn{}", if *c == 1 { "" } else { "s" }),
                    Exchange::PingPong(*c),
                    &proxy,
                )
            })
            .collect();
        cases.push((
            "query-like, fresh logical conn".into(),
            Exchange::Query,
            &proxy,
        ));
        cases.push((
            "ping-pong, 1 conn, echoing end in another process".into(),
            Exchange::CrossProcess,
            &proxy,
        ));
        cases.push((
            "ping-pong, 1 conn, proxies --threads 1".into(),
            Exchange::PingPong(1),
            &proxy_1,
        ));
        cases.push((
            "query-like, proxies --threads 1".into(),
            Exchange::Query,
            &proxy_1,
        ));
        let default_threads = cases.len() - 2;
        for (case, (name, exchange, proxy)) in cases.into_iter().enumerate() {
            for load in ["idle", "busy"] {
                let mut runs: [Vec<Percentiles>; 2] = [Vec::new(), Vec::new()];
                let mut failed = false;
                for _ in 0..self.plan.runs {
                    for (k, ep) in [&direct, proxy].into_iter().enumerate() {
                        let _busy = if load == "busy" {
                            match BusyLoop::start() {
                                Ok(b) => Some(b),
                                Err(e) => {
                                    self.problem("starting the busy loop", e);
                                    return;
                                }
                            }
                        } else {
                            None
                        };
                        let secs = self.plan.latency_secs;
                        let stall = self.plan.stall();
                        let r = match (exchange, k) {
                            (Exchange::PingPong(c), _) => {
                                latency::ping_pong(ep, c, secs, stall).await
                            }
                            (Exchange::Query, _) => latency::query_like(ep, secs, stall).await,
                            (Exchange::CrossProcess, 0) => {
                                latency::ping_pong_cross_process(&EchoPeer::Direct, secs, stall)
                                    .await
                            }
                            (Exchange::CrossProcess, _) => {
                                let peer = EchoPeer::Proxy {
                                    a: pair.end(0),
                                    b: pair.end(1),
                                };
                                latency::ping_pong_cross_process(&peer, secs, stall).await
                            }
                        };
                        match r.and_then(|mut v| {
                            Percentiles::of(&mut v).ok_or_else(|| "no sample".to_string())
                        }) {
                            Ok(p) => runs[k].push(p),
                            Err(e) => {
                                let side = if k == 0 {
                                    "direct"
                                } else {
                                    "through the proxies"
                                };
                                self.problem(&format!("{name}, {load}, {side}"), e);
                                failed = true;
                            }
                        }
                        if failed {
                            break;
                        }
                    }
                    if failed {
                        break;
                    }
                }
                if failed {
                    continue;
                }
                let (cells, mut data, r50, r99) = latency_row(&name, load, &runs, "proxy_us");
                if case < default_threads && exchange == Exchange::Query {
                    self.found.query.push((load, r50, r99));
                } else if case < default_threads && exchange == Exchange::PingPong(1) {
                    self.found.ping_pong_1.push((load, r50));
                }
                data["kind"] = json!(format!("{exchange:?}"));
                s.row(cells, data);
            }
        }
        self.report.proxy_warnings.extend(single.warnings());
        self.emit(s);
    }

    async fn churn(&mut self, pair: &Cluster) {
        let tasks = self.plan.churn_tasks;
        let mut s = Section::new(
            "churn",
            "4. Logical-connection churn",
            &[
                "concurrent tasks",
                "proxy lives/s (min / med / max)",
                "direct lives/s",
                "proxy / direct",
            ],
        );
        s.note("A life: connect both ends, HELLO and HELLO_ACK (direct: a fresh TCP connection and a 36-byte hello/ack), one 64-byte packet, BYE each way and both EOFs read.");
        let proxy = Arc::new(Endpoints::Proxy {
            a: pair.end(0),
            b: pair.end(1),
        });
        let mut direct = Vec::new();
        for _ in 0..tasks {
            match Endpoints::direct().await {
                Ok(d) => direct.push(Arc::new(d)),
                Err(e) => return self.problem("direct listener", e),
            }
        }
        let (mut d, mut p) = (Vec::new(), Vec::new());
        let (secs, stall) = (self.plan.secs, self.plan.stall());
        for _ in 0..self.plan.runs {
            match latency::churn(direct.clone(), secs, stall).await {
                Ok((n, t)) => d.push(n as f64 / t),
                Err(e) => return self.problem("churn, direct", e),
            }
            match latency::churn(vec![proxy.clone(); tasks], secs, stall).await {
                Ok((n, t)) => p.push(n as f64 / t),
                Err(e) => return self.problem("churn, through the proxies", e),
            }
        }
        let r = paired_ratios(&p, &d);
        s.row(
            vec![
                tasks.to_string(),
                spread(Spread::of(&p), 0),
                spread(Spread::of(&d), 0),
                percent(r),
            ],
            json!({ "tasks": tasks, "proxy_lives_s": runs_json(&p), "direct_lives_s": runs_json(&d), "ratio": r }),
        );
        self.emit(s);
    }

    fn cpu_per_gb(&mut self) {
        let mut s = Section::new(
            "cpu_per_gb",
            "5. CPU per GB moved, each proxy process (core-seconds per 10^9 ic-tcp bytes)",
            &["case", "sending proxy (min / med / max)", "receiving proxy"],
        );
        s.note("utime + stime of each `ic-proxy` process from /proc/<pid>/stat around each 8 KB run of scenario 1.");
        if self.found.cpu_per_gb.is_empty() {
            s.note("(scenario 1 did not run: nothing to show)");
        }
        for (case, a, b) in self.found.cpu_per_gb.clone() {
            s.row(
                vec![case.clone(), spread(a, 2), spread(b, 2)],
                json!({ "case": case, "sender_proxy": a, "receiver_proxy": b }),
            );
        }
        self.emit(s);
    }

    async fn scaling(&mut self, pair: &mut Cluster) {
        let mut s = Section::new(
            "threads_scaling",
            "5b. Throughput scaling from --threads 1 to --threads 2 (8 KB packets)",
            &[
                "logical conns",
                "--threads 1 MB/s (min / med / max)",
                "--threads 2 MB/s",
                "2 threads / 1 thread",
                "core-s/GB sending proxy, 1 thread / 2 threads",
            ],
        );
        s.note("Two more proxies run with --threads 1; runs alternate between the two pairs.");
        let mut single = match Cluster::start(&self.bin, &[-1, 0], 1).await {
            Ok(c) => c,
            Err(e) => return self.problem("starting two single-thread proxies", e),
        };
        let one = Arc::new(Endpoints::Proxy {
            a: single.end(0),
            b: single.end(1),
        });
        let two = Arc::new(Endpoints::Proxy {
            a: pair.end(0),
            b: pair.end(1),
        });
        let (p1, p2) = (single.pids(), pair.pids());
        for &conns in &self.plan.scaling_conns.clone() {
            let what = format!("threads scaling, {conns} conns");
            let Some((t1, t2)) = self
                .compare_flows_two(&what, &one, &p1, &two, &p2, conns)
                .await
            else {
                continue;
            };
            let m1: Vec<f64> = t1.iter().map(|o| o.mb_per_s()).collect();
            let m2: Vec<f64> = t2.iter().map(|o| o.mb_per_s()).collect();
            let c1: Vec<f64> = t1.iter().map(|o| o.cpu_per_gb()[0]).collect();
            let c2: Vec<f64> = t2.iter().map(|o| o.cpu_per_gb()[0]).collect();
            let r = paired_ratios(&m2, &m1);
            let med = |v: &[f64]| Spread::of(v).map_or(f64::NAN, |s| s.median);
            s.row(
                vec![
                    conns.to_string(),
                    spread(Spread::of(&m1), 0),
                    spread(Spread::of(&m2), 0),
                    factor(r),
                    format!("{:.2} / {:.2}", med(&c1), med(&c2)),
                ],
                json!({ "conns": conns, "threads_1_mb_s": runs_json(&m1), "threads_2_mb_s": runs_json(&m2),
                        "scaling": r, "threads_1_cpu_s_per_gb": runs_json(&c1), "threads_2_cpu_s_per_gb": runs_json(&c2) }),
            );
        }
        if let Err(e) = single.check() {
            self.problem("the single-thread proxies", e);
        }
        self.report.proxy_warnings.extend(single.warnings());
        self.emit(s);
    }

    /// Like compare_flows, for two proxy pairs.
    async fn compare_flows_two(
        &mut self,
        what: &str,
        one: &Arc<Endpoints>,
        p1: &[u32],
        two: &Arc<Endpoints>,
        p2: &[u32],
        conns: usize,
    ) -> Option<(Vec<FlowOutcome>, Vec<FlowOutcome>)> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (secs, stall) = (self.plan.secs, self.plan.stall());
        for _ in 0..self.plan.runs {
            for (ep, pids, out) in [(one, p1, &mut a), (two, p2, &mut b)] {
                let r = [Route {
                    ep: ep.clone(),
                    conns,
                }];
                match flows::one_way(&r, PAYLOAD_8K, secs, stall, pids).await {
                    Ok(o) => out.push(o),
                    Err(e) => {
                        self.problem(what, e);
                        return None;
                    }
                }
            }
        }
        Some((a, b))
    }

    fn back_to_idle(&mut self, idle: &[u64], peak: &[u64], after: &[u64]) {
        let mut s = Section::new(
            "back_to_idle",
            "6b. Proxy RSS before, during and after the load scenarios (MiB)",
            &[
                "proxy",
                "idle (before any load)",
                "peak during load",
                "after (settled)",
                "after / idle",
            ],
        );
        s.note("VmRSS of the two proxies that served scenarios 1–5, sampled every 100 ms during them; \"after\" once it stopped changing by more than 1% for 2.5 s (a proxy gives memory back within about 2 s of going quiet).");
        for (i, name) in ["sending (dbid 1)", "receiving (dbid 2)"]
            .iter()
            .enumerate()
        {
            let (Some(&i0), Some(&pk), Some(&a)) = (idle.get(i), peak.get(i), after.get(i)) else {
                continue;
            };
            let r = a as f64 / i0.max(1) as f64;
            self.found
                .back_to_idle
                .push((format!("{name} after the load scenarios"), r));
            s.row(
                vec![
                    name.to_string(),
                    mib(i0 as f64),
                    mib(pk as f64),
                    mib(a as f64),
                    format!("{:.2}", r),
                ],
                json!({ "proxy": name, "idle_bytes": i0, "peak_bytes": pk, "after_bytes": a, "after_over_idle": r }),
            );
        }
        self.emit(s);
    }

    async fn idle_connections(&mut self) {
        let mut s = Section::new(
            "idle_connections",
            "6. Memory per idle logical connection",
            &[
                "open logical conns",
                "sending proxy RSS MiB",
                "KiB per conn",
                "receiving proxy RSS MiB",
                "KiB per conn",
                "open time s",
                "probed",
            ],
        );
        s.note("Two fresh proxies; every logical connection has both ends connected and acknowledged (one session in each proxy) and carries nothing. KiB per conn = (RSS − idle RSS) / conns. The client ends live in holder processes of at most 9,000 connections each (this process's descriptor limit). \"probed\": a 64-byte packet sent and received on every 100th connection after the measurement.");
        // A proxy holds one socket per session, plus its listeners and links.
        let fits = |n: usize| (n + 200) as u64 <= self.nofile;
        let mut steps: Vec<usize> = self
            .plan
            .idle_steps
            .iter()
            .copied()
            .filter(|n| fits(*n))
            .collect();
        if steps.len() < self.plan.idle_steps.len() {
            let most = (self.nofile.saturating_sub(200) / 1000 * 1000) as usize;
            if most > steps.last().copied().unwrap_or(0) {
                steps.push(most);
            }
            s.note(format!(
                "Steps above {most} connections were not run: RLIMIT_NOFILE is {} here and could not be raised (no CAP_SYS_RESOURCE), so no process, a proxy included, can hold more sockets.",
                self.nofile
            ));
        }
        let mut pair = match Cluster::start(&self.bin, &[-1, 0], 2).await {
            Ok(c) => c,
            Err(e) => return self.problem("starting two proxies for the memory scenario", e),
        };
        let pids = pair.pids();
        let idle = settled_rss_each(&pids).await;
        s.row(
            vec![
                "0".into(),
                mib(idle[0] as f64),
                "-".into(),
                mib(idle[1] as f64),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            json!({ "conns": 0, "rss_bytes": idle }),
        );
        let (a, b) = (pair.end(0), pair.end(1));
        let per_holder = ((self.nofile.saturating_sub(500) / 2) as usize).clamp(1, 9_000);
        let mut holders: Vec<memory::Holder> = Vec::new();
        let mut held = 0;
        for &step in &steps {
            let t0 = std::time::Instant::now();
            let mut failed = None;
            while held < step {
                let k = per_holder.min(step - held);
                match memory::Holder::start(&a, &b, k).await {
                    Ok(h) => {
                        held += h.pairs;
                        holders.push(h);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                self.problem(&format!("opening {step} idle logical connections"), e);
                self.found.idle_failed = true;
                break;
            }
            let open_secs = t0.elapsed().as_secs_f64();
            let rss = settled_rss_each(&pids).await;
            let per: Vec<f64> = rss
                .iter()
                .zip(&idle)
                .map(|(r, i)| (*r as f64 - *i as f64) / step as f64 / 1024.0)
                .collect();
            let mut probed = 0;
            let mut failed = None;
            for h in &mut holders {
                match h.probe().await {
                    Ok(n) => probed += n,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                self.problem(&format!("{step} idle logical connections held"), e);
                self.found.idle_failed = true;
                break;
            }
            if let Err(e) = pair.check() {
                self.problem(
                    &format!("the proxies holding {step} logical connections"),
                    e,
                );
                self.found.idle_failed = true;
                break;
            }
            self.found.held = Some(step);
            self.found.idle_per_conn.push((step, per[0], per[1]));
            s.row(
                vec![
                    step.to_string(),
                    mib(rss[0] as f64),
                    format!("{:.1}", per[0]),
                    mib(rss[1] as f64),
                    format!("{:.1}", per[1]),
                    format!("{open_secs:.1}"),
                    probed.to_string(),
                ],
                json!({ "conns": step, "rss_bytes": rss, "kib_per_conn": per, "open_secs": open_secs, "probed": probed }),
            );
        }
        for h in holders {
            h.close().await;
        }
        let after = settled_after_load(&pids).await;
        for (i, name) in ["sending", "receiving"].iter().enumerate() {
            let r = after[i] as f64 / idle[i].max(1) as f64;
            self.found
                .back_to_idle
                .push((format!("{name} proxy after {held} idle conns closed"), r));
        }
        // Open descriptors tell a leak (sessions still open) from memory the
        // allocator keeps.
        let fds: Vec<Option<usize>> = pids.iter().map(|p| machine::open_fds(*p)).collect();
        s.row(
            vec![
                format!("0 (after closing {held})"),
                mib(after[0] as f64),
                format!("after/idle {:.2}", after[0] as f64 / idle[0].max(1) as f64),
                mib(after[1] as f64),
                format!("after/idle {:.2}", after[1] as f64 / idle[1].max(1) as f64),
                "-".into(),
                format!(
                    "fds open: {:?} / {:?}",
                    fds[0].unwrap_or(0),
                    fds[1].unwrap_or(0)
                ),
            ],
            json!({ "conns": 0, "after_closing": held, "rss_bytes": after, "open_fds": fds }),
        );
        if let Err(e) = pair.check() {
            self.problem("the memory-scenario proxies after closing", e);
        }
        self.report.proxy_warnings.extend(pair.warnings());
        self.emit(s);
    }

    async fn mesh(&mut self) {
        let peers = self.plan.mesh_peers;
        let mut s = Section::new(
            "mesh",
            format!("6c. A mesh of {} instances around one hub", peers + 1),
            &[
                "peers",
                "hub RSS idle MiB",
                "hub RSS linked MiB",
                "KiB per peer link",
                "time until all linked s",
                "links after 1 s hold",
            ],
        );
        s.note(format!(
            "The hub is an `ic-proxy run` process (dbid 1, content -1) whose map has {} entries on 127.0.0.x; the {peers} peers are proxy runtimes (`ic_proxy_core::run`) inside the bench process, each with a 2-entry map, and dial the hub as segments dial the coordinator. Time: from starting the peers to every link up on both sides (default first-dial delay 100 ms).",
            peers + 1
        ));
        let deadline = Duration::from_secs(if self.plan.quick { 30 } else { 120 });
        match memory::mesh(&self.bin, peers, deadline).await {
            Ok(m) => {
                let ok = m.links_after_hold == peers as i64;
                self.found.mesh = Some((peers, ok));
                if !ok {
                    self.problem(
                        "mesh",
                        format!("{} of {peers} links up after the hold", m.links_after_hold),
                    );
                }
                let per = (m.hub_rss_linked as f64 - m.hub_rss_idle as f64) / peers as f64 / 1024.0;
                s.row(
                    vec![
                        peers.to_string(),
                        mib(m.hub_rss_idle as f64),
                        mib(m.hub_rss_linked as f64),
                        format!("{per:.1}"),
                        format!("{:.2}", m.connect_secs),
                        m.links_after_hold.to_string(),
                    ],
                    json!({ "peers": peers, "hub_rss_idle_bytes": m.hub_rss_idle, "hub_rss_linked_bytes": m.hub_rss_linked,
                            "kib_per_link": per, "connect_secs": m.connect_secs, "links_after_hold": m.links_after_hold }),
                );
            }
            Err(e) => {
                self.found.mesh = Some((peers, false));
                self.problem(&format!("mesh of {peers} peers"), e);
            }
        }
        self.emit(s);
    }

    /// Scenario 7: the same measurements through the proxy as it runs in
    /// production, the background worker of two PostgreSQL servers.
    async fn pg(&mut self, lib: &PgLib) {
        let pair = match PgPair::start(&lib.path, PG_START_DEADLINE).await {
            Ok(p) => p,
            Err(e) => {
                return self.problem(
                    &format!(
                        "starting two PostgreSQL servers preloading {}",
                        lib.path.display()
                    ),
                    e,
                )
            }
        };
        self.also_ours = pair.postmaster_pids();
        let version = pair.version();
        let workers = pair.worker_pids();
        let about = format!(
            "Two PostgreSQL servers ({version}) run as the server user, each preloading `{}` ({}, modified {}); their background workers \"ic proxy process\" (pids {} and {}, `ic_proxy.worker_threads` 2, the default) are dbid 1 (content -1) and dbid 2 (content 0), linked over 127.0.0.1. The backends are this process on each worker's Unix socket; the direct baseline is the same as in scenario 1, measured in the same run.",
            lib.path.display(),
            lib.how,
            lib.modified,
            workers[0],
            workers[1]
        );
        let idle = settled_rss_each(&workers).await;
        let sampler = RssSampler::start(workers.clone());
        self.pg_throughput(&pair, &about).await;
        let peak = sampler.finish().await;
        let after = settled_after_load(&workers).await;
        if let Some(s) = self
            .report
            .sections
            .last_mut()
            .filter(|s| s.id == "pg_throughput_8k")
        {
            let n = format!(
                "Worker RSS MiB (sending / receiving): idle {} / {}, peak during the 8 KB runs {} / {}, after them (settled) {} / {}.",
                mib(idle[0] as f64),
                mib(idle[1] as f64),
                mib(peak[0] as f64),
                mib(peak[1] as f64),
                mib(after[0] as f64),
                mib(after[1] as f64)
            );
            println!("{n}\n");
            s.note(n);
        }
        let same = format!(
            "The servers and workers of section 7 (worker pids {} and {}).",
            workers[0], workers[1]
        );
        self.pg_ping_pong(&pair, &same).await;
        if let Err(e) = pair.check() {
            self.problem("the PostgreSQL workers after the runs", e);
        }
        self.report.proxy_warnings.extend(pair.warnings());
        if let Err(e) = pair.stop().await {
            self.problem("stopping the PostgreSQL servers", e);
        }
        self.also_ours.clear();
    }

    async fn pg_throughput(&mut self, pair: &PgPair, about: &str) {
        let mut s = Section::new(
            "pg_throughput_8k",
            "7. One-way throughput, 8 KB ic-tcp packets, through the workers in PostgreSQL 15",
            &[
                "logical conns",
                "worker MB/s (min / med / max)",
                "worker kpackets/s",
                "direct MB/s",
                "worker / direct (med, min–max)",
                "core-s/GB sending worker",
                "core-s/GB receiving worker",
            ],
        );
        s.note(about);
        s.note(format!(
            "8192-byte ic-tcp packets, one packet per write; {} s per run, {} runs, direct and workers alternating; every byte digest-checked. core-s/GB: utime + stime of each worker process (/proc/<pid>/stat) per 10^9 ic-tcp bytes.",
            self.plan.secs, self.plan.runs
        ));
        let pids = pair.worker_pids();
        let proxy = Arc::new(pair.endpoints());
        for &conns in &self.plan.pg_conns.clone() {
            let what = format!("PostgreSQL workers: 8 KB throughput, {conns} conns");
            let Ok(step) = self.compare_8k(&what, &proxy, conns, &pids).await else {
                return;
            };
            let Some((d, p)) = step else {
                continue;
            };
            let (mut cells, mut data, ratio) = Self::flow_cells(&d, &p);
            if let Some(r) = ratio {
                self.found.pg_ratio.insert(conns, r);
            }
            let sender: Vec<f64> = p.iter().map(|o| o.cpu_per_gb()[0]).collect();
            let receiver: Vec<f64> = p.iter().map(|o| o.cpu_per_gb()[1]).collect();
            let (cs, cr) = (Spread::of(&sender), Spread::of(&receiver));
            self.found.pg_cpu_per_gb.push((conns, cs, cr));
            cells.insert(0, conns.to_string());
            cells.push(spread(cs, 2));
            cells.push(spread(cr, 2));
            data["conns"] = json!(conns);
            data["payload"] = json!(PAYLOAD_8K);
            data["cpu_s_per_gb"] = json!({ "sender_worker": runs_json(&sender), "receiver_worker": runs_json(&receiver) });
            s.row(cells, data);
        }
        if let Err(e) = pair.check() {
            self.problem("the PostgreSQL workers after the 8 KB runs", e);
        }
        self.emit(s);
    }

    async fn pg_ping_pong(&mut self, pair: &PgPair, about: &str) {
        let mut s = Section::new(
            "pg_ping_pong",
            "7b. Round trips through the workers in PostgreSQL 15, 64-byte messages (µs)",
            &[
                "exchange",
                "other core",
                "worker p50 (min / med / max)",
                "worker p99",
                "worker p99.9",
                "direct p50 (min / med / max)",
                "direct p99",
                "direct p99.9",
                "p50 worker/direct",
                "p99 worker/direct",
            ],
        );
        s.note(about);
        s.note(format!(
            "64-byte ping-pong on 1 logical connection, both ends in this process (as the direct baseline's); {} s per run, {} runs, direct and workers alternating; p99 and p99.9 columns are the median over runs.",
            self.plan.latency_secs, self.plan.runs
        ));
        let proxy = pair.endpoints();
        let direct = match Endpoints::direct().await {
            Ok(d) => d,
            Err(e) => return self.problem("direct listener", e),
        };
        let (secs, stall) = (self.plan.latency_secs, self.plan.stall());
        let mut runs: [Vec<Percentiles>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..self.plan.runs {
            for (k, ep) in [&direct, &proxy].into_iter().enumerate() {
                let r = latency::ping_pong(ep, 1, secs, stall)
                    .await
                    .and_then(|mut v| {
                        Percentiles::of(&mut v).ok_or_else(|| "no sample".to_string())
                    });
                match r {
                    Ok(p) => runs[k].push(p),
                    Err(e) => {
                        let side = if k == 0 {
                            "direct"
                        } else {
                            "through the PostgreSQL workers"
                        };
                        self.problem(&format!("64 B ping-pong, 1 conn, {side}"), e);
                        self.found.pg_ping_pong = Some(None);
                        self.emit(s);
                        return;
                    }
                }
            }
        }
        let (cells, data, r50, _) = latency_row("ping-pong, 1 conn", "idle", &runs, "worker_us");
        self.found.pg_ping_pong = Some(r50);
        s.row(cells, data);
        self.emit(s);
    }

    pub(crate) fn targets(&mut self) {
        let f = &self.found;
        let mut t = Vec::new();
        for (conns, want) in [(1usize, 0.75), (16, 0.40), (64, 0.55)] {
            let r = f.throughput_ratio.get(&conns).copied();
            t.push(Target {
                target: format!(
                    "8 KB throughput, {conns} conn(s): ≥ {:.0}% of direct",
                    want * 100.0
                ),
                measured: percent(r),
                met: r.map(|r| r.median >= want),
            });
        }
        let worst = f
            .cpu_per_gb
            .iter()
            .flat_map(|(c, a, b)| [(c, a), (c, b)])
            .filter_map(|(c, s)| s.map(|s| (c.clone(), s.median)))
            .fold(None::<(String, f64)>, |acc, x| match acc {
                Some(a) if a.1 >= x.1 => Some(a),
                _ => Some(x),
            });
        t.push(Target {
            target: "≤ 0.6 core-s per GB, per proxy (worst median)".into(),
            measured: worst
                .as_ref()
                .map_or("-".into(), |(c, v)| format!("{v:.2} ({c})")),
            met: worst.map(|(_, v)| v <= 0.6),
        });
        for (load, p50, p99) in &f.query {
            t.push(Target {
                target: format!("query-like exchange p50 ≤ 2× direct ({load})"),
                measured: factor(*p50),
                met: p50.map(|r| r.median <= 2.0),
            });
            t.push(Target {
                target: format!("query-like exchange p99 ≤ 3× direct ({load})"),
                measured: factor(*p99),
                met: p99.map(|r| r.median <= 3.0),
            });
        }
        if let Some(r) = f.tls_throughput_ratio.get(&64).copied() {
            t.push(Target {
                target: "TLS links, 8 KB throughput, 64 conns: ≥ 70% of plaintext".into(),
                measured: percent(Some(r)),
                met: Some(r.median >= 0.70),
            });
        }
        if let Some(extra) = f.tls_query_extra_us {
            t.push(Target {
                target: "TLS links, query-like exchange p50: ≤ +50 µs over plaintext".into(),
                measured: format!("{extra:+.1} µs"),
                met: Some(extra <= 50.0),
            });
        }
        for (load, p50) in &f.ping_pong_1 {
            t.push(Target {
                target: format!("64 B ping-pong, 1 conn, p50 ≤ 3× direct ({load})"),
                measured: factor(*p50),
                met: p50.map(|r| r.median <= 3.0),
            });
        }
        if !f.small.is_empty() || f.small_failed {
            let m: Vec<String> = f
                .small
                .iter()
                .map(|(p, c, s)| {
                    format!(
                        "{} × {c}: {} MB/s",
                        label_kb(*p),
                        s.map_or("-".into(), |s| format!("{:.0}", s.median))
                    )
                })
                .collect();
            t.push(Target {
                target: "small packets (64 B–3 KB): no stall, every byte delivered".into(),
                measured: m.join("; "),
                met: Some(!f.small_failed),
            });
        }
        if let Some(&(n, a, b)) = f.idle_per_conn.last() {
            let worst = a.max(b);
            t.push(Target {
                target: "≤ 4 KiB per idle logical connection, per proxy".into(),
                measured: format!("{worst:.1} KiB at {n} conns (sending {a:.1}, receiving {b:.1})"),
                met: Some(worst <= 4.0),
            });
        }
        if !f.back_to_idle.is_empty() {
            let worst = f
                .back_to_idle
                .iter()
                .cloned()
                .fold(
                    (String::new(), 0.0f64),
                    |a, x| if x.1 > a.1 { x } else { a },
                );
            t.push(Target {
                target: "back within 10% of the idle footprint after load".into(),
                measured: format!("worst after/idle {:.2} ({})", worst.1, worst.0),
                met: Some(worst.1 <= 1.10),
            });
        }
        if f.held.is_some() || f.idle_failed {
            let n = f.held.unwrap_or(0);
            t.push(Target {
                target: "100k logical connections held without error".into(),
                measured: format!(
                    "{n} held{}",
                    if f.idle_failed { " (then failed)" } else { "" }
                ),
                met: Some(n >= 100_000 && !f.idle_failed),
            });
        }
        if let Some((peers, ok)) = f.mesh {
            t.push(Target {
                target: "1,000 peers held without error".into(),
                measured: format!(
                    "{} instances: {}",
                    peers + 1,
                    if ok { "all linked and held" } else { "failed" }
                ),
                met: Some(ok && peers + 1 >= 1000),
            });
        }
        // The same targets through the worker inside PostgreSQL.
        for (conns, want) in [(1usize, 0.75), (16, 0.40), (64, 0.55)] {
            if let Some(r) = f.pg_ratio.get(&conns).copied() {
                t.push(Target {
                    target: format!(
                        "8 KB throughput, {conns} conn(s): ≥ {:.0}% of direct (PostgreSQL worker)",
                        want * 100.0
                    ),
                    measured: percent(Some(r)),
                    met: Some(r.median >= want),
                });
            }
        }
        let pg_worst = f
            .pg_cpu_per_gb
            .iter()
            .flat_map(|(c, a, b)| [(c, a), (c, b)])
            .filter_map(|(c, s)| s.map(|s| (*c, s.median)))
            .fold(None::<(usize, f64)>, |acc, x| match acc {
                Some(a) if a.1 >= x.1 => Some(a),
                _ => Some(x),
            });
        if let Some((c, v)) = pg_worst {
            t.push(Target {
                target: "≤ 0.6 core-s per GB, per worker (worst median, PostgreSQL worker)".into(),
                measured: format!("{v:.2} ({c} conns)"),
                met: Some(v <= 0.6),
            });
        }
        if let Some(p50) = f.pg_ping_pong {
            t.push(Target {
                target: "64 B ping-pong, 1 conn, p50 ≤ 3× direct (idle, PostgreSQL worker)".into(),
                measured: factor(p50),
                met: p50.map(|r| r.median <= 3.0),
            });
        }
        self.report.targets = t;
    }
}

/// (machine busy seconds, our own tree's CPU seconds, now).
pub(crate) fn noise_now(also_ours: &[u32]) -> (f64, f64, std::time::Instant) {
    (
        machine::machine_busy_seconds().unwrap_or(0.0),
        machine::own_tree_cpu_seconds(also_ours),
        std::time::Instant::now(),
    )
}

/// The settled RSS of each process in turn.
/// RSS of each process once the load is over: a proxy gives memory back
/// within two of its one-second ticks of going quiet (`TrimPolicy`), so
/// "settled" here means unchanged for longer than that.
pub(crate) async fn settled_after_load(pids: &[u32]) -> Vec<u64> {
    let mut v = Vec::new();
    for p in pids {
        v.push(memory::settled_rss(*p, Duration::from_millis(2500), Duration::from_secs(30)).await);
    }
    v
}

pub(crate) async fn settled_rss_each(pids: &[u32]) -> Vec<u64> {
    let mut v = Vec::new();
    for p in pids {
        v.push(memory::settled_rss(*p, Duration::from_millis(500), Duration::from_secs(5)).await);
    }
    v
}

/// One row of a round-trip table, direct (`runs[0]`) beside the proxies
/// (`runs[1]`, named `through` in the JSON): its cells, its JSON, and the
/// p50 and p99 ratios.
fn latency_row(
    name: &str,
    load: &str,
    runs: &[Vec<Percentiles>; 2],
    through: &str,
) -> (
    Vec<String>,
    serde_json::Value,
    Option<Spread>,
    Option<Spread>,
) {
    let us = |v: &[Percentiles], f: fn(&Percentiles) -> u64| -> Vec<f64> {
        v.iter().map(|p| f(p) as f64 / 1000.0).collect()
    };
    let [d, p] = runs;
    let (d50, d99, d999) = (us(d, |x| x.p50), us(d, |x| x.p99), us(d, |x| x.p999));
    let (p50, p99, p999) = (us(p, |x| x.p50), us(p, |x| x.p99), us(p, |x| x.p999));
    let r50 = paired_ratios(&p50, &d50);
    let r99 = paired_ratios(&p99, &d99);
    let med = |v: &[f64]| Spread::of(v).map_or("-".into(), |s| format!("{:.1}", s.median));
    let cells = vec![
        name.to_string(),
        load.to_string(),
        spread(Spread::of(&p50), 1),
        med(&p99),
        med(&p999),
        spread(Spread::of(&d50), 1),
        med(&d99),
        med(&d999),
        factor(r50),
        factor(r99),
    ];
    let mut data = json!({
        "exchange": name, "other_core": load,
        "direct_us": { "p50": runs_json(&d50), "p99": runs_json(&d99), "p999": runs_json(&d999),
                       "samples": d.iter().map(|x| x.samples).collect::<Vec<_>>() },
        "ratio_p50": r50, "ratio_p99": r99,
    });
    data[through] = json!({ "p50": runs_json(&p50), "p99": runs_json(&p99), "p999": runs_json(&p999),
                            "samples": p.iter().map(|x| x.samples).collect::<Vec<_>>() });
    (cells, data, r50, r99)
}
