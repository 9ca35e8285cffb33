//! TEST06 for LLMs (docs/submission.md §3): the verification rules of the official script over
//! the entries of a run's `mlperf_log_accuracy.json`, the `verify_accuracy.txt` they produce, and
//! the `audit.config` that makes LoadGen run the test.
//!
//! - **First token** (not in Offline, where it is `Skipped`): each entry's `token_data`, read as
//!   little-endian int32, equals the first elements of `data` over the shorter length; an entry
//!   without `token_data` fails.
//! - **EOS**: no output ends in two or more EOS tokens (walking back from the last token, position
//!   0 never counted).
//! - **Sample length**: the number of int32 elements in `data` equals `token_count`.
//!
//! Stricter than the script where it says nothing: an entry whose hex does not decode to int32
//! fails every check it takes part in, and a log with no entries fails the sample-length check
//! (nothing was verified).

use std::path::Path;

use serde::Deserialize;

use super::SubmissionError;

/// llama3.1-8b's end-of-turn token `<|eot_id|>`, the one qdl's engines stop on.
pub const LLAMA3_1_EOS: i32 = 128009;

/// The file TEST06 writes into `TEST06/`.
pub const VERIFY_FILE: &str = "verify_accuracy.txt";

/// One entry of LoadGen's accuracy log (LLM runs with `use_token_latencies`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AccuracyEntry {
    /// The sample's index in the QSL.
    pub qsl_idx: usize,
    /// The output, hex of its bytes (int32 LE tokens).
    pub data: String,
    /// The token count the SUT gave LoadGen.
    #[serde(default)]
    pub token_count: Option<i64>,
    /// The first token(s) the SUT reported (hex, int32 LE), outside Offline.
    #[serde(default)]
    pub token_data: Option<String>,
}

/// Parses the text of `mlperf_log_accuracy.json`.
pub fn parse_accuracy_log(text: &str, path: &Path) -> Result<Vec<AccuracyEntry>, SubmissionError> {
    serde_json::from_str(text).map_err(|source| SubmissionError::Json { path: path.to_path_buf(), source })
}

/// Reads and parses `mlperf_log_accuracy.json` at `path`.
pub fn read_accuracy_log(path: &Path) -> Result<Vec<AccuracyEntry>, SubmissionError> {
    let text = std::fs::read_to_string(path).map_err(|e| SubmissionError::io(path, e))?;
    parse_accuracy_log(&text, path)
}

