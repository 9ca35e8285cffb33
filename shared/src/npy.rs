//! Reading NumPy `.npy` files (format versions 1, 2 and 3): the header is checked against the
//! tensor it must hold, then samples are read straight from the file at their offsets.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::workload::DType;

/// Errors reading `.npy` files.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid .npy file, or holds another tensor than expected.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// An opened `.npy` file: its dtype descriptor, shape and where the data starts.
#[derive(Debug)]
pub struct NpyFile {
    path: PathBuf,
    file: File,
    /// The dtype descriptor, e.g. "<i4".
    pub descr: String,
    /// The array's shape.
    pub shape: Vec<usize>,
    data_offset: u64,
}

fn format_err(path: &Path, reason: impl Into<String>) -> NpyError {
    NpyError::Format { path: path.to_path_buf(), reason: reason.into() }
}

impl NpyFile {
    /// Opens a file and parses its header (never allocating more than the header's own length,
    /// which the format bounds to 4 GiB and this reader to 1 MiB).
    pub fn open(path: &Path) -> Result<NpyFile, NpyError> {
        let io = |source| NpyError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let mut magic = [0u8; 10];
        file.read_exact_at(&mut magic, 0).map_err(io)?;
        if &magic[..6] != b"\x93NUMPY" {
            return Err(format_err(path, "not a .npy file (bad magic)"));
        }
        let (header_len, start) = match magic[6] {
            1 => (u16::from_le_bytes([magic[8], magic[9]]) as u64, 10u64),
            2 | 3 => {
                let mut l = [0u8; 4];
                file.read_exact_at(&mut l, 8).map_err(io)?;
                (u32::from_le_bytes(l) as u64, 12u64)
            }
            v => return Err(format_err(path, format!("unsupported .npy format version {v}"))),
        };
        if header_len > 1 << 20 {
            return Err(format_err(path, format!("header of {header_len} bytes is implausibly large")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, start).map_err(io)?;
        let header = String::from_utf8_lossy(&header);
        let descr = dict_str(&header, "descr").ok_or_else(|| format_err(path, "header has no 'descr'"))?;
        if header.contains("'fortran_order': True") {
            return Err(format_err(path, "Fortran-ordered arrays are not supported; save with C order"));
        }
        let shape = dict_shape(&header).ok_or_else(|| format_err(path, "header has no valid 'shape'"))?;
        Ok(NpyFile { path: path.to_path_buf(), file, descr, shape, data_offset: start + header_len })
    }

    /// Checks that the file holds samples of `dtype` with per-sample shape `sample_shape`
    /// (stacked along a leading axis when `stacked`) and returns the number of samples.
    pub fn expect(&self, dtype: DType, sample_shape: &[u32], stacked: bool) -> Result<usize, NpyError> {
        let want = dtype.numpy_descr();
        // "|i1" and "<i1"/"i1" name the same single-byte type.
        let same = self.descr == want || (dtype.size() == 1 && self.descr[1..] == want[1..]);
        if !same {
            return Err(format_err(&self.path, format!("dtype {} where {want} was expected", self.descr)));
        }
        let (n, rest) = if stacked {
            match self.shape.split_first() {
                Some((n, rest)) => (*n, rest),
                None => return Err(format_err(&self.path, "a stacked file needs a leading sample axis")),
            }
        } else {
            (1, &self.shape[..])
        };
        let want_shape: Vec<usize> = sample_shape.iter().map(|&d| d as usize).collect();
        if rest != want_shape.as_slice() {
            return Err(format_err(&self.path, format!("per-sample shape {rest:?} where {want_shape:?} was expected")));
        }
        let len = self.file.metadata().map_err(|source| NpyError::Io { path: self.path.clone(), source })?.len();
        let needed = self.data_offset + (n * want_shape.iter().product::<usize>() * dtype.size()) as u64;
        if len < needed {
            return Err(format_err(&self.path, format!("file is {len} bytes, its header promises {needed}")));
        }
        Ok(n)
    }

    /// Reads `out.len()` bytes of sample data starting at byte `offset` of the data section.
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), NpyError> {
        self.file
            .read_exact_at(out, self.data_offset + offset)
            .map_err(|source| NpyError::Io { path: self.path.clone(), source })
    }
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = &header[at..];
    let open = rest.find('\'')? + 1;
    let close = rest[open..].find('\'')? + open;
    Some(rest[open..close].to_string())
}

fn dict_shape(header: &str) -> Option<Vec<usize>> {
    let at = header.find("'shape'")?;
    let rest = &header[at..];
    let open = rest.find('(')? + 1;
    let close = rest.find(')')?;
    rest[open..close].split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect()
}

/// Writes a C-ordered `.npy` (version 1) file: used by tests and by `qdl-frontend` tooling that
/// exports generated samples.
pub fn write(path: &Path, dtype: DType, shape: &[usize], data: &[u8]) -> std::io::Result<()> {
    let shape_txt = match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape_txt}, }}", dtype.numpy_descr());
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let data: Vec<u8> = (0..2 * 3 * 4 * 4).map(|i| i as u8).collect();
        write(&p, DType::I32, &[2, 3, 4], &data).unwrap();
        let f = NpyFile::open(&p).unwrap();
        assert_eq!((f.descr.as_str(), f.shape.as_slice()), ("<i4", &[2usize, 3, 4][..]));
        assert_eq!(f.expect(DType::I32, &[3, 4], true).unwrap(), 2);
        let mut second = vec![0u8; 48];
        f.read_at(48, &mut second).unwrap();
        assert_eq!(second, data[48..]);
        assert!(f.expect(DType::F32, &[3, 4], true).unwrap_err().to_string().contains("dtype <i4"));
        assert!(f.expect(DType::I32, &[4, 3], true).unwrap_err().to_string().contains("per-sample shape"));
        assert_eq!(f.expect(DType::I32, &[2, 3, 4], false).unwrap(), 1);
    }

    #[test]
    fn garbage_and_truncated_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.npy");
        std::fs::write(&p, b"not numpy at all").unwrap();
        assert!(NpyFile::open(&p).unwrap_err().to_string().contains("bad magic"));
        write(&p, DType::I8, &[4, 8], &[0; 10]).unwrap();
        let f = NpyFile::open(&p).unwrap();
        assert!(f.expect(DType::I8, &[8], true).unwrap_err().to_string().contains("header promises"));
        let mut big = b"\x93NUMPY\x02\x00".to_vec();
        big.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, big).unwrap();
        assert!(NpyFile::open(&p).unwrap_err().to_string().contains("implausibly large"));
    }
}
