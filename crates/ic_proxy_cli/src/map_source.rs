//! Where an address map comes from (the command line or a file) and how its
//! problems are shown to a person; also the `check` subcommand. The parsing
//! and the wording of every problem belong to `ic_proxy_core::address_map`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use ic_proxy_core::address_map::{AddressMap, MapProblem};

use crate::args::CheckArgs;
use crate::{count, EXIT_FAILURE, EXIT_USAGE};

/// A map given inline or kept in a file. The file holds the value exactly as
/// `ic_proxy.addresses` would: entries separated by ',', with any whitespace
/// (newlines included) around them.
#[derive(Clone, Debug)]
pub enum MapSource {
    Inline(String),
    File(PathBuf),
}

/// Why no map could be had.
#[derive(Debug)]
pub enum LoadError {
    Read { path: PathBuf, source: io::Error },
    Invalid(Vec<MapProblem>),
}

impl fmt::Display for MapSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapSource::Inline(_) => f.write_str("--addresses"),
            MapSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl MapSource {
    pub fn load(&self) -> Result<AddressMap, LoadError> {
        let text = match self {
            MapSource::Inline(s) => s.clone(),
            MapSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| LoadError::Read {
                    path: path.clone(),
                    source,
                })?
            }
        };
        AddressMap::parse(&text).map_err(|e| LoadError::Invalid(e.problems))
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(
                    f,
                    "cannot read the address map {}: {source}",
                    path.display()
                )
            }
            LoadError::Invalid(problems) => write!(
                f,
                "the address map is invalid ({})",
                count(problems.len() as u64, "problem")
            ),
        }
    }
}

/// Two lines per problem: the core's message (`entry N "...": what`), then
/// `hint: how to fix it`.
pub fn problem_lines(problems: &[MapProblem]) -> Vec<String> {
    problems
        .iter()
        .flat_map(|p| [p.message(), format!("hint: {}", p.hint())])
        .collect()
}

/// `ic-proxy check`: 0 and `valid: N entries` plus the canonical form, or 1
/// and every problem; 2 when the file cannot be read.
pub fn check(args: CheckArgs) -> ExitCode {
    let source = match (args.map, args.file) {
        (Some(map), _) => MapSource::Inline(map),
        (None, Some(file)) => MapSource::File(file),
        // clap's group requires one of them.
        (None, None) => unreachable!("neither MAP nor --file"),
    };
    match source.load() {
        Ok(map) => {
            println!("valid: {}", count(map.len() as u64, "entry"));
            if !map.is_empty() {
                println!("{map}");
            }
            ExitCode::SUCCESS
        }
        Err(LoadError::Invalid(problems)) => {
            for line in problem_lines(&problems) {
                println!("{line}");
            }
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e @ LoadError::Read { .. }) => {
            eprintln!("ic-proxy: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_gets_its_hint() {
        let problems = AddressMap::check("1:-1:h:1,1:0:h:2,x");
        let lines = problem_lines(&problems);
        assert_eq!(lines.len(), 2 * problems.len());
        assert_eq!(lines[0], problems[0].message());
        assert_eq!(lines[1], format!("hint: {}", problems[0].hint()));
    }
}
