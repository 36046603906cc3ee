//! The open-file limit of the process hosting a proxy. Every peer link and
//! every logical connection holds a file descriptor, so a proxy of a large
//! cluster needs far more than the usual soft limit of 1024; the shells
//! raise the soft limit to the hard one at start, before the runtime
//! spawns its threads, and publish both. Never lowers a limit.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// `RLIMIT_NOFILE` after [`raise_nofile`]; `u64::MAX` stands for unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimits {
    pub soft: u64,
    pub hard: u64,
}

impl FdLimits {
    fn of(r: &Rlimit) -> FdLimits {
        FdLimits {
            soft: r.current.unwrap_or(u64::MAX),
            hard: r.maximum.unwrap_or(u64::MAX),
        }
    }
}

impl std::fmt::Display for FdLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: u64| {
            if v == u64::MAX {
                "unlimited".to_string()
            } else {
                v.to_string()
            }
        };
        write!(f, "soft {}, hard {}", show(self.soft), show(self.hard))
    }
}

/// The limits in force now.
pub fn nofile() -> FdLimits {
    FdLimits::of(&getrlimit(Resource::Nofile))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns both as
/// they are afterwards. Needs no privilege: any process may raise its soft
/// limit up to its hard one.
pub fn raise_nofile() -> std::io::Result<FdLimits> {
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        )?;
    }
    Ok(nofile())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_sets_the_soft_limit_to_the_hard_one_and_reports_both() {
        let before = nofile();
        // Start below the hard limit (one below: nothing else in this test
        // process can run out of descriptors because of it).
        if before.soft == before.hard && before.hard != u64::MAX && before.hard > 1 {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(before.hard - 1),
                    maximum: Some(before.hard),
                },
            )
            .expect("lower the soft limit");
            assert_eq!(nofile().soft, before.hard - 1);
        }
        let raised = raise_nofile().expect("raise the soft limit");
        assert_eq!(raised.soft, raised.hard, "{raised}");
        assert_eq!(raised.hard, before.hard, "the hard limit is untouched");
        assert_eq!(nofile(), raised, "what it returns is what is in force");
        // A second raise changes nothing.
        assert_eq!(raise_nofile().expect("raise again"), raised);
    }

    #[test]
    fn limits_print_unlimited_for_infinity() {
        let l = FdLimits {
            soft: 1024,
            hard: u64::MAX,
        };
        assert_eq!(l.to_string(), "soft 1024, hard unlimited");
    }
}
