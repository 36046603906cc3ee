//! `ic-proxy-fuzz`: runs the fuzz targets and prints what it did.
//!
//! ```text
//! ic-proxy-fuzz [--inputs N] [--seed N] [--target NAME[,NAME...]]
//!               [--corpus DIR | --no-save] [--replay] [--index I]
//! ```
//!
//! Long run (at least 10 million inputs, all targets in turn):
//! `cargo run --release -p ic_proxy_fuzz -- --inputs 10000000 --seed 1`.
//! Exit status 0 when no input failed, 1 otherwise, 2 for bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ic_proxy_fuzz::{
    default_corpus_dir, input_at, peak_rss_kib, replay_corpus, run, run_one, RunOptions, Tally,
    Target,
};

const USAGE: &str = "usage: ic-proxy-fuzz [--inputs N] [--seed N] [--target NAME[,NAME...]] \
[--corpus DIR | --no-save] [--replay] [--index I]
  --inputs N     inputs to generate and check (default 1000000)
  --seed N       the run's seed (default: from the clock; printed)
  --target LIST  peer_decoder, header, ictcp, auth, address_map (default: all, in turn)
  --corpus DIR   where failing inputs are saved (default: the crate's corpus/)
  --no-save      do not save failing inputs
  --replay       only replay the corpus
  --index I      run only input I of the run with --seed, and print it";

struct Args {
    inputs: u64,
    seed: u64,
    targets: Vec<Target>,
    corpus: PathBuf,
    save: bool,
    replay: bool,
    index: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        inputs: 1_000_000,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        targets: Target::ALL.to_vec(),
        corpus: default_corpus_dir(),
        save: true,
        replay: false,
        index: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match arg.as_str() {
            "--inputs" => a.inputs = number("--inputs", value("--inputs")?)?,
            "--seed" => a.seed = number("--seed", value("--seed")?)?,
            "--index" => a.index = Some(number("--index", value("--index")?)?),
            "--target" => {
                a.targets = value("--target")?
                    .split(',')
                    .map(|n| Target::from_name(n.trim()).ok_or(format!("unknown target {n:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--corpus" => a.corpus = PathBuf::from(value("--corpus")?),
            "--no-save" => a.save = false,
            "--replay" => a.replay = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".into())
}

fn progress(done: u64, elapsed: Duration) {
    eprintln!(
        "  {done} inputs, {:.0}/s, peak RSS {}",
        done as f64 / elapsed.as_secs_f64(),
        mib(peak_rss_kib())
    );
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("ic-proxy-fuzz: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };

    if args.replay {
        return match replay_corpus(&args.corpus) {
            Ok((n, failures)) => {
                println!("replayed {n} corpus inputs from {}", args.corpus.display());
                for f in &failures {
                    println!("FAILED {} {:?}: {}", f.target, f.saved, f.what);
                }
                if failures.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("ic-proxy-fuzz: cannot read {}: {e}", args.corpus.display());
                ExitCode::from(1)
            }
        };
    }

    if let Some(i) = args.index {
        let (target, input) = input_at(args.seed, i, &args.targets);
        println!(
            "input {i} of seed {}: {target}, {} bytes",
            args.seed,
            input.len()
        );
        println!("{:02x?}", input);
        let r = run_one(target, &input, &mut Tally::default());
        println!("{}", r.as_ref().err().map_or("ok", |e| e.as_str()));
        return if r.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }

    println!(
        "ic-proxy-fuzz: {} inputs, seed {}, targets {}",
        args.inputs,
        args.seed,
        args.targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    let report = run(&RunOptions {
        inputs: args.inputs,
        seed: args.seed,
        targets: args.targets.clone(),
        save_to: args.save.then(|| args.corpus.clone()),
        progress: Some(progress),
    });
    let secs = report.elapsed.as_secs_f64();
    println!("outcomes reached:");
    let mut outcomes = report.tally.outcomes.clone();
    outcomes.sort();
    for (what, n) in outcomes {
        println!("  {what:<32} {n}");
    }
    for (t, n) in &report.per_target {
        println!("  target {:<25} {n} inputs", t.name());
    }
    println!(
        "largest peer decoder buffer: {} bytes; largest ic-tcp leftover: {} bytes",
        report.tally.max_decoder_capacity, report.tally.max_ictcp_leftover
    );
    for f in &report.failures {
        println!(
            "FAILED {} input {:?} ({} bytes, saved {:?}): {}",
            f.target,
            f.index,
            f.input.len(),
            f.saved,
            f.what
        );
    }
    println!(
        "{} inputs in {:.1} s ({:.0} inputs/s), seed {}: {} panics, {} invariant violations, peak RSS {}",
        report.inputs,
        secs,
        report.inputs as f64 / secs.max(1e-9),
        args.seed,
        report.panics,
        report.violations,
        mib(peak_rss_kib())
    );
    if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
