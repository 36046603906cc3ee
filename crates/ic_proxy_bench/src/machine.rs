//! What the bench reads from and does to this machine: a process's CPU time
//! and resident memory from /proc, the descriptor limit, a nice-19 busy loop
//! that keeps one core awake, and the machine's description for the report.

use std::fs;
use std::process::{Child, Command, Stdio};

use serde::Serialize;

/// utime + stime of process `pid` (all its threads, dead ones included), in
/// seconds; `None` when the process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'. utime and stime are fields 14 and 15 of the line, so the
    // 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + nice + system time of the whole machine (all cores), in seconds.
/// Interrupt time is left out: loopback traffic of the bench itself is
/// accounted there, not to its processes.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = cpu
        .split_whitespace()
        .take(3)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    Some(f.iter().sum::<f64>() / clock_ticks())
}

/// CPU seconds of this process, its reaped children, and every live
/// descendant (the proxies, holders, busy loops it started); also of the
/// processes `also` and their descendants (servers that daemonized away
/// from this process but are the bench's own).
pub fn own_tree_cpu_seconds(also: &[u32]) -> f64 {
    let me = std::process::id();
    // pid -> (parent, own + reaped children's CPU ticks)
    let mut procs = std::collections::HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(i) = stat.rfind(')') else { continue };
            let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
            let num = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // ppid is field 4; utime, stime, cutime, cstime are 14..=17.
            let ppid = num(1) as u32;
            procs.insert(pid, (ppid, num(11) + num(12) + num(13) + num(14)));
        }
    }
    let mut total = 0.0;
    for (&pid, &(_, ticks)) in &procs {
        // Walk up the parents: ours if `me` is an ancestor (or itself).
        let mut p = pid;
        for _ in 0..64 {
            if p == me || also.contains(&p) {
                total += ticks;
                break;
            }
            match procs.get(&p) {
                Some(&(parent, _)) if parent != 0 && parent != p => p = parent,
                _ => break,
            }
        }
    }
    total / clock_ticks()
}

/// VmRSS of process `pid` in bytes; `None` when the process is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|k| k * 1024)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The 1, 5 and 15-minute load averages: whether the machine was quiet.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Descriptors process `pid` has open; `None` when it is gone.
pub fn open_fds(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Raises this process's RLIMIT_NOFILE (soft and hard) as far as `want` or
/// the kernel's nr_open allow; children inherit it. Returns the soft limit
/// in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
    }
    let target = want.min(nr_open);
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, go as far
    // as the hard limit allows.
    for (soft, hard) in [
        (target, target.max(cur.rlim_max)),
        (target.min(cur.rlim_max), cur.rlim_max),
    ] {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            return soft;
        }
    }
    cur.rlim_cur
}

/// A `nice -n 19` shell busy loop that keeps one core awake while it lives;
/// killed (by its own pid) on drop.
pub struct BusyLoop {
    child: Option<Child>,
}

impl BusyLoop {
    pub fn start() -> std::io::Result<BusyLoop> {
        let child = Command::new("nice")
            .args(["-n", "19", "sh", "-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(BusyLoop { child: Some(child) })
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The machine, as BENCHMARKS.md describes it.
#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub rustc: String,
    pub build_profile: &'static str,
}

impl MachineInfo {
    pub fn read() -> MachineInfo {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_kib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let rustc = Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        MachineInfo {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_gib: mem_kib as f64 / (1024.0 * 1024.0),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            rustc,
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
