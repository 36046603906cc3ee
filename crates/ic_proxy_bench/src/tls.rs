//! Scenario tls: what TLS on the link between two proxies costs. A pair of
//! plaintext proxies and a pair with `--tls require` (certificates made
//! here by a throwaway CA) run side by side, and every measurement
//! alternates direct, plaintext and TLS: 8 KB throughput on 1, 16 and 64
//! logical connections with CPU per GB of each proxy, the query-like
//! exchange, and each proxy's memory with its one link up.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::cluster::Cluster;
use crate::flows::{self, FlowOutcome, Route};
use crate::latency;
use crate::report::{factor, mib, percent, runs_json, spread, Section};
use crate::stats::{paired_ratios, Percentiles, Spread};
use crate::suite::{settled_rss_each, Bench, PAYLOAD_8K};
use crate::transport::Endpoints;

/// Connection counts of the TLS throughput table.
const TLS_CONNS: [usize; 3] = [1, 16, 64];

/// Writes a CA and one certificate for 127.0.0.1 (both extended key
/// usages) into `dir`; the `ic-proxy run` flags that use them.
pub(crate) fn make_certificates(dir: &Path) -> Result<Vec<String>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let e = |e: rcgen::Error| format!("making the bench's certificates: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "ic-proxy-bench CA");
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    leaf.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.distinguished_name
        .push(DnType::CommonName, "ic-proxy-bench 127.0.0.1");
    let key = KeyPair::generate().map_err(e)?;
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok::<String, String>(path.display().to_string())
    };
    let (c, k, a) = (
        write("proxy.pem", cert.pem())?,
        write("proxy.key", key.serialize_pem())?,
        write("ca.pem", ca_cert.pem())?,
    );
    Ok(vec![
        "--tls".into(),
        "require".into(),
        "--tls-cert-file".into(),
        c,
        "--tls-key-file".into(),
        k,
        "--tls-ca-file".into(),
        a,
    ])
}

impl Bench {
    pub(crate) async fn tls(&mut self) {
        let certs = match tempfile::Builder::new()
            .prefix("ic-proxy-bench-tls.")
            .tempdir()
        {
            Ok(d) => d,
            Err(e) => return self.problem("a directory for the certificates", e),
        };
        let flags = match make_certificates(certs.path()) {
            Ok(f) => f,
            Err(e) => return self.problem("the bench's certificates", e),
        };
        let plain = match Cluster::start(&self.bin, &[-1, 0], 2).await {
            Ok(c) => c,
            Err(e) => return self.problem("starting two plaintext proxies", e),
        };
        let tls = match Cluster::start_with(&self.bin, &[-1, 0], 2, &flags).await {
            Ok(c) => c,
            Err(e) => return self.problem("starting two TLS proxies", e),
        };
        let rss_plain = settled_rss_each(&plain.pids()).await;
        let rss_tls = settled_rss_each(&tls.pids()).await;
        self.tls_throughput(&plain, &tls).await;
        self.tls_query(&plain, &tls).await;
        let mut s = Section::new(
            "tls_memory",
            "8c. Memory of a proxy with its one link up, plaintext and TLS (MiB)",
            &["proxy", "plaintext RSS", "TLS RSS", "TLS - plaintext"],
        );
        s.note("Fresh proxies, settled RSS before any load: the difference is what a TLS link (rustls session, its buffers) and the loaded certificates cost.");
        for (i, name) in ["sending (dbid 1)", "receiving (dbid 2)"]
            .iter()
            .enumerate()
        {
            let (p, t) = (rss_plain[i], rss_tls[i]);
            s.row(
                vec![
                    name.to_string(),
                    mib(p as f64),
                    mib(t as f64),
                    format!("{:+.2}", (t as f64 - p as f64) / 1048576.0),
                ],
                json!({ "proxy": name, "plain_rss": p, "tls_rss": t }),
            );
        }
        self.emit(s);
        let mut both = plain;
        if let Err(e) = both.check() {
            self.problem("the plaintext proxies after the TLS scenario", e);
        }
        let mut tls = tls;
        if let Err(e) = tls.check() {
            self.problem("the TLS proxies after the TLS scenario", e);
        }
        self.report.proxy_warnings.extend(tls.warnings());
    }

