//! The report: one table per scenario printed as Markdown as soon as it is
//! measured, the same figures (with every run) kept for the JSON file, the
//! issue's targets checked against them, and the problems that fail a run.

use serde::Serialize;
use serde_json::Value;

use crate::machine::MachineInfo;
use crate::stats::Spread;

/// One scenario's table and its raw figures.
#[derive(Debug, Serialize)]
pub struct Section {
    pub id: &'static str,
    pub title: String,
    pub notes: Vec<String>,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Every run of every figure, for the JSON file.
    pub data: Vec<Value>,
    /// Share of the machine's CPU that other processes used meanwhile.
    pub foreign_cpu_share: Option<f64>,
}

impl Section {
    pub fn new(id: &'static str, title: impl Into<String>, headers: &[&str]) -> Section {
        Section {
            id,
            title: title.into(),
            notes: Vec::new(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            data: Vec::new(),
            foreign_cpu_share: None,
        }
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn row(&mut self, cells: Vec<String>, data: Value) {
        self.rows.push(cells);
        self.data.push(data);
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        for n in &self.notes {
            s += &format!("{n}\n");
        }
        if !self.notes.is_empty() {
            s += "\n";
        }
        s += &format!("| {} |\n", self.headers.join(" | "));
        s += &format!(
            "|{}\n",
            self.headers.iter().map(|_| " --- |").collect::<String>()
        );
        for r in &self.rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        s
    }
}

/// One of the targets beside what was measured.
#[derive(Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// None when it was not measured in this run.
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: MachineInfo,
    /// Load averages when the run started and when it ended.
    pub load_average: [String; 2],
    pub options: Value,
    pub sections: Vec<Section>,
    pub targets: Vec<Target>,
    /// Lost or corrupted data, stalls, failed set-ups: each fails the run.
    pub problems: Vec<String>,
    /// What the proxies logged at WARN or ERROR.
    pub proxy_warnings: Vec<String>,
    /// Scenarios left out of this run, and why (not failures).
    pub skipped: Vec<String>,
}

impl Report {
    pub fn targets_markdown(&self) -> String {
        let mut s = String::from(
            "### Targets (issue 6)\n\n| target | measured | met |\n| --- | --- | --- |\n",
        );
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            s += &format!("| {} | {} | {met} |\n", t.target, t.measured);
        }
        s
    }
}

/// `min / median / max` with `prec` decimals.
pub fn spread(s: Option<Spread>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} / {:.p$} / {:.p$}", s.min, s.median, s.max, p = prec),
        None => "-".into(),
    }
}

/// A ratio spread as percentages: `median% (min–max)`.
pub fn percent(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!(
            "{:.0}% ({:.0}–{:.0})",
            s.median * 100.0,
            s.min * 100.0,
            s.max * 100.0
        ),
        None => "-".into(),
    }
}

/// A ratio spread as a factor: `median× (min–max)`.
pub fn factor(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "-".into(),
    }
}

pub fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1024.0 * 1024.0))
}

/// Every run and its spread, for the JSON file.
pub fn runs_json(values: &[f64]) -> Value {
    serde_json::json!({ "runs": values, "spread": Spread::of(values) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let s = Spread::of(&[1.0, 2.0, 4.0]);
        assert_eq!(spread(s, 1), "1.0 / 2.0 / 4.0");
        assert_eq!(spread(None, 1), "-");
        assert_eq!(percent(Spread::of(&[0.5, 0.75, 0.8])), "75% (50–80)");
        assert_eq!(factor(Spread::of(&[2.0])), "2.00× (2.00–2.00)");
        let mut sec = Section::new("x", "X", &["a", "b"]);
        sec.row(vec!["1".into(), "2".into()], Value::Null);
        assert_eq!(
            sec.markdown(),
            "### X\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n"
        );
    }
}
