//! Prompts from a text file (`workload.prompts_file`), tokenized by a model file's tokenizer
//! (`workload.tokenizer`, a GGUF file) when the QSL loads: before LoadGen starts, untimed.
//!
//! # The file
//! UTF-8, one prompt per line; sample `i` is the `i`-th prompt. Lines holding nothing but
//! whitespace are skipped (they are no prompts, and take no sample index); a `\r` before a line's
//! newline is dropped (files written on Windows), and so is a UTF-8 byte-order mark at the start.
//! Inside a line `\n` stands for a newline and `\\` for one backslash; any other backslash is
//! itself. Nothing else is changed: leading and trailing spaces are part of the prompt (tokenizers
//! see them). Special tokens written out (`<|im_start|>`, `<|begin_of_text|>`) are parsed as such,
//! so chat-formatted prompts are written as the model's chat template renders them.
//!
//! # Tokenizing
//! Only the tokenizer file's vocabulary is read (llama.cpp's `vocab_only`), and each prompt is
//! tokenized as the model expects (`qdl_engine::generate::llama::Tokenizer`): BOS first when
//! the file's metadata says so (Llama 2 and 3.1 do, SmolLM2 does not). Then, per prompt:
//! - longer than the workload's `max_input_tokens`: cut to its first `max_input_tokens` tokens
//!   (as MLPerf's dataset scripts truncate; counted, and said once for the whole file);
//! - an id outside the workload's `0..vocab_size` (the wrong tokenizer for the workload): refused,
//!   naming the line;
//! - no token at all: refused, naming the line.
//!
//! The ids are packed at their true lengths, exactly as a `.npy` dataset's are, so the wire, the
//! accelerators and `check-accuracy` see no difference. `report.json` records the file, its
//! SHA-256, the tokenizer and the SHA-256 of the ids ([`Tokenized::digest`]); `check-accuracy`
//! tokenizes the file again and refuses to go on if either changed.
//!
//! Tokenizing needs llama.cpp, which the frontend has with its default feature `local`; a
//! network-only build refuses a prompts file ([`QslError::NoTokenizer`]), and `qdl-frontend
//! tokenize` writes the same ids as a `dataset_dir` ([`Tokenized::write_dataset`]) on a machine
//! that has it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qdl_shared::workload::{DType, Generation};
use sha2::{Digest, Sha256};

use super::QslError;

/// One prompt of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Its line in the file, from 1.
    pub line: usize,
    /// The text, escapes resolved.
    pub text: String,
}

/// The prompts of a file's contents `bytes` (see the module docs); `path` names the file in
/// errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<Prompt>, QslError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        QslError::PromptsFile { path: path.into(), reason: format!("line {line} is not UTF-8") }
    })?;
    let prompts: Vec<Prompt> = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(line, l)| Prompt { line, text: unescape(l) })
        .collect();
    if prompts.is_empty() {
        return Err(QslError::PromptsFile {
            path: path.into(),
            reason: "holds no prompts (one per line; lines of only whitespace are skipped)".into(),
        });
    }
    Ok(prompts)
}

/// `\n` → newline, `\\` → backslash; any other backslash stays.
fn unescape(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What tokenizing a file came to.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptStats {
    /// Prompts.
    pub prompts: usize,
    /// Tokens of all of them (after truncation).
    pub tokens: u64,
    /// The shortest prompt, tokens.
    pub min: usize,
    /// The longest prompt, tokens (after truncation).
    pub max: usize,
    /// Prompts cut to `max_input_tokens`.
    pub truncated: usize,
    /// The longest prompt before truncation, tokens.
    pub longest: usize,
    /// Reading, tokenizing and checking, tokenizer loading included.
    pub elapsed: Duration,
}

impl PromptStats {
    /// Tokens per prompt.
    pub fn mean(&self) -> f64 {
        self.tokens as f64 / self.prompts.max(1) as f64
    }
}

impl fmt::Display for PromptStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} prompts, {}/{:.1}/{} tokens min/mean/max ({} in all, {} truncated), tokenized in {:.3} s",
            self.prompts,
            self.min,
            self.mean(),
            self.max,
            self.tokens,
            self.truncated,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Tokenized prompts, packed back to back.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    ids: Vec<i32>,
    /// Where each prompt starts in `ids`, then where the last one ends.
    starts: Vec<usize>,
    /// Figures of the file.
    pub stats: PromptStats,
    /// What to tell the user once (truncation, a tokenizer that does not look like the workload's).
    pub warnings: Vec<String>,
}

