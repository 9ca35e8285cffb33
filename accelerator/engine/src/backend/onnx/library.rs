//! Finding the ONNX Runtime shared library, and loading it once per process.
//!
//! qdl does not link ONNX Runtime: it loads `libonnxruntime.so` at start-up (`ort`'s
//! `load-dynamic`), from the first of
//! 1. `backend.onnx.library` in config,
//! 2. the `ORT_DYLIB_PATH` environment variable,
//! 3. the library shipped inside the Python `onnxruntime` / `onnxruntime-gpu` package, if
//!    `python3` (or `$QDL_PYTHON`) can import it.
//!
//! A missing library, or one older than the API qdl needs (1.31), is an error that says where it
//! looked; it never panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::OnnxError;

/// Where the library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The library file.
    pub path: PathBuf,
    /// How it was found ("config", "ORT_DYLIB_PATH", "python onnxruntime 1.32.0").
    pub source: String,
}

/// Finds the library; see the module docs.
pub fn locate(configured: Option<&Path>) -> Result<Located, OnnxError> {
    if let Some(p) = configured {
        return Ok(Located { path: p.to_path_buf(), source: "backend.onnx.library".into() });
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(Located { path: PathBuf::from(p), source: "ORT_DYLIB_PATH".into() });
    }
    let python = std::env::var("QDL_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = "import onnxruntime, os; print(onnxruntime.__version__); print(os.path.dirname(onnxruntime.__file__))";
    let looked = match std::process::Command::new(&python).args(["-c", probe]).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let version = lines.next().unwrap_or("?").trim().to_string();
            let dir = PathBuf::from(lines.next().unwrap_or("").trim()).join("capi");
            match find_in(&dir) {
                Some(path) => return Ok(Located { path, source: format!("python onnxruntime {version}") }),
                None => {
                    format!("the Python onnxruntime {version} package has no libonnxruntime.so in {}", dir.display())
                }
            }
        }
        Ok(_) => format!("{python} cannot import onnxruntime"),
        Err(e) => format!("{python} cannot be run ({e})"),
    };
    Err(OnnxError::LibraryNotFound { looked })
}

/// The `libonnxruntime.so*` file in `dir` (the versioned one if several).
fn find_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so") && p.is_file())
        })
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, Located), OnnxError>> = OnceLock::new();

/// Loads the library and creates ONNX Runtime's environment, once per process (ONNX Runtime
/// allows one); later calls return the first outcome, whatever `configured` says.
pub fn environment(configured: Option<&Path>) -> Result<(ort::environment::Environment, Located), OnnxError> {
    let loaded = ENVIRONMENT.get_or_init(|| {
        let fail = |reason: String| OnnxError::Library { reason };
        let located = locate(configured).map_err(|e| fail(e.to_string()))?;
        if !located.path.is_file() {
            return Err(fail(format!("{} (from {}) is not a file", located.path.display(), located.source)));
        }
        let builder = ort::init_from(&located.path).map_err(|e| fail(format!("{e} (from {})", located.source)))?;
        let env =
            builder.with_name("qdl").build().map_err(|e| fail(format!("creating ONNX Runtime's environment: {e}")))?;
        Ok((env, located))
    });
    loaded.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioned_library_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.32.0"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(find_in(dir.path()), Some(dir.path().join("libonnxruntime.so.1.32.0")));
    }

    #[test]
    fn configured_path_wins() {
        let l = locate(Some(Path::new("lib/libonnxruntime.so.1.32.0"))).unwrap();
        assert_eq!(l.source, "backend.onnx.library");
    }
}
