//! Figures and the report: each figure is a set of samples summarised as median, p90, min and max,
//! optionally next to a baseline measured in the same run, with the ratio of the medians and
//! the target it is held to. Rendered as markdown (docs/performance.md) and JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Median, 90th percentile, min, max of a set of samples, in the figure's unit.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub median: f64,
    /// Nearest rank: the smallest sample at least 90% of the samples are not above (the max
    /// when there are fewer than 10).
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    /// Summarises samples (NaNs are dropped). Panics on an empty set: a figure without samples
    /// is a broken benchmark, not a result.
    pub fn of(samples: &[f64]) -> Stats {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        assert!(!v.is_empty(), "no samples");
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank, ceil(0.9 n): integer arithmetic, so 20 samples give the 18th exactly.
        let p90 = v[(9 * n).div_ceil(10) - 1];
        Stats {
            median,
            p90,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    /// One measured value (a size, a count).
    pub fn one(x: f64) -> Stats {
        Stats::of(&[x])
    }

    /// Durations, in milliseconds.
    pub fn ms(samples: &[Duration]) -> Stats {
        let v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Stats::of(&v)
    }
}

/// What a figure is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub name: String,
    pub stats: Stats,
}

/// The goal a figure is held to, and whether this run met it. Never fails anything: the report
/// says so, and (for a miss) why.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub text: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub stats: Stats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// median / baseline median.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Figure {
    pub fn new(name: impl Into<String>, unit: &str, stats: Stats) -> Figure {
        Figure {
            name: name.into(),
            unit: unit.to_owned(),
            stats,
            baseline: None,
            ratio: None,
            target: None,
            note: String::new(),
        }
    }

    /// Sets the baseline (same unit) and the ratio of the medians.
    pub fn against(mut self, name: impl Into<String>, stats: Stats) -> Figure {
        self.ratio = (stats.median != 0.0).then(|| self.stats.median / stats.median);
        self.baseline = Some(Baseline {
            name: name.into(),
            stats,
        });
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Figure {
        self.target = Some(Target {
            text: text.into(),
            met,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }
}

/// One numbered item of the suite (issue text: "Measure: 1. ... 9.").
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub figures: Vec<Figure>,
    /// How it was measured, what the baseline is, and (for a missed target) the profiled
    /// cause: markdown paragraphs.
    pub notes: Vec<String>,
    /// Set when the section's code failed: the report keeps the other sections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
}

impl Section {
    pub fn new(id: &str, title: &str) -> Section {
        Section {
            id: id.to_owned(),
            title: title.to_owned(),
            figures: vec![],
            notes: vec![],
            error: None,
            seconds: 0.0,
        }
    }

    pub fn push(&mut self, f: Figure) {
        println!("    {}", one_line(&f));
        self.figures.push(f);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Vec<(String, String)>,
    pub command: String,
    pub started: String,
    pub seconds: f64,
    pub sections: Vec<Section>,
}

/// A number with a sensible number of digits for its size.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        group(x.round() as i64)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

fn group(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn one_line(f: &Figure) -> String {
    let mut s = format!(
        "{}: {} {} (p90 {}, min {}, max {}, n {})",
        f.name,
        num(f.stats.median),
        f.unit,
        num(f.stats.p90),
        num(f.stats.min),
        num(f.stats.max),
        f.stats.n
    );
    if let (Some(b), Some(r)) = (&f.baseline, f.ratio) {
        let _ = write!(s, "; {}: {} → {}×", b.name, num(b.stats.median), num(r));
    }
    if let Some(t) = &f.target {
        let _ = write!(
            s,
            "; target {}: {}",
            t.text,
            if t.met { "met" } else { "MISSED" }
        );
    }
    s
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "Measured {} in {:.0} s by `{}`.\n",
            self.started, self.seconds, self.command
        );
        let _ = writeln!(m, "| machine | |\n|---|---|");
        for (k, v) in &self.machine {
            let _ = writeln!(m, "| {} | {} |", cell(k), cell(v));
        }
        let missed: Vec<String> = self
            .sections
            .iter()
            .flat_map(|s| {
                s.figures
                    .iter()
                    .filter(|f| f.target.as_ref().is_some_and(|t| !t.met))
                    .map(move |f| format!("{} {}: {}", s.id, s.title, f.name))
            })
            .collect();
        let failed: Vec<String> = self
            .sections
            .iter()
            .filter(|s| s.error.is_some())
            .map(|s| format!("{} {}", s.id, s.title))
            .collect();
        m.push('\n');
        if missed.is_empty() {
            m.push_str("Every figure with a target met it in this run.\n");
        } else {
            m.push_str("Targets missed in this run (the cause is in the section's notes):\n");
            for x in &missed {
                let _ = writeln!(m, "- {x}");
            }
        }
        if !failed.is_empty() {
            m.push_str("\nSections that failed to run (their error is shown):\n");
            for x in &failed {
                let _ = writeln!(m, "- {x}");
            }
        }
        for s in &self.sections {
            let _ = writeln!(m, "\n### {} {}\n", s.id, s.title);
            if let Some(e) = &s.error {
                let _ = writeln!(m, "**Failed to run:** `{}`\n", cell(e));
            }
            if !s.figures.is_empty() {
                m.push_str(
                    "| figure | median | p90 | min | max | n | baseline | baseline median | ratio | target |\n",
                );
                m.push_str("|---|---:|---:|---:|---:|---:|---|---:|---:|---|\n");
                for f in &s.figures {
                    let u = &f.unit;
                    let (bn, bm) = match &f.baseline {
                        Some(b) => (cell(&b.name), format!("{} {u}", num(b.stats.median))),
                        None => ("–".into(), "–".into()),
                    };
                    let ratio = f
                        .ratio
                        .map(|r| format!("{}×", num(r)))
                        .unwrap_or("–".into());
                    let target = match &f.target {
                        Some(t) if t.met => format!("{}: met", cell(&t.text)),
                        Some(t) => format!("{}: **missed**", cell(&t.text)),
                        None => "–".into(),
                    };
                    let _ = writeln!(
                        m,
                        "| {} | {} {u} | {} | {} | {} | {} | {bn} | {bm} | {ratio} | {target} |",
                        cell(&f.name),
                        num(f.stats.median),
                        num(f.stats.p90),
                        num(f.stats.min),
                        num(f.stats.max),
                        f.stats.n,
                    );
                }
                let notes: Vec<_> = s
                    .figures
                    .iter()
                    .filter(|f| !f.note.is_empty())
                    .map(|f| format!("- *{}*: {}", f.name, f.note))
                    .collect();
                if !notes.is_empty() {
                    m.push('\n');
                    for n in notes {
                        let _ = writeln!(m, "{n}");
                    }
                }
            }
            for n in &s.notes {
                let _ = writeln!(m, "\n{n}");
            }
            let _ = writeln!(m, "\n<sub>section time: {:.0} s</sub>", s.seconds);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_samples() {
        let s = Stats::of(&[3.0, 1.0, 2.0, f64::NAN, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
        assert_eq!(Stats::of(&[5.0]).median, 5.0);
        assert_eq!(Stats::of(&[5.0]).p90, 5.0);
    }

    #[test]
    fn p90_is_the_nearest_rank() {
        let twenty: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(Stats::of(&twenty).p90, 18.0);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Stats::of(&ten).p90, 9.0);
        assert_eq!(Stats::of(&[1.0, 2.0, 3.0]).p90, 3.0);
    }

    #[test]
    fn ratio_is_of_the_medians() {
        let f = Figure::new("x", "ms", Stats::of(&[2.0, 4.0, 6.0]))
            .against("y", Stats::of(&[1.0, 2.0, 3.0]));
        assert_eq!(f.ratio, Some(2.0));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(0.4567), "0.457");
        assert_eq!(num(12.345), "12.3");
    }
}
