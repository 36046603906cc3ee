//! Reads `perf script` output (samples with call chains) and says where a
//! proxy's time goes: by the innermost `ic_proxy_core` function on each
//! stack (the code that caused the work, kernel work included) and by system
//! call. A proxy spends most of its time in the kernel, where a flat profile
//! names only `_copy_to_iter` and friends; this names the caller.

use std::collections::HashMap;
use std::io::BufRead;

/// Sample counts by owner, by system call, and by both.
#[derive(Debug, Default)]
pub struct Folded {
    pub samples: u64,
    pub by_owner: HashMap<String, u64>,
    pub by_syscall: HashMap<String, u64>,
    pub by_both: HashMap<(String, String), u64>,
}

const SYSCALL_PREFIXES: [&str; 4] = ["__x64_sys_", "__do_sys_", "__se_sys_", "ksys_"];

/// The symbol of one `perf script` frame line: `\t  addr sym+0x1f (dso)`.
fn frame_symbol(line: &str) -> Option<String> {
    let rest = line.trim().split_once(' ')?.1.trim();
    let rest = match rest.rfind(" (") {
        Some(i) if rest.ends_with(')') => &rest[..i],
        _ => rest,
    };
    let sym = match rest.rfind("+0x") {
        Some(i) => &rest[..i],
        None => rest,
    };
    Some(sym.trim().to_string())
}

/// The system call a stack is in: its `__x64_sys_*` frame, or else the
/// frame the syscall entry called (some handlers are inlined into it).
fn syscall_of(frames: &[String]) -> Option<String> {
    let strip = |f: &str| {
        SYSCALL_PREFIXES
            .iter()
            .chain(&["do_"])
            .find_map(|p| f.strip_prefix(p))
            .unwrap_or(f)
            .to_string()
    };
    if let Some(f) = frames
        .iter()
        .find(|f| SYSCALL_PREFIXES.iter().any(|p| f.starts_with(p)))
    {
        return Some(strip(f));
    }
    // Frames run from the leaf outward: the one before the entry point,
    // skipping the dispatcher.
    let entry = frames.iter().position(|f| f == "do_syscall_64")?;
    frames[..entry]
        .iter()
        .rev()
        .find(|f| !f.starts_with("x64_sys_call"))
        .map(|f| strip(f))
}

impl Folded {
    fn add(&mut self, frames: &[String]) {
        if frames.is_empty() {
            return;
        }
        self.samples += 1;
        let owner = match frames.iter().find(|f| f.starts_with("ic_proxy_core::")) {
            Some(f) => f.replace("::{{closure}}", ""),
            None if frames.iter().any(|f| f.contains("tokio::runtime")) => {
                "tokio scheduler, idle, other".into()
            }
            None => frames.last().cloned().unwrap_or_default(),
        };
        let syscall = syscall_of(frames).unwrap_or_else(|| {
            if frames.iter().any(|f| f.contains("exc_page_fault")) {
                "(page fault)".into()
            } else {
                "(user space or interrupt)".into()
            }
        });
        *self.by_owner.entry(owner.clone()).or_default() += 1;
        *self.by_syscall.entry(syscall.clone()).or_default() += 1;
        *self.by_both.entry((syscall, owner)).or_default() += 1;
    }

    pub fn read(input: impl BufRead) -> Folded {
        let mut f = Folded::default();
        let mut frames = Vec::new();
        for line in input.lines().map_while(Result::ok) {
            if line.starts_with('\t') {
                if let Some(s) = frame_symbol(&line) {
                    frames.push(s);
                }
            } else {
                f.add(&frames);
                frames.clear();
            }
        }
        f.add(&frames);
        f
    }

    fn top<K: Clone + Ord>(m: &HashMap<K, u64>, n: usize) -> Vec<(K, u64)> {
        let mut v: Vec<(K, u64)> = m.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    pub fn markdown(&self) -> String {
        let pct = |c: u64| 100.0 * c as f64 / self.samples.max(1) as f64;
        let mut s = format!("{} samples\n\n| share | proxy function (innermost `ic_proxy_core` frame) |\n| --- | --- |\n", self.samples);
        for (k, c) in Self::top(&self.by_owner, 12) {
            s += &format!("| {:.1}% | `{k}` |\n", pct(c));
        }
        s += "\n| share | system call |\n| --- | --- |\n";
        for (k, c) in Self::top(&self.by_syscall, 8) {
            s += &format!("| {:.1}% | {k} |\n", pct(c));
        }
        s += "\n| share | system call ← proxy function |\n| --- | --- |\n";
        for ((sc, o), c) in Self::top(&self.by_both, 12) {
            s += &format!("| {:.1}% | {sc} ← `{o}` |\n", pct(c));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_by_owner_and_syscall() {
        let script = "ic-proxy-worker 1 1.0: 1 cpu-clock:\n\
            \tffffffff81 _copy_to_iter+0x1f ([kernel.kallsyms])\n\
            \tffffffff82 __x64_sys_recvfrom+0x20 ([kernel.kallsyms])\n\
            \t83d37 ic_proxy_core::backend::read_backend::{{closure}}+0xb7 (inlined)\n\
            \t8df86 tokio::runtime::task::core::Core<T,S>::poll+0x36 (/x/ic-proxy)\n\
            \n\
            ic-proxy-worker 1 1.1: 1 cpu-clock:\n\
            \t96c98 __memmove_avx512_unaligned_erms+0x1 (/usr/lib/libc.so.6)\n\
            \t83d37 ic_proxy_core::peer::write_link+0xb7 (/x/ic-proxy)\n\
            \n\
            ic-proxy-worker 1 1.2: 1 cpu-clock:\n\
            \t8df86 tokio::runtime::scheduler::multi_thread::worker::Context::park+0x36 (/x/ic-proxy)\n";
        let f = Folded::read(script.as_bytes());
        assert_eq!(f.samples, 3);
        assert_eq!(f.by_owner["ic_proxy_core::backend::read_backend"], 1);
        assert_eq!(f.by_owner["ic_proxy_core::peer::write_link"], 1);
        assert_eq!(f.by_owner["tokio scheduler, idle, other"], 1);
        assert_eq!(f.by_syscall["recvfrom"], 1);
        assert_eq!(f.by_syscall["(user space or interrupt)"], 2);
        assert!(f
            .markdown()
            .contains("| 33.3% | recvfrom ← `ic_proxy_core::backend::read_backend` |"));
    }
}
