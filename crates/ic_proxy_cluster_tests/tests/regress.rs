//! The pg_regress golden files of tests/pg_regress (what users see in SQL,
//! errors included), run by PostgreSQL's own pg_regress against a server
//! with the installed extension preloaded.
//!
//! To write or update an expected file: run this test with
//! `IC_PROXY_REGRESS_RESULTS=<dir>`, which receives the actual outputs;
//! read every line, then copy the right ones to tests/pg_regress/expected/.
//! (A new test needs an expected file, even an empty one: pg_regress stops
//! at the first test whose expected file is missing.)

use std::fs;
use std::path::{Path, PathBuf};

use ic_proxy_cluster_tests::{
    command_as_server_user, copy_tree_for_server, pg_bindir, pg_regress_path, server_owned_tempdir,
    PgInstance, PRELOAD,
};

const DBNAME: &str = "regression_ic_proxy";

fn regress_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/pg_regress")
}

/// Every tests/pg_regress/sql/<name>.sql, by name.
fn test_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("sql"))
        .expect("tests/pg_regress/sql")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".sql"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn pg_regress_golden_files() {
    let server = PgInstance::start_new(&[PRELOAD]).expect("start the server");
    server
        .psql(&format!("CREATE DATABASE {DBNAME}"))
        .expect("create the test database");

    // The repository may be where the server user cannot read: give it a copy.
    let work = server_owned_tempdir("ic_proxy_regress.").expect("temp dir");
    let input = work.path().join("input");
    let output = work.path().join("output");
    copy_tree_for_server(&regress_dir(), &input).expect("copy tests/pg_regress");
    fs::create_dir(&output).expect("output dir");
    ic_proxy_cluster_tests::give_to_server_user(&output).expect("chown output dir");

    let tests = test_names(&input);
    assert!(!tests.is_empty(), "no tests in tests/pg_regress/sql");

    let mut cmd = command_as_server_user(pg_regress_path());
    cmd.current_dir(work.path())
        .arg("--use-existing")
        .arg(format!("--bindir={}", pg_bindir().display()))
        .arg(format!("--host={}", server.socket_dir().display()))
        .arg(format!("--port={}", server.port()))
        .arg("--user=postgres")
        .arg(format!("--inputdir={}", input.display()))
        .arg(format!("--outputdir={}", output.display()))
        .arg(format!("--dbname={DBNAME}"))
        .args(&tests);
    let out = cmd.output().expect("run pg_regress");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));

    if let Some(keep) = std::env::var_os("IC_PROXY_REGRESS_RESULTS") {
        let keep = PathBuf::from(keep);
        fs::create_dir_all(&keep).expect("IC_PROXY_REGRESS_RESULTS dir");
        for name in &tests {
            let from = output.join("results").join(format!("{name}.out"));
            if from.exists() {
                fs::copy(&from, keep.join(format!("{name}.out"))).expect("copy result");
            }
        }
    }

    if !out.status.success() {
        let diffs = fs::read_to_string(output.join("regression.diffs"))
            .unwrap_or_else(|e| format!("(no regression.diffs: {e})"));
        panic!(
            "pg_regress failed ({}); regression.diffs:\n{diffs}\n---- server log ----\n{}",
            out.status,
            server.log()
        );
    }
}
