//! [`Tokenizer`]: a GGUF file's tokenizer alone, for the frontend's prompts files.

use std::path::{Path, PathBuf};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use super::backend;
use crate::backend::BackendError;

/// The longest text [`Tokenizer::tokenize`] takes at once, bytes (llama.cpp counts in `i32`).
pub const MAX_TOKENIZE_BYTES: usize = (i32::MAX / 2) as usize;

/// A GGUF file's tokenizer alone: llama.cpp reads only its vocabulary (`vocab_only`), not its
/// weights, so even a 70B model's file opens in a moment and costs no memory to speak of.
///
/// [`Tokenizer::tokenize`] tokenizes a prompt the way the model expects it, as llama.cpp's own
/// tools do: the special tokens the text writes out (`<|im_start|>`, `<|begin_of_text|>`) are
/// parsed as such, and BOS (EOS) is put first (last) exactly when the file's metadata says so
/// (`tokenizer.ggml.add_bos_token`, `add_eos_token`; llama.cpp's defaults per tokenizer type when
/// absent). Llama 2 and 3.1 add BOS; SmolLM2's file says not to (its chat template starts with
/// `<|im_start|>`, id 1, instead). Unlike [`LoadedModel`](super::LoadedModel), a tokenizer is an
/// ordinary value, freed when dropped.
pub struct Tokenizer {
    model: LlamaModel,
    path: PathBuf,
    vocab: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("path", &self.path).field("vocab", &self.vocab).finish()
    }
}

impl Tokenizer {
    /// Reads the vocabulary of the GGUF file at `path`: a `Setup` error if it is missing, not a
    /// GGUF file llama.cpp reads, or holds no tokenizer.
    pub fn load(path: &Path) -> Result<Tokenizer, BackendError> {
        if !path.is_file() {
            return Err(BackendError::Setup(format!("tokenizer {} is not a file (a GGUF model file)", path.display())));
        }
        if path.to_str().is_none() {
            return Err(BackendError::Setup(format!("tokenizer path {} is not valid UTF-8", path.display())));
        }
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend()?, path, &params).map_err(|e| {
            BackendError::Setup(format!(
                "llama.cpp cannot read the tokenizer of {} ({e}): not a GGUF model file it supports, or truncated \
                 (its log says why)",
                path.display()
            ))
        })?;
        let vocab = u32::try_from(model.n_vocab()).ok().filter(|&v| v > 0).ok_or_else(|| {
            BackendError::Setup(format!(
                "{} holds no tokenizer (a vocabulary of {} tokens)",
                path.display(),
                model.n_vocab()
            ))
        })?;
        Ok(Tokenizer { model, path: path.to_path_buf(), vocab })
    }

    /// The vocabulary's size (token ids are `0..vocab`).
    pub fn vocab(&self) -> u32 {
        self.vocab
    }

    /// The BOS id [`Tokenizer::tokenize`] puts first, if the file's metadata asks for one.
    pub fn bos(&self) -> Option<i32> {
        let v = self.model.vocab();
        v.should_add_bos().then(|| v.bos().0)
    }

    /// The end-of-sequence id.
    pub fn eos(&self) -> i32 {
        self.model.vocab().eos().0
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `text` as the model's token ids (see the type's docs: special tokens parsed, BOS as the
    /// file says). A text above [`MAX_TOKENIZE_BYTES`] is a `Failed` error.
    pub fn tokenize(&self, text: &str) -> Result<Vec<i32>, BackendError> {
        if text.len() > MAX_TOKENIZE_BYTES {
            return Err(BackendError::Failed(format!(
                "a text of {} bytes is more than llama.cpp tokenizes at once ({MAX_TOKENIZE_BYTES})",
                text.len()
            )));
        }
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true).into_iter().map(|t| t.0).collect())
    }

    /// `tokens` as text: the inverse of [`Tokenizer::tokenize`] (special tokens written out; the
    /// BOS, EOS and leading space it added removed, as llama.cpp's `remove_special` does;
    /// invalid UTF-8 replaced); ids outside the vocabulary are left out.
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let tokens: Vec<LlamaToken> =
            tokens.iter().filter(|&&t| t >= 0 && (t as u32) < self.vocab).map(|&t| LlamaToken(t)).collect();
        if tokens.is_empty() {
            return String::new();
        }
        String::from_utf8_lossy(&self.model.vocab().detokenize(&tokens, true, true)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokenizer_that_is_missing_or_not_gguf_is_a_setup_error() {
        let e = Tokenizer::load(Path::new("/no/such/model.gguf")).unwrap_err();
        assert!(matches!(&e, BackendError::Setup(m) if m.contains("is not a file")), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.gguf");
        std::fs::write(&path, b"GGUF but not really").unwrap();
        let e = Tokenizer::load(&path).unwrap_err();
        assert!(matches!(&e, BackendError::Setup(m) if m.contains("cannot read the tokenizer")), "{e}");
    }
}
