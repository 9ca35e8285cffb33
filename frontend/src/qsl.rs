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
//! - other int32/int64 tensors: `r % 1000`; float tensors: `(r >> 40) / 2^24 × 2 − 1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use qdl_shared::transport::PayloadSource;
use qdl_shared::workload::{BERT_SEQ_LEN, DType, WorkloadSpec};
use serde::{Deserialize, Serialize};

use crate::npy::{NpyError, NpyFile};

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
}

enum Layout {
    Generated {
        seed: u64,
    },
    /// One file per input tensor, samples stacked along the first axis.
    Stacked(Vec<NpyFile>),
    /// One file per sample (single-input workloads), in file-name order.
    PerSample(Vec<PathBuf>),
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
    /// axis, or (single-input workloads) one `.npy` file per sample. Every file is checked now.
    pub fn npy(spec: &WorkloadSpec, dir: &Path) -> Result<SampleSource, QslError> {
        let info = DatasetInfo::Npy { dir: dir.to_path_buf() };
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

    /// Opens the source `info` describes.
    pub fn from_info(spec: &WorkloadSpec, info: &DatasetInfo) -> Result<SampleSource, QslError> {
        match info {
            DatasetInfo::Generated { seed } => Ok(SampleSource::generated(spec, *seed)),
            DatasetInfo::Npy { dir } => SampleSource::npy(spec, dir),
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

    /// Writes sample `index` (its tensors concatenated) into `out`.
    pub fn fill(&self, index: usize, out: &mut [u8]) -> Result<(), QslError> {
        if let Some(n) = self.available
            && index >= n
        {
            return Err(QslError::OutOfRange { index, total: n });
        }
        match &self.layout {
            Layout::Generated { seed } => {
                generate(&self.spec, *seed, index, out);
                Ok(())
            }
            Layout::Stacked(files) => {
                let mut at = 0;
                for (t, f) in self.spec.inputs.iter().zip(files) {
                    let b = t.bytes();
                    f.read_at((index * b) as u64, &mut out[at..at + b])?;
                    at += b;
                }
                Ok(())
            }
            Layout::PerSample(paths) => {
                let f = NpyFile::open(&paths[index])?;
                Ok(f.read_at(0, out)?)
            }
        }
    }
}

/// Generates sample `index` of `seed` into `out`; see the module docs.
pub fn generate(spec: &WorkloadSpec, seed: u64, index: usize, out: &mut [u8]) {
    let mut rng = SplitMix64(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let bert = spec.inputs.len() == 3
        && spec
            .inputs
            .iter()
            .zip(["input_ids", "input_mask", "segment_ids"])
            .all(|(t, n)| t.name == n && t.dtype == DType::I32 && t.shape == [BERT_SEQ_LEN]);
    if bert {
        return generate_bert(&mut rng, out);
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
pub struct LoadedSet {
    data: Box<[u8]>,
    /// QSL index → position in `data` (`u32::MAX`: not loaded).
    positions: Vec<u32>,
    sample_bytes: usize,
}

impl LoadedSet {
    /// Byte offset of sample `index` in the buffer, if loaded.
    pub fn offset(&self, index: usize) -> Option<usize> {
        match self.positions.get(index) {
            Some(&p) if p != u32::MAX => Some(p as usize * self.sample_bytes),
            _ => None,
        }
    }

    /// Sample `index`'s bytes, if loaded.
    pub fn sample(&self, index: usize) -> Option<&[u8]> {
        self.offset(index).map(|o| &self.data[o..o + self.sample_bytes])
    }

    /// Bytes per sample.
    pub fn sample_bytes(&self) -> usize {
        self.sample_bytes
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
        let sb = self.source.spec().input_bytes();
        let mut data = vec![0u8; indices.len() * sb].into_boxed_slice();
        let mut positions = vec![u32::MAX; self.total];
        for (pos, &index) in indices.iter().enumerate() {
            if index >= self.total {
                return Err(QslError::OutOfRange { index, total: self.total });
            }
            self.source.fill(index, &mut data[pos * sb..(pos + 1) * sb])?;
            positions[index] = pos as u32;
        }
        self.current.store(Some(Arc::new(LoadedSet { data, positions, sample_bytes: sb })));
        Ok(())
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
}
