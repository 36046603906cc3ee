//! `ic-proxy`: one interconnect proxy outside PostgreSQL (`run`), a sending
//! or receiving backend for one logical connection (`send`, `recv`), and an
//! address map checker (`check`). A thin shell over `ic_proxy_core` and
//! `ic_proxy_client`: it parses arguments, owns signals and stdio, and never
//! implements protocol or routing itself.
// One call into the C library (memory::release_free_memory) needs unsafe;
// nothing else may.
#![deny(unsafe_code)]

mod args;
mod backend;
mod control;
mod logger;
mod map_source;
mod memory;
mod metrics;
mod observe;
mod ping;
mod proxy;
mod sidecar;
mod view;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command, LogLevel};

/// A runtime or connection failure; also `check`'s "the map is invalid".
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Bad arguments or an unusable map before anything started (clap's code too).
pub(crate) const EXIT_USAGE: u8 = 2;

/// `1 entry`, `2 entries`, `0 bytes`.
pub(crate) fn count(n: u64, noun: &str) -> String {
    match (n, noun) {
        (1, _) => format!("1 {noun}"),
        (n, "entry") => format!("{n} entries"),
        (n, _) => format!("{n} {noun}s"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) => LogLevel::Info,
        _ => LogLevel::Warn,
    };
    logger::init(cli.log_level.unwrap_or(default_level).into());
    match cli.command {
        Command::Run(a) => proxy::run_proxy(a),
        Command::Send(a) => backend::send(a),
        Command::Recv(a) => backend::recv(a),
        Command::Check(a) => map_source::check(a),
        Command::Status(a) => observe::status(a),
        Command::Ping(a) => observe::ping(a),
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_read_naturally() {
        assert_eq!(count(0, "entry"), "0 entries");
        assert_eq!(count(1, "entry"), "1 entry");
        assert_eq!(count(1, "byte"), "1 byte");
        assert_eq!(count(3, "problem"), "3 problems");
    }
}
