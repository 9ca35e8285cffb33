//! The query sample library's data: where samples come from ([`SampleSource`]: generated from a
//! seed, or read from `.npy` files) and the long-lived buffer they are loaded into
//! ([`SampleStore`] / [`LoadedSet`]), which the transports send from without a staging copy.
//!
//! # The generator (documented, so anyone can reproduce a sample)
//! Sample `i` of seed `s` draws from SplitMix64 seeded with `s ^ (i+1) × 0x9E3779B97F4A7C15`:
//! - int8/uint8 tensors: the generator's output bytes, little-endian, 8 at a time;
//! - BERT (`input_ids`, `input_mask`, `segment_ids`, 384 int32 each): a sequence length
//!   `L = 32 + r % 353`, a question length `Q = 8 + r % (L/2)`; ids are `101` (CLS) at 0, `102`
//!   (SEP) at `Q` and `L-1`, `1000 + r % 29522` elsewhere below `L`, 0 after; the mask is 1
//!   below `L`; segment ids are 1 for `Q < t < L`;
//! - other int32/int64 tensors: `r % 1000`; float tensors: `(r >> 40) / 2^24 × 2 − 1`;
//! - generative workloads (one int32 `input_ids`, a [`Generation`]): first a true length `L`,
//!   [`LengthDistribution::draw`] of the workload's [`Generation::input_lengths`] fed with the
//!   generator's next `skew` outputs; then the ids: position 0 is the BOS when the workload has one
//!   (no draw), every other id takes one draw `r` and is `100 + r % (vocab − 100 − k)` stepped past
//!   EOS and BOS (`k` of them at or above 100; ascending, `id += 1` for each one `<= id`): uniform
//!   over `[100, vocab)` without EOS and BOS. The sample is those `L` ids, `4·L` bytes.
//!
//! # Pre-tokenized prompts (generative workloads)
//! A dataset directory holds `input_ids.npy`, int32 or int64 `[N, W]` (each row a prompt, its ids
//! first, padding after), and `input_lens.npy`, int32 or int64 `[N]` (each prompt's true length),
//! as MLPerf's LLM datasets are distributed (token ids plus lengths). Ids become int32
//! little-endian and must lie in `0..vocab_size`; a length of 0 (or less), one above the row width
//! or one above `max_input_tokens` is refused, naming the sample (MLPerf truncates prompts when
//! it prepares a dataset, so a longer one means the wrong dataset or workload).
//!
//! # Prompts from a text file (generative workloads)
//! `workload.prompts_file`, one prompt per line, tokenized by `workload.tokenizer` (a GGUF
//! file's tokenizer) when the QSL loads, before the test: see [`prompts`]. The ids are packed as
//! a `.npy` dataset's are.
//!
//! # The loaded buffer
//! A [`LoadedSet`] holds the loaded samples back to back. Fixed-size workloads' samples are all
//! [`WorkloadSpec::input_bytes`]; generative workloads' are packed at their true lengths with an
//! offsets table ([`LoadedSet::range`]), so a request carries exactly the prompt.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use qdl_shared::transport::PayloadSource;
#[cfg(doc)]
use qdl_shared::workload::LengthDistribution;
use qdl_shared::workload::{BERT_SEQ_LEN, DType, Generation, INPUT_IDS, WorkloadSpec};
use serde::{Deserialize, Serialize};

use crate::npy::{NpyError, NpyFile};

pub mod prompts;