    async fn tls_throughput(&mut self, plain: &Cluster, tls: &Cluster) {
        let mut s = Section::new(
            "tls_throughput_8k",
            "8. One-way throughput, 8 KB ic-tcp packets, plaintext and TLS links",
            &[
                "logical conns",
                "TLS MB/s (min / med / max)",
                "plaintext MB/s",
                "direct MB/s",
                "TLS / plaintext (med, min–max)",
                "core-s/GB TLS sending / receiving",
                "core-s/GB plaintext sending / receiving",
            ],
        );
        s.note(format!(
            "Two pairs of proxies, plaintext and `--tls require` (TLS 1.3, rustls with ring); {} s per run, {} runs, direct, plaintext and TLS alternating; every byte digest-checked. core-s/GB: utime + stime of each proxy process per 10^9 ic-tcp bytes.",
            self.plan.secs, self.plan.runs
        ));
        let plain_ep = Arc::new(Endpoints::Proxy {
            a: plain.end(0),
            b: plain.end(1),
        });
        let tls_ep = Arc::new(Endpoints::Proxy {
            a: tls.end(0),
            b: tls.end(1),
        });
        let direct = match Endpoints::direct().await {
            Ok(d) => Arc::new(d),
            Err(e) => return self.problem("direct listener", e),
        };
        let stall = self.plan.stall();
        for conns in TLS_CONNS {
            let mut runs: [Vec<FlowOutcome>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..self.plan.runs {
                for (k, (ep, pids)) in [
                    (&direct, Vec::new()),
                    (&plain_ep, plain.pids()),
                    (&tls_ep, tls.pids()),
                ]
                .into_iter()
                .enumerate()
                {
                    let route = [Route {
                        ep: ep.clone(),
                        conns,
                    }];
                    match flows::one_way(&route, PAYLOAD_8K, self.plan.secs, stall, &pids).await {
                        Ok(o) => runs[k].push(o),
                        Err(e) => {
                            let side = ["direct", "plaintext", "TLS"][k];
                            return self
                                .problem(&format!("TLS throughput, {conns} conns, {side}"), e);
                        }
                    }
                }
            }
            let mbs = |v: &[FlowOutcome]| v.iter().map(|o| o.mb_per_s()).collect::<Vec<f64>>();
            let (d, p, t) = (mbs(&runs[0]), mbs(&runs[1]), mbs(&runs[2]));
            let ratio = paired_ratios(&t, &p);
            let cpu = |v: &[FlowOutcome], i: usize| -> Vec<f64> {
                v.iter().map(|o| o.cpu_per_gb()[i]).collect()
            };
            let cpu_cell =
                |v: &[FlowOutcome]| format!("{} / {}", median(&cpu(v, 0)), median(&cpu(v, 1)));
            if let Some(r) = ratio {
                self.found.tls_throughput_ratio.insert(conns, r);
            }
            s.row(
                vec![
                    conns.to_string(),
                    spread(Spread::of(&t), 0),
                    spread(Spread::of(&p), 0),
                    spread(Spread::of(&d), 0),
                    percent(ratio),
                    cpu_cell(&runs[2]),
                    cpu_cell(&runs[1]),
                ],
                json!({
                    "conns": conns,
                    "tls_mb_s": runs_json(&t),
                    "plain_mb_s": runs_json(&p),
                    "direct_mb_s": runs_json(&d),
                    "tls_over_plain": ratio,
                    "tls_cpu_s_per_gb": { "sender": runs_json(&cpu(&runs[2], 0)), "receiver": runs_json(&cpu(&runs[2], 1)) },
                    "plain_cpu_s_per_gb": { "sender": runs_json(&cpu(&runs[1], 0)), "receiver": runs_json(&cpu(&runs[1], 1)) },
                }),
            );
        }
        self.emit(s);
    }

    async fn tls_query(&mut self, plain: &Cluster, tls: &Cluster) {
        let mut s = Section::new(
            "tls_query",
            "8b. The query-like exchange over plaintext and TLS links (µs)",
            &[
                "link",
                "p50 (min / med / max)",
                "p99",
                "direct p50",
                "p50 - plaintext p50",
                "p50 / direct",
            ],
        );
        s.note(format!(
            "Connect both ends (HELLO, HELLO_ACK), 64 B each way, BYE each way, on a fresh logical connection each time; the link between the proxies is up throughout (TLS is set up once per link, not per query). {} s per run, {} runs, idle other core, direct, plaintext and TLS alternating.",
            self.plan.latency_secs, self.plan.runs
        ));
        let direct = match Endpoints::direct().await {
            Ok(d) => d,
            Err(e) => return self.problem("direct listener", e),
        };
        let eps = [
            direct,
            Endpoints::Proxy {
                a: plain.end(0),
                b: plain.end(1),
            },
            Endpoints::Proxy {
                a: tls.end(0),
                b: tls.end(1),
            },
        ];
        let mut runs: [Vec<Percentiles>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..self.plan.runs {
            for (k, ep) in eps.iter().enumerate() {
                let r = latency::query_like(ep, self.plan.latency_secs, self.plan.stall())
                    .await
                    .and_then(|mut v| Percentiles::of(&mut v).ok_or_else(|| "no sample".into()));
                match r {
                    Ok(p) => runs[k].push(p),
                    Err(e) => {
                        let side = ["direct", "plaintext", "TLS"][k];
                        return self.problem(&format!("query-like, {side}"), e);
                    }
                }
            }
        }
        // Samples are in nanoseconds.
        let us = |v: u64| v as f64 / 1000.0;
        let p50 = |k: usize| runs[k].iter().map(|p| us(p.p50)).collect::<Vec<f64>>();
        let p99 = |k: usize| runs[k].iter().map(|p| us(p.p99)).collect::<Vec<f64>>();
        let median_of = |v: &[f64]| Spread::of(v).map(|s| s.median);
        let direct_p50 = median_of(&p50(0));
        for (k, name) in [(1, "plaintext"), (2, "TLS")] {
            let extra = median_of(&p50(k))
                .zip(median_of(&p50(1)))
                .map(|(a, b)| a - b);
            if k == 2 {
                self.found.tls_query_extra_us = extra;
            }
            s.row(
                vec![
                    name.into(),
                    spread(Spread::of(&p50(k)), 1),
                    median_of(&p99(k)).map_or("-".into(), |v| format!("{v:.1}")),
                    direct_p50.map_or("-".into(), |d| format!("{d:.1}")),
                    extra.map_or("-".into(), |e| format!("{e:+.1}")),
                    factor(paired_ratios(&p50(k), &p50(0))),
                ],
                json!({ "link": name, "p50_us": runs_json(&p50(k)), "p99_us": runs_json(&p99(k)), "direct_p50_us": runs_json(&p50(0)) }),
            );
        }
        self.emit(s);
    }
}

fn median(v: &[f64]) -> String {
    Spread::of(v).map_or("-".into(), |s| format!("{:.2}", s.median))
}