/// Decodes hex (either case) into little-endian int32 values; `None` if it is not whole int32s.
pub fn decode_int32(hex: &str) -> Option<Vec<i32>> {
    let b = hex.as_bytes();
    if !b.len().is_multiple_of(8) || !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    let bytes: Vec<u8> = b.chunks_exact(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect();
    Some(bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// The first-token check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstToken {
    /// Every entry's first token matched.
    Pass,
    /// Some entry's did not, or had none.
    Fail,
    /// Offline: not checked.
    Skipped,
}

/// TEST06's three verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Test06 {
    /// The first-token check.
    pub first_token: FirstToken,
    /// The EOS check.
    pub eos: bool,
    /// The sample-length check.
    pub length: bool,
}

impl Test06 {
    /// Whether all three checks passed (first token passed or skipped).
    pub fn passed(&self) -> bool {
        self.first_token != FirstToken::Fail && self.eos && self.length
    }

    /// `verify_accuracy.txt`: the lines the checker looks for, then the verdict line.
    pub fn render(&self) -> String {
        let py = |b: bool| if b { "True" } else { "False" };
        let first = match self.first_token {
            FirstToken::Pass => "True",
            FirstToken::Fail => "False",
            FirstToken::Skipped => "Skipped",
        };
        let verdict = if self.passed() { "TEST06 verification complete" } else { "TEST06 verification failed" };
        format!(
            "First token check pass: {first}\nEOS check pass: {}\nSample length check pass: {}\n{verdict}\n",
            py(self.eos),
            py(self.length)
        )
    }
}

/// How many tokens at the end of `tokens` equal `eos`, never counting position 0.
pub fn trailing_eos(tokens: &[i32], eos: i32) -> usize {
    tokens.iter().skip(1).rev().take_while(|&&t| t == eos).count()
}

/// Applies TEST06's rules to `entries`; `offline` skips the first-token check.
pub fn verify(entries: &[AccuracyEntry], eos: i32, offline: bool) -> Test06 {
    let mut first_ok = true;
    let mut eos_ok = true;
    let mut length_ok = !entries.is_empty();
    for e in entries {
        let Some(data) = decode_int32(&e.data) else {
            (first_ok, eos_ok, length_ok) = (false, false, false);
            continue;
        };
        if trailing_eos(&data, eos) >= 2 {
            eos_ok = false;
        }
        if e.token_count != Some(data.len() as i64) {
            length_ok = false;
        }
        if !offline {
            let first = e.token_data.as_deref().and_then(decode_int32);
            if !first.is_some_and(|f| f.iter().zip(&data).all(|(a, b)| a == b)) {
                first_ok = false;
            }
        }
    }
    let first_token = match (offline, first_ok) {
        (true, _) => FirstToken::Skipped,
        (false, true) => FirstToken::Pass,
        (false, false) => FirstToken::Fail,
    };
    Test06 { first_token, eos: eos_ok, length: length_ok }
}

/// The `audit.config` that makes LoadGen run TEST06 (all keys with the `*.*.` wildcard). Put it
/// only in the TEST06 run's working directory: the main runs must not see it.
pub fn audit_config() -> String {
    [
        "# TEST06 (LLM output consistency): accuracy logging of ~100 samples in a performance run",
        "*.*.mode = 2",
        "*.*.accuracy_log_rng_seed = 720381539243781796",
        "*.*.accuracy_log_sampling_target = 100",
        "*.*.min_query_count = 100",
        "*.*.min_duration = 0",
        "*.*.sample_concatenate_permutation = 0",
        "",
    ]
    .join("\n")
}

/// Whether `verify_accuracy.txt`'s text passes the checker: after stripping each line, it holds
/// `First token check pass: True` or `... Skipped`, `EOS check pass: True` and
/// `Sample length check pass: True`. Returns the three findings (first token, EOS, length).
pub fn verify_file_passes(text: &str) -> (bool, bool, bool) {
    let has = |want: &str| text.lines().any(|l| l.trim() == want);
    (
        has("First token check pass: True") || has("First token check pass: Skipped"),
        has("EOS check pass: True"),
        has("Sample length check pass: True"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(tokens: &[i32]) -> String {
        tokens.iter().flat_map(|t| t.to_le_bytes()).map(|b| format!("{b:02X}")).collect()
    }

    fn entry(data: &[i32], count: Option<i64>, first: Option<&[i32]>) -> AccuracyEntry {
        AccuracyEntry { qsl_idx: 0, data: hex(data), token_count: count, token_data: first.map(hex) }
    }

    const E: i32 = LLAMA3_1_EOS;

    #[test]
    fn a_good_log_passes_and_renders_the_checkers_lines() {
        let good = [entry(&[5, 6, E], Some(3), Some(&[5])), entry(&[7, 8], Some(2), Some(&[7]))];
        let t = verify(&good, E, false);
        assert_eq!(t, Test06 { first_token: FirstToken::Pass, eos: true, length: true });
        assert_eq!(
            t.render(),
            "First token check pass: True\nEOS check pass: True\nSample length check pass: True\n\
             TEST06 verification complete\n"
        );
        assert_eq!(verify_file_passes(&t.render()), (true, true, true));
        let offline = verify(&[entry(&[5, 6, E], Some(3), None)], E, true);
        assert_eq!(offline.first_token, FirstToken::Skipped);
        assert!(offline.passed() && offline.render().starts_with("First token check pass: Skipped\n"));
        assert_eq!(verify_file_passes(&offline.render()), (true, true, true));
    }

    #[test]
    fn each_check_can_fail() {
        let first = verify(&[entry(&[5, 6], Some(2), Some(&[6]))], E, false);
        assert_eq!((first.first_token, first.eos, first.length), (FirstToken::Fail, true, true));
        assert!(first.render().contains("First token check pass: False\n"));
        assert!(first.render().ends_with("TEST06 verification failed\n"));
        let no_first = verify(&[entry(&[5, 6], Some(2), None)], E, false);
        assert_eq!(no_first.first_token, FirstToken::Fail, "a missing token_data fails outside Offline");
        let eos = verify(&[entry(&[5, E, E], Some(3), Some(&[5]))], E, false);
        assert_eq!((eos.first_token, eos.eos, eos.length), (FirstToken::Pass, false, true));
        assert!(eos.render().contains("EOS check pass: False\n") && !eos.passed());
        let length = verify(&[entry(&[5, 6], Some(3), Some(&[5]))], E, false);
        assert_eq!((length.eos, length.length), (true, false));
        assert!(length.render().contains("Sample length check pass: False\n") && !length.passed());
        assert!(!verify(&[entry(&[5], None, Some(&[5]))], E, false).length, "no token_count");
        assert!(!verify(&[], E, true).length, "an empty log verifies nothing");
        let bad = AccuracyEntry { data: "ABC".into(), token_count: Some(1), ..Default::default() };
        assert!(!verify(&[bad], E, true).passed());
        assert_eq!(verify_file_passes(&eos.render()), (true, false, true));
    }

    #[test]
    fn eos_counts_trailing_tokens_from_position_one() {
        assert_eq!(trailing_eos(&[E, E], E), 1, "position 0 is never examined");
        assert_eq!(trailing_eos(&[1, E, 2, E], E), 1);
        assert_eq!(trailing_eos(&[1, E, E, E], E), 3);
        assert_eq!(trailing_eos(&[], E), 0);
        assert!(verify(&[entry(&[E, E], Some(2), Some(&[E]))], E, false).eos, "one counted EOS passes");
        assert!(verify(&[entry(&[1, 2, 2], Some(3), Some(&[1]))], E, false).eos, "another model's EOS id is a token");
    }

    #[test]
    fn parses_loadgen_entries_and_decodes_int32() {
        let text = format!(
            r#"[{{"seq_id": 0, "qsl_idx": 7, "data": "{}", "token_count": 2, "token_data": "{}"}},
               {{"seq_id": 1, "qsl_idx": 3, "data": "{}", "token_count": 1}}]"#,
            hex(&[1, -2]),
            hex(&[1]),
            hex(&[128009])
        );
        let entries = parse_accuracy_log(&text, Path::new("x.json")).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].qsl_idx, entries[1].token_data.as_deref()), (7, None));
        assert_eq!(decode_int32(&entries[0].data), Some(vec![1, -2]));
        assert_eq!(decode_int32("09F40100"), Some(vec![128009]));
        assert_eq!(decode_int32("09f40100"), Some(vec![128009]), "lower case");
        assert_eq!(decode_int32("09F401"), None);
        assert_eq!(decode_int32("zzzzzzzz"), None);
        assert!(parse_accuracy_log("{not json", Path::new("x.json")).is_err());
    }

    #[test]
    fn audit_config_holds_test06s_keys() {
        let c = audit_config();
        for line in [
            "*.*.mode = 2",
            "*.*.accuracy_log_rng_seed = 720381539243781796",
            "*.*.accuracy_log_sampling_target = 100",
            "*.*.min_query_count = 100",
            "*.*.min_duration = 0",
            "*.*.sample_concatenate_permutation = 0",
        ] {
            assert!(c.lines().any(|l| l == line), "{line}");
        }
    }
}
