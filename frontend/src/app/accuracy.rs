//! `qdl-frontend check-accuracy DIR`: recomputes the expected output of every sample in DIR's
//! mlperf_log_accuracy.json (from the samples report.json describes) and compares.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use qdl_frontend::qsl::SampleSource;
use qdl_frontend::report::RunReport;
use qdl_shared::workload::reference_output;
use serde::Deserialize;

#[derive(Deserialize)]
struct Entry {
    qsl_idx: usize,
    data: String,
}

/// The outcome of a check.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Samples expected (the accuracy run's sample count).
    pub expected: usize,
    /// Samples whose response matched.
    pub correct: usize,
    /// Samples with no response.
    pub missing: Vec<usize>,
    /// Samples answered more than once.
    pub duplicated: Vec<usize>,
    /// Samples whose response was wrong (index, got, want).
    pub wrong: Vec<(usize, String, String)>,
    /// Responses for indices outside the library.
    pub stray: Vec<usize>,
}

impl Verdict {
    /// Whether every sample was answered exactly once, correctly.
    pub fn passed(&self) -> bool {
        self.expected > 0
            && self.correct == self.expected
            && self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.wrong.is_empty()
            && self.stray.is_empty()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Checks DIR; see the module docs.
pub fn check(dir: &Path) -> anyhow::Result<Verdict> {
    let report = RunReport::read(dir).map_err(anyhow::Error::msg)?;
    let path = dir.join("mlperf_log_accuracy.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let entries: Vec<Entry> =
        serde_json::from_str(&text).with_context(|| format!("{} is not LoadGen's accuracy log", path.display()))?;
    let expected = match report.loadgen.accuracy_sample_count {
        Some(n) if n > 0 => (n as usize).min(report.total_samples),
        _ => report.total_samples,
    };
    if report.mode != qdl_shared::config::ModeName::Accuracy {
        bail!("{} holds a {} run; check-accuracy needs an accuracy-mode run", dir.display(), report.mode.as_str());
    }
    let source = SampleSource::from_info(&report.workload, &report.dataset)?;
    let spec = &report.workload;
    let mut input = vec![0u8; spec.input_bytes()];
    let mut want = vec![0u8; spec.output_bytes as usize];
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut v = Verdict { expected, ..Default::default() };
    for e in &entries {
        *seen.entry(e.qsl_idx).or_default() += 1;
        if e.qsl_idx >= report.total_samples {
            v.stray.push(e.qsl_idx);
            continue;
        }
        source.fill(e.qsl_idx, &mut input)?;
        reference_output(spec.output_kind, &input, &mut want);
        if e.data.eq_ignore_ascii_case(&hex(&want)) {
            if seen[&e.qsl_idx] == 1 {
                v.correct += 1;
            }
        } else {
            v.wrong.push((e.qsl_idx, e.data.clone(), hex(&want)));
        }
    }
    v.duplicated = seen.iter().filter(|(_, n)| **n > 1).map(|(i, _)| *i).collect();
    // LoadGen's accuracy mode issues samples 0..expected of the library exactly once each.
    v.missing = (0..expected).filter(|i| !seen.contains_key(i)).collect();
    Ok(v)
}

/// Prints the verdict; returns whether it passed.
pub fn print(v: &Verdict) -> bool {
    println!("{}/{} samples correct", v.correct, v.expected);
    let show = |what: &str, items: &[usize]| {
        if !items.is_empty() {
            let head: Vec<String> = items.iter().take(10).map(|i| i.to_string()).collect();
            println!("  {} {what}: {}{}", items.len(), head.join(", "), if items.len() > 10 { ", ..." } else { "" });
        }
    };
    show("missing", &v.missing);
    show("duplicated", &v.duplicated);
    show("outside the library", &v.stray);
    for (i, got, want) in v.wrong.iter().take(10) {
        println!("  sample {i}: got {got}, expected {want}");
    }
    if v.wrong.len() > 10 {
        println!("  ... {} wrong in all", v.wrong.len());
    }
    v.passed()
}
