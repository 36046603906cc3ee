//! The fuzz targets in the normal test command: a short run (a few seconds)
//! and the replay of every input that ever failed.

use ic_proxy_fuzz::{default_corpus_dir, replay_corpus, run, RunOptions, Target};

/// A short run of every target; IC_PROXY_FUZZ_SEED and IC_PROXY_FUZZ_INPUTS
/// change it (the seed is printed, so a failure can be rerun with
/// `cargo run --release -p ic_proxy_fuzz -- --seed S --index I`).
#[test]
fn a_short_fuzz_run_finds_nothing() {
    let seed = std::env::var("IC_PROXY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1c_9a0c_5eed);
    let inputs = std::env::var("IC_PROXY_FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let report = run(&RunOptions {
        inputs,
        seed,
        targets: Target::ALL.to_vec(),
        // A failure found here is saved for the replay, like the long run's.
        save_to: Some(default_corpus_dir()),
        progress: None,
    });
    println!(
        "{} inputs in {:?}, seed {seed}: {:?}",
        report.inputs, report.elapsed, report.tally.outcomes
    );
    for f in &report.failures {
        println!(
            "{} input {:?} saved as {:?}: {}",
            f.target, f.index, f.saved, f.what
        );
    }
    assert_eq!(report.failed(), 0, "seed {seed}: {:#?}", report.failures);
    // The mutations reach past the first check of every decoder.
    for outcome in [
        "peer: DATA packet",
        "peer: message",
        "header: bad magic",
        "header: length below header",
        "header: length above max",
        "header: unknown type",
        "header: payload on a message",
        "ictcp: packets framed",
        "ictcp: length below 4",
        "ictcp: length above max",
        "auth: ok",
        "auth: malformed",
        "map: valid",
        "map: invalid",
    ] {
        assert!(
            report
                .tally
                .outcomes
                .iter()
                .any(|(k, n)| *k == outcome && *n > 0),
            "no input reached {outcome:?}: {:?}",
            report.tally.outcomes
        );
    }
}

#[test]
fn every_corpus_input_passes() {
    let dir = default_corpus_dir();
    let (n, failures) = replay_corpus(&dir).expect("read the corpus");
    println!("replayed {n} inputs from {}", dir.display());
    assert!(n > 0, "the corpus in {} is empty", dir.display());
    for f in &failures {
        println!("{:?}: {}", f.saved, f.what);
    }
    assert!(failures.is_empty(), "{} corpus inputs fail", failures.len());
}
