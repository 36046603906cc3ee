//! Fuzzing on stable Rust for everything in the proxy that parses bytes a
//! peer, a backend or an administrator controls: the peer-stream decoder in
//! both dialects (fed in random reads), `Header::decode`, the backend side's
//! ic-tcp framing, the peer-authentication messages and the address map.
//!
//! Inputs are random, or valid and then mutated (structure-aware edits of
//! lengths and types, then bit flips, truncations, splices...) by a small
//! dependency-free engine; each target checks its invariants against an
//! independent reference model (see [`targets`]). Every input is derived from
//! the run's seed and its index, so a failure can be replayed alone; failing
//! inputs are written to the corpus directory, which a test replays.
//!
//! ```text
//! cargo run --release -p ic_proxy_fuzz -- --inputs 10000000 --seed 1
//! cargo test -p ic_proxy_fuzz             # a short run and the corpus replay
//! ```
//!
//! It only reads and checks bytes: no sockets, no runtime.

mod gen;
pub mod mutate;
pub mod rng;
pub mod targets;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use gen::generate;
pub use rng::Rng;
pub use targets::{Tally, Target, Violation};

/// Where failing inputs are kept, one directory per target.
pub fn default_corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// One failing input.
#[derive(Clone, Debug)]
pub struct Failure {
    pub target: Target,
    /// The input's index in its run (None when replayed from a file).
    pub index: Option<u64>,
    pub input: Vec<u8>,
    /// "panic: ..." or the broken invariant.
    pub what: String,
    /// Where it was saved, if it was.
    pub saved: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub inputs: u64,
    pub seed: u64,
    pub targets: Vec<Target>,
    /// Save failing inputs here (`<dir>/<target>/<hash>.bin`).
    pub save_to: Option<PathBuf>,
    /// Called about once a second with the inputs done so far.
    pub progress: Option<fn(u64, Duration)>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub inputs: u64,
    pub per_target: Vec<(Target, u64)>,
    pub panics: u64,
    pub violations: u64,
    pub failures: Vec<Failure>,
    pub tally: Tally,
    pub elapsed: Duration,
}

impl Report {
    pub fn failed(&self) -> u64 {
        self.panics + self.violations
    }
}

thread_local! {
    /// Set while this thread runs a target: panics are recorded, not printed.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records the message of a panic inside a
/// target and leaves every other panic to the previous hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        *slot = info.to_string();
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs `target` on `input`: Ok, or what failed.
pub fn run_one(target: Target, input: &[u8], tally: &mut Tally) -> Result<(), String> {
    install_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    let r = panic::catch_unwind(AssertUnwindSafe(|| target.check(input, tally)));
    let message = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(v)) => Err(format!("invariant: {v}")),
        Err(_) => Err(format!("panic: {message}")),
    }
}

/// 64-bit FNV-1a, to name corpus files by content.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Writes `input` to `<dir>/<target>/<hash>.bin`.
pub fn save(dir: &Path, target: Target, input: &[u8]) -> std::io::Result<PathBuf> {
    let d = dir.join(target.name());
    std::fs::create_dir_all(&d)?;
    let path = d.join(format!("{:016x}.bin", fnv64(input)));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// The input of index `index` in a run with `seed`: targets take turns.
pub fn input_at(seed: u64, index: u64, targets: &[Target]) -> (Target, Vec<u8>) {
    let target = targets[(index % targets.len() as u64) as usize];
    let mut rng = Rng::for_input(seed, index);
    (target, generate(target, &mut rng))
}

/// Generates and checks `opts.inputs` inputs.
pub fn run(opts: &RunOptions) -> Report {
    assert!(!opts.targets.is_empty(), "no target");
    let started = Instant::now();
    let mut report = Report {
        per_target: opts.targets.iter().map(|t| (*t, 0)).collect(),
        ..Report::default()
    };
    let mut last_progress = Instant::now();
    for index in 0..opts.inputs {
        let (target, input) = input_at(opts.seed, index, &opts.targets);
        if let Some((_, n)) = report.per_target.iter_mut().find(|(t, _)| *t == target) {
            *n += 1;
        }
        if let Err(what) = run_one(target, &input, &mut report.tally) {
            if what.starts_with("panic") {
                report.panics += 1;
            } else {
                report.violations += 1;
            }
            // Keep the first ones; their names dedupe repeats.
            if report.failures.len() < 100 {
                let saved = opts
                    .save_to
                    .as_deref()
                    .and_then(|d| save(d, target, &input).ok());
                report.failures.push(Failure {
                    target,
                    index: Some(index),
                    input,
                    what,
                    saved,
                });
            }
        }
        report.inputs += 1;
        if let Some(p) = opts.progress {
            if index % 4096 == 0 && last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                p(report.inputs, started.elapsed());
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Replays every file under `<dir>/<target>/`; returns how many were
/// replayed and the failures.
pub fn replay_corpus(dir: &Path) -> std::io::Result<(usize, Vec<Failure>)> {
    let mut replayed = 0;
    let mut failures = Vec::new();
    let mut tally = Tally::default();
    for target in Target::ALL {
        let d = dir.join(target.name());
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .collect();
        paths.sort();
        for path in paths {
            let input = std::fs::read(&path)?;
            replayed += 1;
            if let Err(what) = run_one(target, &input, &mut tally) {
                failures.push(Failure {
                    target,
                    index: None,
                    input,
                    what,
                    saved: Some(path),
                });
            }
        }
    }
    Ok((replayed, failures))
}

/// Peak resident memory of this process (VmHWM), in KiB, where /proc has it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