/// Errors of the QSL.
#[derive(Debug, thiserror::Error)]
pub enum QslError {
    /// A dataset file is missing, unreadable or holds the wrong tensor.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// The dataset directory does not fit the workload.
    #[error("dataset {dir}: {reason}")]
    Dataset {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// LoadGen asked for a sample outside the library.
    #[error("sample {index} is outside the library of {total} samples")]
    OutOfRange {
        /// The index.
        index: usize,
        /// The library's size.
        total: usize,
    },
    /// A token file holds neither int32 nor int64 elements.
    #[error("{path}: dtype {descr}, where token ids and lengths are int32 (<i4) or int64 (<i8)")]
    TokenDType {
        /// The file.
        path: PathBuf,
        /// Its numpy `descr`.
        descr: String,
    },
    /// A token file has the wrong number of dimensions.
    #[error("{path}: shape {shape:?}, where {expected} was expected")]
    TokenShape {
        /// The file.
        path: PathBuf,
        /// Its shape.
        shape: Vec<usize>,
        /// The expected shape, in words.
        expected: &'static str,
    },
    /// `input_ids.npy` and `input_lens.npy` hold different numbers of samples.
    #[error("dataset {dir}: input_ids.npy holds {ids} samples, input_lens.npy {lens}")]
    SampleCounts {
        /// The directory.
        dir: PathBuf,
        /// Rows of `input_ids.npy`.
        ids: usize,
        /// Entries of `input_lens.npy`.
        lens: usize,
    },
    /// A prompt's length is 0 or negative.
    #[error("{path}: sample {index} has length {len}; a prompt needs at least one token")]
    EmptySample {
        /// The lengths file.
        path: PathBuf,
        /// The sample.
        index: usize,
        /// Its length.
        len: i64,
    },
    /// A prompt is longer than the workload's `max_input_tokens`.
    #[error("{path}: sample {index} has {len} tokens; the workload takes at most {max}")]
    SampleTooLong {
        /// The lengths file.
        path: PathBuf,
        /// The sample.
        index: usize,
        /// Its length, tokens.
        len: i64,
        /// The workload's `max_input_tokens`.
        max: u32,
    },
    /// A prompt's length exceeds the row width of `input_ids.npy`.
    #[error("{path}: sample {index} has length {len}, but input_ids.npy rows hold {width} ids")]
    LengthBeyondRow {
        /// The lengths file.
        path: PathBuf,
        /// The sample.
        index: usize,
        /// Its length, tokens.
        len: i64,
        /// Ids per row of `input_ids.npy`.
        width: usize,
    },
    /// A prompt holds an id outside the vocabulary.
    #[error("{path}: sample {index} holds token {id} at position {position}, outside 0..{vocab}")]
    TokenOutOfRange {
        /// The ids file.
        path: PathBuf,
        /// The sample.
        index: usize,
        /// The id's position in the prompt.
        position: usize,
        /// The id.
        id: i64,
        /// The workload's `vocab_size`.
        vocab: u32,
    },
    /// A prompts file is unreadable, not UTF-8, empty, or a prompt cannot be tokenized.
    #[error("prompts file {path}: {reason}")]
    PromptsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (naming the line).
        reason: String,
    },
    /// A tokenized prompt holds an id outside the workload's vocabulary.
    #[error(
        "prompts file {path}: line {line} tokenizes to id {id} at position {position}, outside the workload's \
         vocabulary 0..{vocab}: is the tokenizer the workload's model's?"
    )]
    PromptToken {
        /// The prompts file.
        path: PathBuf,
        /// The prompt's line.
        line: usize,
        /// The id's position in the tokenized prompt.
        position: usize,
        /// The id.
        id: i32,
        /// The workload's `vocab_size`.
        vocab: u32,
    },
    /// The tokenizer's file cannot be read.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The GGUF file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// This build has no tokenizer (llama.cpp comes with the feature `local`).
    #[error(
        "prompts file {path}: tokenizing prompts needs llama.cpp, which this qdl-frontend was built without: build \
         it with the cargo feature `local` (on by default), or tokenize them where it is with `qdl-frontend \
         tokenize --tokenizer MODEL.gguf --prompts FILE --workload NAME --out DIR` and run with \
         workload.dataset_dir = DIR (--dataset DIR)"
    )]
    NoTokenizer {
        /// The prompts file.
        path: PathBuf,
    },
    /// A prompts file, or its tokens, are not what a run recorded (check-accuracy).
    #[error("prompts file {path}: its {what} is {now}, where the run recorded {recorded}: not the run's samples")]
    PromptsChanged {
        /// The prompts file.
        path: PathBuf,
        /// "SHA-256" or "tokens' SHA-256".
        what: &'static str,
        /// Today's.
        now: String,
        /// The run's.
        recorded: String,
    },
    /// The buffer given for a sample is smaller than the workload's input size.
    #[error("a sample needs a buffer of {need} bytes, not {have}")]
    Buffer {
        /// [`WorkloadSpec::input_bytes`].
        need: usize,
        /// The buffer's length.
        have: usize,
    },
}

/// SplitMix64: tiny, fast, and fully specified.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// How a run's samples were obtained (recorded in report.json so `check-accuracy` can rebuild
/// every sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DatasetInfo {
    /// Generated from a seed.
    Generated {
        /// The seed.
        seed: u64,
    },
    /// Read from a directory of `.npy` files.
    Npy {
        /// The directory.
        dir: PathBuf,
    },
    /// Prompts of a text file (`workload.prompts_file`), tokenized when the QSL loaded (see
    /// [`prompts`]).
    Prompts {
        /// The text file.
        file: PathBuf,
        /// Its SHA-256, lower-case hex.
        sha256: String,
        /// The GGUF file whose tokenizer tokenized it.
        tokenizer: PathBuf,
        /// Prompts in the file.
        prompts: usize,
        /// Their tokens, after truncation.
        tokens: u64,
        /// Prompts cut to the workload's `max_input_tokens`.
        truncated: usize,
        /// SHA-256 of the ids ([`prompts::Tokenized::digest`]), lower-case hex.
        tokens_sha256: String,
    },
}

enum Layout {
    Generated {
        seed: u64,
    },
    /// One file per input tensor, samples stacked along the first axis.
    Stacked(Vec<NpyFile>),
    /// One file per sample (single-input workloads), in file-name order.
    PerSample(Vec<PathBuf>),
    /// Pre-tokenized prompts (generative workloads).
    Tokens(TokenFile),
    /// Prompts tokenized from a text file, in memory.
    Prompts(prompts::Tokenized),
}

/// `input_ids.npy` and the lengths read from `input_lens.npy`.
struct TokenFile {
    ids: NpyFile,
    path: PathBuf,
    /// Bytes per id in the file: 4 (int32) or 8 (int64).
    elem: usize,
    /// Ids per row.
    width: usize,
    /// Each prompt's true length, tokens.
    lens: Vec<u32>,
}

/// Bytes per element of a token file: int32 or int64, little-endian.
fn token_elem(f: &NpyFile, path: &Path) -> Result<(DType, usize), QslError> {
    match f.descr.as_str() {
        "<i4" => Ok((DType::I32, 4)),
        "<i8" => Ok((DType::I64, 8)),
        d => Err(QslError::TokenDType { path: path.into(), descr: d.into() }),
    }
}

