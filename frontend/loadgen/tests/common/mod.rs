//! Shared by the token-latency tests (each its own test binary: one LoadGen test per process): a
//! tiny in-process LLM-like SUT, a QSL, and readers for LoadGen's summary and detail logs.

#![allow(dead_code)]

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use qdl_loadgen::{
    CompletionBuffer, FirstTokenBuffer, IssuedSamples, QuerySample, QuerySampleLibrary, SystemUnderTest,
    first_token_complete,
};

/// Output tokens per response.
pub const TOKENS: usize = 8;
/// Time to the first token, then from the first token to the last, per sample.
pub const STEP: Duration = Duration::from_millis(1);

/// How the SUT reports first tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstToken {
    /// One `first_token_complete` call per sample.
    Single,
    /// Through a one-entry `FirstTokens` batch.
    Batch,
    /// `Single` for even QSL indices, `Batch` for odd ones.
    Alternate,
    /// Never (misuse with `use_token_latencies` outside Offline).
    Never,
}

/// Worker threads answer each sample: after [`STEP`] the first token (the first 4 bytes of the
/// response), after another [`STEP`] the whole response of [`TOKENS`] int32 tokens with
/// `n_tokens` = [`TOKENS`]. The workers outlive the test: [`TokenSut::shutdown`] joins them after
/// `start_test` returned (LoadGen's logger needs completing threads to outlive the test).
pub struct TokenSut {
    tx: Sender<QuerySample>,
    workers: Vec<JoinHandle<()>>,
}

impl TokenSut {
    pub fn new(workers: usize, first_token: FirstToken) -> Self {
        let (tx, rx) = mpsc::channel::<QuerySample>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..workers)
            .map(|n| {
                let rx = Arc::clone(&rx);
                thread::Builder::new().name(format!("token-sut-{n}")).spawn(move || work(&rx, first_token)).unwrap()
            })
            .collect();
        TokenSut { tx, workers }
    }

    pub fn shutdown(self) {
        drop(self.tx);
        for w in self.workers {
            w.join().unwrap();
        }
    }
}

fn work(rx: &Mutex<Receiver<QuerySample>>, first_token: FirstToken) {
    let mut completions = CompletionBuffer::with_capacity(1);
    let mut first_tokens = FirstTokenBuffer::with_capacity(1);
    loop {
        let next = rx.lock().unwrap().recv();
        let Ok(sample) = next else { return };
        let bytes: Vec<u8> = (0..TOKENS).flat_map(|k| ((sample.index * TOKENS + k) as i32).to_le_bytes()).collect();
        thread::sleep(STEP);
        let how = match first_token {
            FirstToken::Alternate if sample.index % 2 == 0 => FirstToken::Single,
            FirstToken::Alternate => FirstToken::Batch,
            other => other,
        };
        match how {
            FirstToken::Single => first_token_complete(&sample.id, &bytes[..4]),
            FirstToken::Batch => {
                let mut batch = first_tokens.batch();
                batch.push(&sample.id, &bytes[..4]);
                assert_eq!(batch.len(), 1);
                batch.finish();
            }
            FirstToken::Never | FirstToken::Alternate => {}
        }
        thread::sleep(STEP);
        let mut batch = completions.batch();
        batch.push_tokens(sample.id, &bytes, TOKENS as i64);
        batch.finish();
    }
}

impl SystemUnderTest for TokenSut {
    fn name(&self) -> String {
        "qdl-loadgen-token-test-sut".into()
    }
    fn issue_query(&self, samples: IssuedSamples<'_>) {
        for s in samples {
            self.tx.send(s).unwrap();
        }
    }
    fn flush_queries(&self) {}
}

/// A QSL of `n` samples, all of them the performance set; nothing to load.
pub struct Qsl(pub usize);

impl QuerySampleLibrary for Qsl {
    fn name(&self) -> String {
        "qdl-loadgen-token-test-qsl".into()
    }
    fn total_sample_count(&self) -> usize {
        self.0
    }
    fn performance_sample_count(&self) -> usize {
        self.0
    }
    fn load_samples_to_ram(&self, _: &[usize]) {}
    fn unload_samples_from_ram(&self, _: &[usize]) {}
}

/// The value after the colon of the summary line starting with `label` (leading spaces ignored).
pub fn summary_value<'s>(summary: &'s str, label: &str) -> Option<&'s str> {
    summary.lines().find_map(|l| l.trim_start().strip_prefix(label)?.trim_start().strip_prefix(':').map(str::trim))
}

/// The raw JSON value of the `:::MLLOG` entry with `key` in the detail log.
pub fn detail_value<'s>(detail: &'s str, key: &str) -> Option<&'s str> {
    let needle = format!("\"key\": \"{key}\", \"value\": ");
    detail.lines().find_map(|l| {
        let rest = &l[l.find(&needle)? + needle.len()..];
        Some(rest[..rest.find(", \"time_ms\"")?].trim())
    })
}

/// A numeric detail value.
pub fn detail_number(detail: &str, key: &str) -> f64 {
    let v = detail_value(detail, key).unwrap_or_else(|| panic!("no {key} in the detail log"));
    v.parse().unwrap_or_else(|_| panic!("{key} = {v} is not a number"))
}

/// A numeric summary value.
pub fn summary_number(summary: &str, label: &str) -> f64 {
    let v = summary_value(summary, label).unwrap_or_else(|| panic!("no `{label}` line in the summary"));
    v.parse().unwrap_or_else(|_| panic!("`{label}` = {v} is not a number"))
}

/// The detail log's error entries.
pub fn error_entries(detail: &str) -> Vec<&str> {
    detail.lines().filter(|l| l.contains("\"is_error\": true")).collect()
}
