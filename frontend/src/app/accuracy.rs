//! `qdl-frontend check-accuracy DIR`: checks every sample in DIR's mlperf_log_accuracy.json.
//!
//! - Workloads with a reference function (ResNet-50's class id, BERT's span, digests: what the
//!   echo and synthetic backends answer) are recomputed from the samples report.json describes
//!   and must match exactly.
//! - Tensors workloads (real models) are compared with reference outputs (`--reference DIR`, or
//!   the run's `workload.reference_dir`): `<output>.npy` per output tensor, samples stacked.
//!   Integer elements must be equal; floating-point ones within `|got - want| <= atol + rtol·|want|`.
//!
//! - Generative (LLM) workloads: see [`super::accuracy_tokens`] (TEST06's checks, every token
//!   against the synthetic engine's reference answer, or a real model's answers against a
//!   reference run's: `--reference DIR` of an accuracy run at batch 1).
//!
//! Either way every sample of the accuracy run must be answered exactly once.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use qdl_frontend::npy::NpyFile;
use qdl_frontend::qsl::SampleSource;
use qdl_frontend::report::RunReport;
use qdl_shared::workload::{DType, OutputKind, WorkloadSpec, reference_output};

/// How outputs of a tensors workload are compared with the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (of the reference's magnitude).
    pub rtol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance { atol: 1e-4, rtol: 1e-3 }
    }
}

/// The reference outputs of a tensors workload, one `.npy` per output tensor.
struct References {
    files: Vec<(NpyFile, usize)>,
    available: usize,
}

impl References {
    fn open(spec: &WorkloadSpec, dir: &Path) -> anyhow::Result<References> {
        let mut files = Vec::new();
        let mut available = usize::MAX;
        for t in &spec.outputs {
            let path = dir.join(format!("{}.npy", t.name));
            let f = NpyFile::open(&path).with_context(|| format!("reference for output {:?}", t.name))?;
            let n = f.expect(t.dtype, &t.shape, true).with_context(|| format!("reference for output {:?}", t.name))?;
            available = available.min(n);
            files.push((f, t.bytes()));
        }
        Ok(References { files, available })
    }

    fn fill(&self, index: usize, out: &mut [u8]) -> anyhow::Result<()> {
        let mut at = 0;
        for (f, b) in &self.files {
            f.read_at((index * b) as u64, &mut out[at..at + b])?;
            at += b;
        }
        Ok(())
    }
}

/// Compares one sample's output with its reference; returns the largest absolute error of a
/// floating-point element, or the first element out of tolerance (tensor, element, got, want).
fn compare(
    spec: &WorkloadSpec,
    got: &[u8],
    want: &[u8],
    tol: Tolerance,
) -> Result<(f64, usize), (String, usize, f64, f64)> {
    let mut at = 0;
    let mut worst = (0.0f64, 0usize);
    for (ti, t) in spec.outputs.iter().enumerate() {
        let size = t.dtype.size();
        for (e, (g, w)) in
            got[at..at + t.bytes()].chunks_exact(size).zip(want[at..at + t.bytes()].chunks_exact(size)).enumerate()
        {
            let (g, w, exact) = (element(t.dtype, g), element(t.dtype, w), !matches!(t.dtype, DType::F32 | DType::F16));
            let err = (g - w).abs();
            let ok = if exact {
                g == w
            } else if g.is_nan() || w.is_nan() {
                g.is_nan() && w.is_nan()
            } else {
                err <= tol.atol + tol.rtol * w.abs()
            };
            if !ok {
                return Err((t.name.clone(), e, g, w));
            }
            if !exact && err > worst.0 {
                worst = (err, ti);
            }
        }
        at += t.bytes();
    }
    Ok(worst)
}