/// Little-endian int32 or int64 element `i` of `buf`.
fn element(buf: &[u8], elem: usize, i: usize) -> i64 {
    let b = &buf[i * elem..(i + 1) * elem];
    if elem == 4 {
        i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
    } else {
        i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl TokenFile {
    /// Opens `dir`'s `input_ids.npy` and `input_lens.npy` and checks every length.
    fn open(g: &Generation, dir: &Path) -> Result<TokenFile, QslError> {
        let path = dir.join("input_ids.npy");
        let lens_path = dir.join("input_lens.npy");
        let ids = NpyFile::open(&path)?;
        let (dtype, elem) = token_elem(&ids, &path)?;
        let (n, width) = match ids.shape[..] {
            [n, w] if u32::try_from(w).is_ok() => (n, w),
            _ => return Err(QslError::TokenShape { path, shape: ids.shape.clone(), expected: "[samples, ids]" }),
        };
        ids.expect(dtype, &[width as u32], true)?;
        let lens_file = NpyFile::open(&lens_path)?;
        let (ldtype, lelem) = token_elem(&lens_file, &lens_path)?;
        if lens_file.shape.len() != 1 {
            let shape = lens_file.shape.clone();
            return Err(QslError::TokenShape { path: lens_path, shape, expected: "[samples]" });
        }
        let m = lens_file.expect(ldtype, &[], true)?;
        if m != n {
            return Err(QslError::SampleCounts { dir: dir.into(), ids: n, lens: m });
        }
        let mut raw = vec![0u8; m * lelem];
        lens_file.read_at(0, &mut raw)?;
        let mut lens = Vec::with_capacity(m);
        for index in 0..m {
            let len = element(&raw, lelem, index);
            let path = lens_path.clone();
            if len <= 0 {
                return Err(QslError::EmptySample { path, index, len });
            }
            if len > width as i64 {
                return Err(QslError::LengthBeyondRow { path, index, len, width });
            }
            if len > g.max_input_tokens as i64 {
                return Err(QslError::SampleTooLong { path, index, len, max: g.max_input_tokens });
            }
            lens.push(len as u32);
        }
        Ok(TokenFile { ids, path, elem, width, lens })
    }

    /// Writes prompt `index` as int32 little-endian into `out` (which holds `max_input_tokens`
    /// ids); returns its length in bytes.
    fn read(&self, index: usize, vocab: u32, out: &mut [u8]) -> Result<usize, QslError> {
        let len = self.lens[index] as usize;
        let mut raw = vec![0u8; len * self.elem];
        self.ids.read_at((index * self.width * self.elem) as u64, &mut raw)?;
        for position in 0..len {
            let id = element(&raw, self.elem, position);
            if id < 0 || id >= vocab as i64 {
                return Err(QslError::TokenOutOfRange { path: self.path.clone(), index, position, id, vocab });
            }
            out[position * 4..position * 4 + 4].copy_from_slice(&(id as i32).to_le_bytes());
        }
        Ok(len * 4)
    }
}

/// Where samples come from; see the module docs.
pub struct SampleSource {
    spec: WorkloadSpec,
    layout: Layout,
    info: DatasetInfo,
    available: Option<usize>,
}

impl SampleSource {
    /// Samples generated from `seed`.
    pub fn generated(spec: &WorkloadSpec, seed: u64) -> SampleSource {
        SampleSource {
            spec: spec.clone(),
            layout: Layout::Generated { seed },
            info: DatasetInfo::Generated { seed },
            available: None,
        }
    }

    /// Samples read from `dir`: either `<tensor>.npy` per input tensor with a leading sample
    /// axis, or (single-input workloads) one `.npy` file per sample; for generative workloads
    /// pre-tokenized prompts (see the module docs). Every file is checked now.
    pub fn npy(spec: &WorkloadSpec, dir: &Path) -> Result<SampleSource, QslError> {
        let info = DatasetInfo::Npy { dir: dir.to_path_buf() };
        if let Some(g) = &spec.generation {
            let tokens = TokenFile::open(g, dir)?;
            let available = Some(tokens.lens.len());
            return Ok(SampleSource { spec: spec.clone(), layout: Layout::Tokens(tokens), info, available });
        }
        let stacked: Vec<PathBuf> = spec.inputs.iter().map(|t| dir.join(format!("{}.npy", t.name))).collect();
        if stacked.iter().all(|p| p.is_file()) {
            let mut files = Vec::new();
            let mut count = None;
            for (t, p) in spec.inputs.iter().zip(&stacked) {
                let f = NpyFile::open(p)?;
                let n = f.expect(t.dtype, &t.shape, true)?;
                if count.is_some_and(|c| c != n) {
                    return Err(QslError::Dataset {
                        dir: dir.into(),
                        reason: format!("{} holds {n} samples, the other tensors {}", p.display(), count.unwrap_or(0)),
                    });
                }
                count = Some(n);
                files.push(f);
            }
            return Ok(SampleSource { spec: spec.clone(), layout: Layout::Stacked(files), info, available: count });
        }
        if spec.inputs.len() != 1 {
            let names: Vec<String> = spec.inputs.iter().map(|t| format!("{}.npy", t.name)).collect();
            return Err(QslError::Dataset {
                dir: dir.into(),
                reason: format!("expected one file per input tensor: {}", names.join(", ")),
            });
        }
        let read = std::fs::read_dir(dir).map_err(|e| QslError::Dataset { dir: dir.into(), reason: e.to_string() })?;
        let mut files: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "npy"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(QslError::Dataset { dir: dir.into(), reason: "no .npy files".into() });
        }
        let t = &spec.inputs[0];
        for p in &files {
            NpyFile::open(p)?.expect(t.dtype, &t.shape, false)?;
        }
        let n = files.len();
        Ok(SampleSource { spec: spec.clone(), layout: Layout::PerSample(files), info, available: Some(n) })
    }

    /// The prompts of the text file `file`, tokenized with the GGUF file `tokenizer`'s tokenizer
    /// now, checked and packed (see [`prompts`]); says how many, their lengths and how long it
    /// took (and, once, how many were truncated). Generative workloads only.
    pub fn prompts(spec: &WorkloadSpec, file: &Path, tokenizer: &Path) -> Result<SampleSource, QslError> {
        let Some(g) = &spec.generation else {
            let reason = format!("workload {} is not generative: only an LLM's samples are prompts", spec.name);
            return Err(QslError::PromptsFile { path: file.into(), reason });
        };
        let t = prompts::tokenize_file(g, file, tokenizer)?;
        let tokenized = t.tokenized;
        tracing::info!(file = %file.display(), tokenizer = %tokenizer.display(), "prompts: {}", tokenized.stats);
        for w in &tokenized.warnings {
            tracing::warn!("{w}");
        }
        let info = DatasetInfo::Prompts {
            file: file.to_path_buf(),
            sha256: t.sha256,
            tokenizer: tokenizer.to_path_buf(),
            prompts: tokenized.len(),
            tokens: tokenized.stats.tokens,
            truncated: tokenized.stats.truncated,
            tokens_sha256: tokenized.digest(),
        };
        let available = Some(tokenized.len());
        Ok(SampleSource { spec: spec.clone(), layout: Layout::Prompts(tokenized), info, available })
    }

    /// Opens the source `info` describes; a prompts file is tokenized again, and refused if it,
    /// or its tokens, are not the ones recorded.
    pub fn from_info(spec: &WorkloadSpec, info: &DatasetInfo) -> Result<SampleSource, QslError> {
        match info {
            DatasetInfo::Generated { seed } => Ok(SampleSource::generated(spec, *seed)),
            DatasetInfo::Npy { dir } => SampleSource::npy(spec, dir),
            DatasetInfo::Prompts { file, sha256, tokenizer, tokens_sha256, .. } => {
                let source = SampleSource::prompts(spec, file, tokenizer)?;
                if let DatasetInfo::Prompts { sha256: now, tokens_sha256: tokens_now, .. } = &source.info {
                    let pairs = [("SHA-256", now, sha256), ("tokens' SHA-256", tokens_now, tokens_sha256)];
                    if let Some((what, now, recorded)) = pairs.into_iter().find(|(_, now, recorded)| now != recorded) {
                        let (now, recorded) = (now.clone(), recorded.clone());
                        return Err(QslError::PromptsChanged { path: file.clone(), what, now, recorded });
                    }
                }
                Ok(source)
            }
        }
    }

    /// How the samples are obtained.
    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    /// Samples available (`None`: unbounded, generated).
    pub fn available(&self) -> Option<usize> {
        self.available
    }

    /// The workload.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// Writes sample `index` (its tensors concatenated) into `out`, which must hold
    /// [`WorkloadSpec::input_bytes`]; for generative workloads the prompt at its true length, then
    /// zeros to the end of `out` (see [`SampleSource::fill_sample`] for the length).
    pub fn fill(&self, index: usize, out: &mut [u8]) -> Result<(), QslError> {
        let n = self.fill_sample(index, out)?;
        out[n..].fill(0);
        Ok(())
    }

    /// Writes sample `index` at its true length into the start of `out`, which must hold
    /// [`WorkloadSpec::input_bytes`]; returns that length in bytes (the input size for
    /// fixed-size workloads, 4 × the prompt's tokens for generative ones).
    pub fn fill_sample(&self, index: usize, out: &mut [u8]) -> Result<usize, QslError> {
        if let Some(n) = self.available
            && index >= n
        {
            return Err(QslError::OutOfRange { index, total: n });
        }
        let ib = self.spec.input_bytes();
        if out.len() < ib {
            return Err(QslError::Buffer { need: ib, have: out.len() });
        }
        match &self.layout {
            Layout::Generated { seed } => Ok(generate(&self.spec, *seed, index, out)),
            Layout::Stacked(files) => {
                let mut at = 0;
                for (t, f) in self.spec.inputs.iter().zip(files) {
                    let b = t.bytes();
                    f.read_at((index * b) as u64, &mut out[at..at + b])?;
                    at += b;
                }
                Ok(at)
            }
            Layout::PerSample(paths) => {
                let f = NpyFile::open(&paths[index])?;
                f.read_at(0, &mut out[..ib])?;
                Ok(ib)
            }
            Layout::Tokens(t) => {
                let vocab = self.spec.generation.as_ref().map_or(u32::MAX, |g| g.vocab_size);
                t.read(index, vocab, out)
            }
            Layout::Prompts(t) => {
                let ids = t.prompt(index).ok_or(QslError::OutOfRange { index, total: t.len() })?;
                for (dst, id) in out.chunks_exact_mut(4).zip(ids) {
                    dst.copy_from_slice(&id.to_le_bytes());
                }
                Ok(ids.len() * 4)
            }
        }
    }
}

/// Generated prompts' ids start here (below it most vocabularies keep special and byte tokens).
pub const GENERATED_TOKEN_FLOOR: i32 = 100;

/// Generates sample `index` of `seed` into `out` (which must hold [`WorkloadSpec::input_bytes`]);
/// returns the sample's length in bytes: the input size, or for generative workloads `4·L`. See
/// the module docs.
pub fn generate(spec: &WorkloadSpec, seed: u64, index: usize, out: &mut [u8]) -> usize {
    let mut rng = SplitMix64(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    if let Some(g) = &spec.generation
        && matches!(&spec.inputs[..], [t] if t.name == INPUT_IDS && t.dtype == DType::I32)
    {
        return generate_tokens(g, &mut rng, out);
    }
    let bert = spec.inputs.len() == 3
        && spec
            .inputs
            .iter()
            .zip(["input_ids", "input_mask", "segment_ids"])
            .all(|(t, n)| t.name == n && t.dtype == DType::I32 && t.shape == [BERT_SEQ_LEN]);
    if bert {
        generate_bert(&mut rng, out);
        return spec.input_bytes();
    }
    let mut at = 0;
    for t in &spec.inputs {
        let b = t.bytes();
        let dst = &mut out[at..at + b];
        at += b;
        match t.dtype {
            DType::I8 | DType::U8 => {
                for chunk in dst.chunks_mut(8) {
                    let v = rng.next().to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
            }
            DType::I32 => {
                dst.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&((rng.next() % 1000) as i32).to_le_bytes()))
            }
            DType::I64 => {
                dst.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&((rng.next() % 1000) as i64).to_le_bytes()))
            }
            DType::F32 => dst.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&unit(rng.next()).to_le_bytes())),
            DType::F16 => {
                dst.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&f32_to_f16(unit(rng.next())).to_le_bytes()))
            }
        }
    }
    at
}