impl Tokenized {
    /// Prompts.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Whether there is none (never, once tokenized: an empty file is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prompt `i`'s ids.
    pub fn prompt(&self, i: usize) -> Option<&[i32]> {
        Some(&self.ids[*self.starts.get(i)?..*self.starts.get(i + 1)?])
    }

    /// SHA-256 of the ids, lower-case hex: for each prompt its length (u32) then its ids (i32),
    /// little-endian.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for w in self.starts.windows(2) {
            h.update(((w[1] - w[0]) as u32).to_le_bytes());
            for id in &self.ids[w[0]..w[1]] {
                h.update(id.to_le_bytes());
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Writes `dir/input_ids.npy` (int32 `[prompts, longest]`, each row a prompt's ids then zeros)
    /// and `dir/input_lens.npy` (int32 `[prompts]`): a `dataset_dir` of the same samples. Makes
    /// `dir` if needed; returns the two paths.
    pub fn write_dataset(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let (n, width) = (self.len(), self.stats.max);
        let mut ids = Vec::with_capacity(n * width * 4);
        let mut lens = Vec::with_capacity(n * 4);
        for i in 0..n {
            let p = self.prompt(i).unwrap_or_default();
            ids.extend(p.iter().flat_map(|id| id.to_le_bytes()));
            ids.resize(ids.len() + (width - p.len()) * 4, 0);
            lens.extend((p.len() as i32).to_le_bytes());
        }
        let (ids_path, lens_path) = (dir.join("input_ids.npy"), dir.join("input_lens.npy"));
        crate::npy::write(&ids_path, DType::I32, &[n, width], &ids)?;
        crate::npy::write(&lens_path, DType::I32, &[n], &lens)?;
        Ok((ids_path, lens_path))
    }
}

/// Tokenizes `prompts` (of the file `path`) with `tokenize` and checks and packs them for the
/// workload `g` (see the module docs). `started` is when the work began (for the stats).
pub fn pack(
    g: &Generation,
    path: &Path,
    prompts: &[Prompt],
    mut tokenize: impl FnMut(&str) -> Result<Vec<i32>, String>,
    started: Instant,
) -> Result<Tokenized, QslError> {
    let max = g.max_input_tokens as usize;
    let mut ids = Vec::new();
    let mut starts = Vec::with_capacity(prompts.len() + 1);
    starts.push(0);
    let (mut truncated, mut longest, mut min) = (0, 0, usize::MAX);
    for p in prompts {
        let file = || path.to_path_buf();
        let mut t = tokenize(&p.text)
            .map_err(|reason| QslError::PromptsFile { path: file(), reason: format!("line {}: {reason}", p.line) })?;
        if t.is_empty() {
            return Err(QslError::PromptsFile {
                path: file(),
                reason: format!("line {} tokenizes to no token", p.line),
            });
        }
        longest = longest.max(t.len());
        if t.len() > max {
            truncated += 1;
            t.truncate(max);
        }
        if let Some((position, &id)) =
            t.iter().enumerate().find(|(_, id)| !(0..g.vocab_size as i64).contains(&(**id as i64)))
        {
            return Err(QslError::PromptToken { path: file(), line: p.line, position, id, vocab: g.vocab_size });
        }
        min = min.min(t.len());
        ids.extend_from_slice(&t);
        starts.push(ids.len());
    }
    let n = prompts.len();
    let max_len = starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let stats = PromptStats {
        prompts: n,
        tokens: ids.len() as u64,
        min: if n == 0 { 0 } else { min },
        max: max_len,
        truncated,
        longest,
        elapsed: started.elapsed(),
    };
    let mut warnings = Vec::new();
    if truncated > 0 {
        warnings.push(format!(
            "{truncated} of {n} prompts of {} had more tokens than the workload's max_input_tokens {max} (the longest \
             {longest}): each was cut to its first {max} tokens",
            path.display()
        ));
    }
    Ok(Tokenized { ids, starts, stats, warnings })
}

/// A file tokenized for a workload.
#[derive(Debug, Clone)]
pub struct TokenizedFile {
    /// The prompts' ids.
    pub tokenized: Tokenized,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
}

/// Reads `file`, tokenizes it with the GGUF file `tokenizer`'s tokenizer and checks and packs it
/// for the workload `g` (see the module docs).
#[cfg(feature = "local")]
pub fn tokenize_file(g: &Generation, file: &Path, tokenizer: &Path) -> Result<TokenizedFile, QslError> {
    use qdl_engine::generate::llama::Tokenizer;
    let started = Instant::now();
    let bytes = std::fs::read(file).map_err(|e| QslError::PromptsFile { path: file.into(), reason: e.to_string() })?;
    let prompts = parse(&bytes, file)?;
    let tok = Tokenizer::load(tokenizer)
        .map_err(|e| QslError::Tokenizer { path: tokenizer.into(), reason: e.to_string() })?;
    let mut tokenized = pack(g, file, &prompts, |text| tok.tokenize(text).map_err(|e| e.to_string()), started)?;
    let mut odd = Vec::new();
    if tok.vocab() != g.vocab_size {
        odd.push(format!("a vocabulary of {} tokens where the workload's vocab_size is {}", tok.vocab(), g.vocab_size));
    }
    if tok.eos() != g.eos_token {
        odd.push(format!("EOS {} where the workload's eos_token is {}", tok.eos(), g.eos_token));
    }
    if !odd.is_empty() {
        tokenized.warnings.push(format!(
            "the tokenizer of {} has {}: is it the workload's model?",
            tokenizer.display(),
            odd.join(" and ")
        ));
    }
    Ok(TokenizedFile { tokenized, sha256: sha256_hex(&bytes) })
}

/// Without llama.cpp (a build without the feature `local`): always [`QslError::NoTokenizer`].
#[cfg(not(feature = "local"))]
pub fn tokenize_file(_: &Generation, file: &Path, _: &Path) -> Result<TokenizedFile, QslError> {
    Err(QslError::NoTokenizer { path: file.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdl_shared::workload::WorkloadSpec;

    fn texts(p: &[Prompt]) -> Vec<(usize, &str)> {
        p.iter().map(|p| (p.line, p.text.as_str())).collect()
    }

    #[test]
    fn lines_are_prompts_with_escapes_and_blank_lines_skipped() {
        let file = b"\xEF\xBB\xBFfirst\r\n\n   \t\nsecond\\nline \\\\n and C:\\dir\\\\\n  spaced  \n";
        let p = parse(file, Path::new("p.txt")).unwrap();
        assert_eq!(texts(&p), [(1, "first"), (4, "second\nline \\n and C:\\dir\\"), (5, "  spaced  ")]);
        assert_eq!(
            texts(&parse(b"no newline at the end", Path::new("p.txt")).unwrap()),
            [(1, "no newline at the end")]
        );
    }

    #[test]
    fn an_empty_or_non_utf8_file_is_refused_naming_it() {
        for empty in [&b""[..], b"\n\n  \r\n", b"\xEF\xBB\xBF"] {
            let e = parse(empty, Path::new("p.txt")).unwrap_err();
            assert!(matches!(&e, QslError::PromptsFile { reason, .. } if reason.contains("no prompts")), "{e}");
            assert!(e.to_string().contains("p.txt"), "{e}");
        }
        let e = parse(b"ok\nok\nbad \xff byte\n", Path::new("p.txt")).unwrap_err();
        assert!(e.to_string().contains("line 3 is not UTF-8"), "{e}");
    }

    /// A stand-in tokenizer: BOS 1, then one id per byte (100 + byte).
    fn bytes_tokenizer(text: &str) -> Result<Vec<i32>, String> {
        Ok(std::iter::once(1).chain(text.bytes().map(|b| 100 + b as i32)).collect())
    }

    #[test]
    fn prompts_are_packed_truncated_once_and_checked_against_the_vocabulary() {
        let g = WorkloadSpec::smollm2_135m().generation.unwrap();
        let long = "x".repeat(600);
        let file = format!("ab\n{long}\n\nc\n{long}\n");
        let prompts = parse(file.as_bytes(), Path::new("p.txt")).unwrap();
        let t = pack(&g, Path::new("p.txt"), &prompts, bytes_tokenizer, Instant::now()).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t.prompt(0), Some(&[1, 197, 198][..]));
        assert_eq!(t.prompt(1).unwrap().len(), 512, "cut to max_input_tokens");
        assert_eq!(t.prompt(1).unwrap()[..2], [1, 220]);
        assert_eq!(t.prompt(2), Some(&[1, 199][..]));
        assert_eq!(t.prompt(4), None);
        let s = &t.stats;
        assert_eq!((s.prompts, s.tokens, s.min, s.max, s.truncated, s.longest), (4, 1029, 2, 512, 2, 601));
        assert_eq!(t.warnings.len(), 1, "one warning for the whole file: {:?}", t.warnings);
        assert!(t.warnings[0].contains("2 of 4 prompts") && t.warnings[0].contains("max_input_tokens 512"));
        assert!(
            s.to_string().starts_with("4 prompts, 2/257.2/512 tokens min/mean/max (1029 in all, 2 truncated)"),
            "{s}"
        );

        // An id outside the vocabulary names its line and position.
        let prompts = parse(b"fine\nnot \xc3\xa9 fine\n", Path::new("p.txt")).unwrap();
        let big = |text: &str| Ok(text.bytes().map(|b| if b > 127 { 49_152 } else { 5 }).collect());
        let e = pack(&g, Path::new("p.txt"), &prompts, big, Instant::now()).unwrap_err();
        assert!(matches!(e, QslError::PromptToken { line: 2, position: 4, id: 49_152, vocab: 49_152, .. }), "{e}");
        let negative = |_: &str| Ok(vec![3, -1]);
        let e = pack(&g, Path::new("p.txt"), &prompts, negative, Instant::now()).unwrap_err();
        assert!(matches!(e, QslError::PromptToken { line: 1, position: 1, id: -1, .. }), "{e}");
        // No token, or a tokenizer error: refused, naming the line.
        let e = pack(&g, Path::new("p.txt"), &prompts, |_: &str| Ok(vec![]), Instant::now()).unwrap_err();
        assert!(e.to_string().contains("line 1 tokenizes to no token"), "{e}");
        let e = pack(&g, Path::new("p.txt"), &prompts, |_: &str| Err("boom".into()), Instant::now()).unwrap_err();
        assert!(e.to_string().contains("line 1: boom"), "{e}");
    }

    #[test]
    fn the_digest_covers_ids_and_boundaries() {
        let g = WorkloadSpec::smollm2_135m().generation.unwrap();
        let pack_text = |text: &str| {
            let prompts = parse(text.as_bytes(), Path::new("p.txt")).unwrap();
            pack(&g, Path::new("p.txt"), &prompts, bytes_tokenizer, Instant::now()).unwrap().digest()
        };
        assert_eq!(pack_text("ab\nc"), pack_text("ab\n\nc\n"), "blank lines are no prompts");
        assert_ne!(pack_text("ab\nc"), pack_text("a\nbc"));
        assert_ne!(pack_text("ab\nc"), pack_text("ab\nd"));
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// A network-only build (`--no-default-features`) refuses a prompts file, saying what to do.
    #[cfg(not(feature = "local"))]
    #[test]
    fn without_llama_cpp_a_prompts_file_says_how_to_get_its_samples() {
        let spec = WorkloadSpec::smollm2_135m();
        let e = super::super::SampleSource::prompts(&spec, Path::new("p.txt"), Path::new("m.gguf")).err().unwrap();
        assert!(matches!(e, QslError::NoTokenizer { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("p.txt") && e.contains("cargo feature `local`"), "{e}");
        assert!(e.contains("qdl-frontend tokenize --tokenizer") && e.contains("workload.dataset_dir"), "{e}");
    }

    #[test]
    fn a_written_dataset_reads_back_as_the_same_samples() {
        let spec = WorkloadSpec::smollm2_135m();
        let g = spec.generation.unwrap();
        let prompts = parse(b"one\nthree words here\nx\n", Path::new("p.txt")).unwrap();
        let t = pack(&g, Path::new("p.txt"), &prompts, bytes_tokenizer, Instant::now()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ids, lens) = t.write_dataset(&dir.path().join("made")).unwrap();
        assert_eq!(crate::npy::NpyFile::open(&ids).unwrap().shape, [3, 17]);
        assert_eq!(crate::npy::NpyFile::open(&lens).unwrap().shape, [3]);
        let src = super::super::SampleSource::npy(&spec, &dir.path().join("made")).unwrap();
        assert_eq!(src.available(), Some(3));
        let mut out = vec![0u8; spec.input_bytes()];
        for i in 0..3 {
            let n = src.fill_sample(i, &mut out).unwrap();
            let got: Vec<i32> = out[..n].chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
            assert_eq!(got, t.prompt(i).unwrap(), "sample {i}");
        }
    }
}