fn element(d: DType, b: &[u8]) -> f64 {
    match d {
        DType::I8 => b[0] as i8 as f64,
        DType::U8 => b[0] as f64,
        DType::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
        DType::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64,
        DType::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
        DType::F16 => f16_to_f64(u16::from_le_bytes(b.try_into().expect("2 bytes"))),
    }
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// One entry of LoadGen's accuracy log (the submission checks parse the same entries).
pub(super) use qdl_frontend::submission::test06::AccuracyEntry as Entry;

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
    /// Tensors workloads: the tolerance used and the largest absolute error seen (and in which
    /// output tensor).
    pub tolerance: Option<(Tolerance, f64, String)>,
    /// What the check could not do (e.g. compare a real model's tokens with a reference).
    pub note: Option<String>,
    /// Generative workloads on a real model: how the answers agree with a reference run's.
    pub agreement: Option<super::accuracy_tokens::Agreement>,
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
            && self.agreement.is_none_or(|a| a.within_bounds())
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Checks DIR; see the module docs. `reference` overrides the run's reference directory.
pub fn check(dir: &Path, reference: Option<&Path>, tol: Tolerance) -> anyhow::Result<Verdict> {
    let report = RunReport::read(dir).map_err(anyhow::Error::from)?;
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
    let spec = &report.workload;
    let mut v = Verdict { expected, ..Default::default() };
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut want = vec![0u8; spec.output_bytes as usize];
    if spec.is_generative() {
        let reference = match reference {
            Some(r) => {
                let path = r.join("mlperf_log_accuracy.json");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the reference run's {}", path.display()))?;
                let entries: Vec<Entry> = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not LoadGen's accuracy log", path.display()))?;
                Some(super::accuracy_tokens::answers(&entries))
            }
            None => None,
        };
        super::accuracy_tokens::check(&report, &entries, reference.as_ref(), &mut v, &mut seen)?;
    } else if spec.output_kind == OutputKind::Tensors {
        let Some(ref_dir) = reference.map(Path::to_path_buf).or_else(|| report.reference_dir.clone()) else {
            bail!(
                "{} is a tensors workload ({}): give its reference outputs with --reference DIR \
                 (<output>.npy per output tensor), or set workload.reference_dir",
                dir.display(),
                spec.name
            );
        };
        let refs = References::open(spec, &ref_dir)?;
        if refs.available < expected {
            bail!("{} holds references for {} samples; the run has {expected}", ref_dir.display(), refs.available);
        }
        let mut worst = (0.0f64, String::new());
        for e in &entries {
            *seen.entry(e.qsl_idx).or_default() += 1;
            if e.qsl_idx >= report.total_samples || e.qsl_idx >= refs.available {
                v.stray.push(e.qsl_idx);
                continue;
            }
            refs.fill(e.qsl_idx, &mut want)?;
            let got = unhex(&e.data).filter(|g| g.len() == want.len());
            let Some(got) = got else {
                v.wrong.push((e.qsl_idx, format!("{} hex digits", e.data.len()), format!("{} bytes", want.len())));
                continue;
            };
            match compare(spec, &got, &want, tol) {
                Ok((err, ti)) => {
                    if err > worst.0 {
                        worst = (err, spec.outputs[ti].name.clone());
                    }
                    if seen[&e.qsl_idx] == 1 {
                        v.correct += 1;
                    }
                }
                Err((tensor, el, g, w)) => {
                    v.wrong.push((e.qsl_idx, format!("{tensor}[{el}] = {g}"), format!("{w}")));
                }
            }
        }
        v.tolerance = Some((tol, worst.0, worst.1));
    } else {
        let source = SampleSource::from_info(spec, &report.dataset)?;
        let mut input = vec![0u8; spec.input_bytes()];
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
    }
    v.duplicated = seen.iter().filter(|(_, n)| **n > 1).map(|(i, _)| *i).collect();
    // LoadGen's accuracy mode issues samples 0..expected of the library exactly once each.
    v.missing = (0..expected).filter(|i| !seen.contains_key(i)).collect();
    Ok(v)
}

/// Prints the verdict; returns whether it passed.
pub fn print(v: &Verdict) -> bool {
    match &v.tolerance {
        None => println!("{}/{} samples correct", v.correct, v.expected),
        Some((t, worst, tensor)) => println!(
            "{}/{} samples correct (within atol={} rtol={} of the reference; largest absolute error {worst:.3e}{})",
            v.correct,
            v.expected,
            t.atol,
            t.rtol,
            if tensor.is_empty() { String::new() } else { format!(" in {tensor}") }
        ),
    }
    if let Some(n) = &v.note {
        println!("  note: {n}");
    }
    if let Some(a) = &v.agreement {
        use super::accuracy_tokens::{MIN_FIRST_TOKEN_AGREEMENT, MIN_ROUGE_L};
        println!(
            "  against the reference run: {}/{} identical, first token {}/{} (at least {:.0} %), ROUGE-L {:.3} (at least {MIN_ROUGE_L}): {}",
            a.exact,
            a.samples,
            a.first_token,
            a.samples,
            MIN_FIRST_TOKEN_AGREEMENT * 100.0,
            a.rouge_l,
            if a.within_bounds() { "within bounds" } else { "OUT OF BOUNDS" }
        );
    }
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