/// A generated prompt (see the module docs); its length is capped to what `out` holds.
fn generate_tokens(g: &Generation, rng: &mut SplitMix64, out: &mut [u8]) -> usize {
    let fits = (out.len() / 4).min(g.max_input_tokens as usize) as u32;
    let len = g.input_lengths().draw(|| rng.next()).min(fits) as usize;
    let floor = GENERATED_TOKEN_FLOOR as i64;
    let mut skip: Vec<i64> =
        std::iter::once(g.eos_token).chain(g.bos_token).map(i64::from).filter(|&e| e >= floor).collect();
    skip.sort_unstable();
    skip.dedup();
    let choices = (g.vocab_size as i64 - floor - skip.len() as i64).max(1) as u64;
    for (t, dst) in out[..len * 4].chunks_exact_mut(4).enumerate() {
        let id = match g.bos_token {
            Some(bos) if t == 0 => bos as i64,
            _ => skip.iter().fold(floor + (rng.next() % choices) as i64, |id, &e| if id >= e { id + 1 } else { id }),
        };
        dst.copy_from_slice(&(id as i32).to_le_bytes());
    }
    len * 4
}

fn unit(r: u64) -> f32 {
    (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

/// f32 → IEEE half (round toward zero; inputs are in [-1, 1)).
fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    if exp <= 0 { sign } else { sign | ((exp as u16) << 10) | (mant >> 13) as u16 }
}

fn generate_bert(rng: &mut SplitMix64, out: &mut [u8]) {
    let n = BERT_SEQ_LEN as usize;
    let len = 32 + (rng.next() % (n as u64 - 31)) as usize;
    let q = 8 + (rng.next() % (len as u64 / 2)) as usize;
    let (ids, rest) = out.split_at_mut(n * 4);
    let (mask, seg) = rest.split_at_mut(n * 4);
    for t in 0..n {
        let id: i32 = if t >= len {
            0
        } else if t == 0 {
            101
        } else if t == q || t == len - 1 {
            102
        } else {
            1000 + (rng.next() % 29_522) as i32
        };
        ids[t * 4..t * 4 + 4].copy_from_slice(&id.to_le_bytes());
        mask[t * 4..t * 4 + 4].copy_from_slice(&((t < len) as i32).to_le_bytes());
        seg[t * 4..t * 4 + 4].copy_from_slice(&((t > q && t < len) as i32).to_le_bytes());
    }
}

/// One loaded set of samples in one long-lived, contiguous buffer.
///
/// Fixed-size samples sit at `position × sample_bytes`; generative workloads' prompts are packed
/// back to back at their true lengths, located by an offsets table. A packed buffer ends with
/// [`LoadedSet::sample_bytes`] minus the last prompt's length of zeros, so that
/// `offset(i) + sample_bytes()` never runs past it.
pub struct LoadedSet {
    data: Box<[u8]>,
    /// QSL index → position in the set (`u32::MAX`: not loaded).
    positions: Vec<u32>,
    sample_bytes: usize,
    /// Packed sets: where each position's sample starts, then where the last one ends; empty for
    /// fixed-size sets.
    starts: Vec<usize>,
}

impl LoadedSet {
    /// Sample `index`'s byte offset in the buffer and its length (its true length for generative
    /// workloads), if loaded: the exact bytes a request carries.
    pub fn range(&self, index: usize) -> Option<(usize, usize)> {
        let p = match self.positions.get(index) {
            Some(&p) if p != u32::MAX => p as usize,
            _ => return None,
        };
        if self.starts.is_empty() {
            return Some((p * self.sample_bytes, self.sample_bytes));
        }
        let (start, end) = (*self.starts.get(p)?, *self.starts.get(p + 1)?);
        Some((start, end - start))
    }

    /// Byte offset of sample `index` in the buffer, if loaded.
    pub fn offset(&self, index: usize) -> Option<usize> {
        self.range(index).map(|(o, _)| o)
    }

    /// Sample `index`'s bytes (at its true length), if loaded.
    pub fn sample(&self, index: usize) -> Option<&[u8]> {
        self.range(index).and_then(|(o, len)| self.data.get(o..o + len))
    }

    /// Bytes per sample: for generative workloads the most a sample may have (the slot size,
    /// [`WorkloadSpec::input_bytes`]); their true lengths are [`LoadedSet::range`]'s.
    pub fn sample_bytes(&self) -> usize {
        self.sample_bytes
    }

    /// Whether samples are packed at their true lengths (generative workloads).
    pub fn is_packed(&self) -> bool {
        !self.starts.is_empty()
    }
}

impl PayloadSource for LoadedSet {
    fn bytes(&self) -> &[u8] {
        &self.data
    }
}

/// The samples LoadGen has loaded; see the module docs.
pub struct SampleStore {
    source: SampleSource,
    total: usize,
    performance: usize,
    current: ArcSwapOption<LoadedSet>,
}

impl SampleStore {
    /// A store of `total` samples of which `performance` are loaded at once.
    pub fn new(source: SampleSource, total: usize, performance: usize) -> Result<SampleStore, QslError> {
        if let Some(n) = source.available()
            && total > n
        {
            let dir = match source.info() {
                DatasetInfo::Npy { dir } => dir.clone(),
                DatasetInfo::Prompts { file, .. } => file.clone(),
                DatasetInfo::Generated { .. } => PathBuf::new(),
            };
            return Err(QslError::Dataset {
                dir,
                reason: format!("holds {n} samples; workload.total_samples asks for {total}"),
            });
        }
        Ok(SampleStore { source, total, performance: performance.min(total), current: ArcSwapOption::empty() })
    }

    /// The source.
    pub fn source(&self) -> &SampleSource {
        &self.source
    }

    /// Samples in the library.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Samples loaded at once.
    pub fn performance(&self) -> usize {
        self.performance
    }

    /// Loads `indices` into a fresh buffer (replacing the previous set; senders still holding the
    /// old one keep it alive until they are done).
    pub fn load(&self, indices: &[usize]) -> Result<(), QslError> {
        if let Some(&index) = indices.iter().find(|&&i| i >= self.total) {
            return Err(QslError::OutOfRange { index, total: self.total });
        }
        let set =
            if self.source.spec().is_generative() { self.load_packed(indices)? } else { self.load_fixed(indices)? };
        self.current.store(Some(Arc::new(set)));
        Ok(())
    }

    /// Fixed-size samples, one slot each.
    fn load_fixed(&self, indices: &[usize]) -> Result<LoadedSet, QslError> {
        let sb = self.source.spec().input_bytes();
        let mut data = vec![0u8; indices.len() * sb].into_boxed_slice();
        let mut positions = vec![u32::MAX; self.total];
        for (pos, &index) in indices.iter().enumerate() {
            self.source.fill(index, &mut data[pos * sb..(pos + 1) * sb])?;
            positions[index] = pos as u32;
        }
        Ok(LoadedSet { data, positions, sample_bytes: sb, starts: Vec::new() })
    }

    /// Prompts packed back to back at their true lengths.
    fn load_packed(&self, indices: &[usize]) -> Result<LoadedSet, QslError> {
        let sb = self.source.spec().input_bytes();
        let mut scratch = vec![0u8; sb];
        let mut data = Vec::new();
        let mut starts = Vec::with_capacity(indices.len() + 1);
        let mut positions = vec![u32::MAX; self.total];
        let mut last = 0;
        for (pos, &index) in indices.iter().enumerate() {
            last = self.source.fill_sample(index, &mut scratch)?;
            starts.push(data.len());
            data.extend_from_slice(&scratch[..last]);
            positions[index] = pos as u32;
        }
        starts.push(data.len());
        // The tail that keeps `offset + sample_bytes` inside the buffer (see the type's docs).
        let tail = if indices.is_empty() { 0 } else { sb.saturating_sub(last) };
        data.resize(data.len() + tail, 0);
        Ok(LoadedSet { data: data.into_boxed_slice(), positions, sample_bytes: sb, starts })
    }

    /// Drops the loaded set.
    pub fn unload(&self) {
        self.current.store(None);
    }

    /// The loaded set, if any.
    pub fn current(&self) -> Option<Arc<LoadedSet>> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_index_dependent() {
        let spec = WorkloadSpec::resnet50();
        let (mut a, mut b, mut c) = (vec![0u8; 150_528], vec![0u8; 150_528], vec![0u8; 150_528]);
        generate(&spec, 7, 3, &mut a);
        generate(&spec, 7, 3, &mut b);
        generate(&spec, 7, 4, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Pinned: the first bytes of sample 0 of seed 0 (the generator is part of the format of
        // report.json: check-accuracy regenerates samples with it).
        let mut z = vec![0u8; 150_528];
        generate(&spec, 0, 0, &mut z);
        let mut rng = SplitMix64(0x9E37_79B9_7F4A_7C15);
        assert_eq!(&z[..8], &rng.next().to_le_bytes());
    }

    #[test]
    fn bert_samples_are_well_formed() {
        let spec = WorkloadSpec::bert();
        let mut s = vec![0u8; spec.input_bytes()];
        for i in 0..50 {
            generate(&spec, 1, i, &mut s);
            let int =
                |t: usize, k: usize| i32::from_le_bytes(s[t * 1536 + k * 4..t * 1536 + k * 4 + 4].try_into().unwrap());
            let len = (0..384).filter(|&k| int(1, k) == 1).count();
            assert!((32..=384).contains(&len));
            assert_eq!(int(0, 0), 101);
            assert_eq!(int(0, len - 1), 102);
            assert!((len..384).all(|k| int(0, k) == 0 && int(2, k) == 0));
            assert!((0..len).all(|k| int(0, k) > 0));
        }
    }

    #[test]
    fn store_loads_a_set_and_locates_samples() {
        let spec = WorkloadSpec::bert();
        let store = SampleStore::new(SampleSource::generated(&spec, 9), 100, 10).unwrap();
        assert!(store.current().is_none());
        store.load(&[5, 50, 99]).unwrap();
        let set = store.current().unwrap();
        let mut want = vec![0u8; spec.input_bytes()];
        generate(&spec, 9, 50, &mut want);
        assert_eq!(set.sample(50).unwrap(), &want[..]);
        assert_eq!(set.offset(50), Some(spec.input_bytes()));
        assert!(set.sample(6).is_none());
        assert!(matches!(store.load(&[100]), Err(QslError::OutOfRange { index: 100, total: 100 })));
        store.unload();
        assert!(store.current().is_none());
        assert_eq!(set.sample(99).unwrap().len(), spec.input_bytes(), "a held set outlives unload");
    }

    #[test]
    fn npy_datasets_stacked_and_per_sample() {
        let dir = tempfile::tempdir().unwrap();
        let spec = WorkloadSpec::bert();
        // Stacked: three files of [4, 384] int32 holding generated samples.
        let mut tensors = [Vec::new(), Vec::new(), Vec::new()];
        for i in 0..4 {
            let mut s = vec![0u8; spec.input_bytes()];
            generate(&spec, 3, i, &mut s);
            for (t, chunk) in s.chunks(1536).enumerate() {
                tensors[t].extend_from_slice(chunk);
            }
        }
        for (t, name) in ["input_ids", "input_mask", "segment_ids"].iter().enumerate() {
            crate::npy::write(&dir.path().join(format!("{name}.npy")), DType::I32, &[4, 384], &tensors[t]).unwrap();
        }
        let src = SampleSource::npy(&spec, dir.path()).unwrap();
        assert_eq!(src.available(), Some(4));
        let (mut got, mut want) = (vec![0u8; 4608], vec![0u8; 4608]);
        src.fill(2, &mut got).unwrap();
        generate(&spec, 3, 2, &mut want);
        assert_eq!(got, want);
        assert!(matches!(src.fill(4, &mut got), Err(QslError::OutOfRange { .. })));
        assert!(SampleStore::new(src, 5, 5).err().unwrap().to_string().contains("holds 4 samples"));

        // Per-sample files for a single-input workload.
        let img = tempfile::tempdir().unwrap();
        let r = WorkloadSpec::resnet50();
        for i in 0..3 {
            let mut s = vec![0u8; r.input_bytes()];
            generate(&r, 1, i, &mut s);
            crate::npy::write(&img.path().join(format!("img{i:03}.npy")), DType::I8, &[3, 224, 224], &s).unwrap();
        }
        let src = SampleSource::npy(&r, img.path()).unwrap();
        let mut got = vec![0u8; r.input_bytes()];
        let mut want = vec![0u8; r.input_bytes()];
        src.fill(1, &mut got).unwrap();
        generate(&r, 1, 1, &mut want);
        assert_eq!(got, want);
        // A BERT dataset without its tensor files is a clear error.
        let err = SampleSource::npy(&spec, img.path()).err().unwrap().to_string();
        assert!(err.contains("input_ids.npy"), "{err}");
    }

    fn ids(bytes: &[u8]) -> Vec<i32> {
        bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    fn le(values: &[i64], dtype: DType) -> Vec<u8> {
        match dtype {
            DType::I64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        }
    }

    #[test]
    fn generated_prompts_are_deterministic_varied_and_bounded() {
        for spec in [WorkloadSpec::llama3_1_8b(), WorkloadSpec::llama2_70b(), WorkloadSpec::smollm2_135m()] {
            let g = spec.generation.unwrap();
            let d = g.input_lengths();
            let src = SampleSource::generated(&spec, 5);
            let (mut a, mut b) = (vec![0u8; spec.input_bytes()], vec![0u8; spec.input_bytes()]);
            let mut lens = std::collections::BTreeSet::new();
            for i in 0..300 {
                let n = src.fill_sample(i, &mut a).unwrap();
                assert_eq!(src.fill_sample(i, &mut b).unwrap(), n);
                assert_eq!(a[..n], b[..n], "deterministic");
                assert_eq!(n % 4, 0);
                let t = ids(&a[..n]);
                assert!((d.min as usize..=d.max as usize).contains(&t.len()), "{} tokens", t.len());
                lens.insert(t.len());
                assert_eq!(t[0], g.bos_token.unwrap());
                assert!(t[1..].iter().all(|&id| {
                    id >= GENERATED_TOKEN_FLOOR
                        && (id as u32) < g.vocab_size
                        && id != g.eos_token
                        && Some(id) != g.bos_token
                }));
            }
            assert!(lens.len() > 100, "{}: lengths vary ({} distinct)", spec.name, lens.len());
            let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
            assert!(mean > d.min as f64 && mean < d.max as f64);
        }
        // Pinned: sample 0 of seed 0 (check-accuracy regenerates prompts with this generator).
        let spec = WorkloadSpec::smollm2_135m();
        let mut out = vec![0u8; spec.input_bytes()];
        let n = generate(&spec, 0, 0, &mut out);
        let mut rng = SplitMix64(0x9E37_79B9_7F4A_7C15);
        let (r1, r2) = (rng.next(), rng.next());
        assert_eq!(n / 4, 8 + (r1 % 505).min(r2 % 505) as usize);
        let r = rng.next() % (49_152 - 100);
        assert_eq!(ids(&out[4..8])[0], 100 + r as i32, "BOS 1 and EOS 2 lie below the floor");
    }

    #[test]
    fn generated_ids_step_past_eos_and_bos() {
        let mut spec = WorkloadSpec::smollm2_135m();
        let g = spec.generation.as_mut().unwrap();
        (g.vocab_size, g.eos_token, g.bos_token) = (103, 100, Some(101));
        let src = SampleSource::generated(&spec, 1);
        let mut out = vec![0u8; spec.input_bytes()];
        for i in 0..50 {
            let n = src.fill_sample(i, &mut out).unwrap();
            assert!(ids(&out[4..n]).iter().all(|&id| id == 102), "only 102 is left");
        }
    }

    #[test]
    fn packed_sets_hold_prompts_at_their_true_lengths() {
        let spec = WorkloadSpec::smollm2_135m();
        let store = SampleStore::new(SampleSource::generated(&spec, 9), 100, 10).unwrap();
        store.load(&[3, 40, 7]).unwrap();
        let set = store.current().unwrap();
        assert!(set.is_packed());
        assert_eq!(set.sample_bytes(), 2048);
        let mut at = 0;
        for i in [3, 40, 7] {
            let mut want = vec![0u8; 2048];
            let n = generate(&spec, 9, i, &mut want);
            assert_eq!(set.range(i), Some((at, n)));
            assert_eq!(set.offset(i), Some(at));
            assert_eq!(set.sample(i).unwrap(), &want[..n]);
            assert!(at + set.sample_bytes() <= set.bytes().len(), "a whole slot from any offset stays inside");
            at += n;
        }
        assert_eq!(set.bytes().len(), at + 2048 - set.range(7).unwrap().1);
        assert!(set.bytes()[at..].iter().all(|&b| b == 0));
        assert_eq!(set.range(4), None);
        assert_eq!(set.sample(100), None);
        // Fixed-size workloads are unchanged.
        let bert = WorkloadSpec::bert();
        let store = SampleStore::new(SampleSource::generated(&bert, 9), 100, 10).unwrap();
        store.load(&[5, 6]).unwrap();
        let set = store.current().unwrap();
        assert!(!set.is_packed());
        assert_eq!(set.range(6), Some((4608, 4608)));
        assert_eq!(set.bytes().len(), 2 * 4608);
    }

    #[test]
    fn fill_pads_a_prompt_and_refuses_a_short_buffer() {
        let spec = WorkloadSpec::smollm2_135m();
        let src = SampleSource::generated(&spec, 2);
        let mut out = vec![0xffu8; 2048];
        src.fill(0, &mut out).unwrap();
        let mut want = vec![0u8; 2048];
        let n = generate(&spec, 2, 0, &mut want);
        assert!(n < 2048);
        assert_eq!(out, want, "the prompt, then zeros");
        assert!(matches!(src.fill_sample(0, &mut [0u8; 100]), Err(QslError::Buffer { need: 2048, have: 100 })));
    }

    /// A dataset of `rows` (each `width` ids wide) and `lens`, with the given element types.
    fn token_dir(rows: &[&[i64]], width: usize, lens: &[i64], ids_t: DType, lens_t: DType) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut flat = Vec::new();
        for r in rows {
            flat.extend_from_slice(r);
            flat.resize(flat.len() + width - r.len(), 0);
        }
        crate::npy::write(&dir.path().join("input_ids.npy"), ids_t, &[rows.len(), width], &le(&flat, ids_t)).unwrap();
        crate::npy::write(&dir.path().join("input_lens.npy"), lens_t, &[lens.len()], &le(lens, lens_t)).unwrap();
        dir
    }

    #[test]
    fn token_datasets_round_trip() {
        let spec = WorkloadSpec::smollm2_135m();
        let rows: [&[i64]; 3] = [&[1, 500, 600], &[1, 49_151], &[1, 7, 8, 9, 10, 11]];
        for (ids_t, lens_t) in [(DType::I64, DType::I32), (DType::I32, DType::I64)] {
            let dir = token_dir(&rows, 8, &[3, 2, 6], ids_t, lens_t);
            let src = SampleSource::npy(&spec, dir.path()).unwrap();
            assert_eq!(src.available(), Some(3));
            assert_eq!(src.info(), &DatasetInfo::Npy { dir: dir.path().into() });
            let store = SampleStore::new(src, 3, 3).unwrap();
            store.load(&[2, 0, 1]).unwrap();
            let set = store.current().unwrap();
            for (i, r) in rows.iter().enumerate() {
                let want: Vec<i32> = r.iter().map(|&v| v as i32).collect();
                assert_eq!(ids(set.sample(i).unwrap()), want);
            }
            assert_eq!(set.range(0), Some((24, 12)));
            assert!(matches!(store.source().fill_sample(3, &mut [0u8; 2048]), Err(QslError::OutOfRange { .. })));
        }
    }

    #[test]
    fn bad_token_datasets_are_typed_errors() {
        let spec = WorkloadSpec::smollm2_135m();
        let open = |rows: &[&[i64]], width, lens: &[i64]| {
            SampleSource::npy(&spec, token_dir(rows, width, lens, DType::I32, DType::I32).path()).err().unwrap()
        };
        let e = open(&[&[1, 5], &[1]], 4, &[2, 0]);
        assert!(matches!(e, QslError::EmptySample { index: 1, len: 0, .. }), "{e}");
        let e = open(&[&[1, 5]], 4, &[-3]);
        assert!(matches!(e, QslError::EmptySample { index: 0, len: -3, .. }), "{e}");
        let e = open(&[&[1, 5], &[1]], 4, &[2, 5]);
        assert!(matches!(e, QslError::LengthBeyondRow { index: 1, len: 5, width: 4, .. }), "{e}");
        let long = vec![1i64; 600];
        let e = open(&[&[1], &long], 600, &[1, 513]);
        assert!(matches!(e, QslError::SampleTooLong { index: 1, len: 513, max: 512, .. }), "{e}");
        assert!(e.to_string().contains("sample 1"), "{e}");
        let e = open(&[&[1], &[1]], 4, &[1]);
        assert!(matches!(e, QslError::SampleCounts { ids: 2, lens: 1, .. }), "{e}");

        let dir = token_dir(&[&[1, 2]], 2, &[2], DType::I32, DType::I32);
        crate::npy::write(&dir.path().join("input_ids.npy"), DType::I32, &[2], &le(&[1, 2], DType::I32)).unwrap();
        let e = SampleSource::npy(&spec, dir.path()).err().unwrap();
        assert!(matches!(&e, QslError::TokenShape { shape, .. } if shape == &[2]), "{e}");
        crate::npy::write(&dir.path().join("input_ids.npy"), DType::F32, &[1, 2], &[0; 8]).unwrap();
        let e = SampleSource::npy(&spec, dir.path()).err().unwrap();
        assert!(matches!(&e, QslError::TokenDType { descr, .. } if descr == "<f4"), "{e}");
        crate::npy::write(&dir.path().join("input_lens.npy"), DType::I32, &[1, 1], &le(&[2], DType::I32)).unwrap();
        crate::npy::write(&dir.path().join("input_ids.npy"), DType::I32, &[1, 2], &le(&[1, 2], DType::I32)).unwrap();
        let e = SampleSource::npy(&spec, dir.path()).err().unwrap();
        assert!(matches!(&e, QslError::TokenShape { expected: "[samples]", .. }), "{e}");
        std::fs::remove_file(dir.path().join("input_lens.npy")).unwrap();
        assert!(matches!(SampleSource::npy(&spec, dir.path()), Err(QslError::Npy(_))));

        // An id outside the vocabulary is found when the prompt is read.
        let dir = token_dir(&[&[1, 49_152]], 2, &[2], DType::I64, DType::I32);
        let src = SampleSource::npy(&spec, dir.path()).unwrap();
        let e = src.fill_sample(0, &mut [0u8; 2048]).err().unwrap();
        assert!(matches!(e, QslError::TokenOutOfRange { index: 0, position: 1, id: 49_152, vocab: 49_152, .. }), "{e}");
    }
}
