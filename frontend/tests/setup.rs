//! `scripts/setup`'s detection, run against made-up roots (`QDL_SETUP_ROOT`): it must ask for
//! what the build really loads, not be fooled by a look-alike. The case that broke a new machine:
//! LLVM's `libclang-cpp.so.14` present, the libclang that bindgen loads absent.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn setup_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup")
}

/// Runs the detection against `root` and returns (success, the packages it says are missing).
fn check(root: &Path, env: &[(&str, &str)]) -> (bool, Vec<String>) {
    let mut cmd = Command::new("bash");
    cmd.arg(setup_script()).arg("--check").env("QDL_SETUP_ROOT", root).env_remove("LIBCLANG_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run scripts/setup");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let missing: Vec<String> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("setup: missing: "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if out.status.success() {
        assert!(stdout.contains("setup: nothing missing"), "unexpected output: {stdout}");
    } else {
        assert!(
            !missing.is_empty(),
            "failed without naming a package: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), missing)
}

fn touch(root: &Path, rel: &str, executable: bool) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, b"").unwrap();
    if executable {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A root with every tool but libclang: compilers, cmake, Python with pip and venv, Prometheus.
fn root_without_libclang() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for bin in ["g++", "make", "cmake", "python3", "prometheus"] {
        touch(root.path(), &format!("usr/bin/{bin}"), true);
    }
    touch(root.path(), "usr/lib/python3/dist-packages/pip/__init__.py", false);
    touch(root.path(), "usr/lib/python3.11/ensurepip/__init__.py", false);
    root
}

#[test]
fn libclang_cpp_alone_asks_for_libclang_dev() {
    let root = root_without_libclang();
    touch(root.path(), "usr/lib/llvm-14/lib/libclang-cpp.so.14", false);
    touch(root.path(), "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14", false);
    let (ok, missing) = check(root.path(), &[]);
    assert!(!ok);
    assert_eq!(missing, vec!["libclang-dev".to_string()]);
}

#[test]
fn libclang_with_clang_headers_is_enough() {
    let root = root_without_libclang();
    touch(root.path(), "usr/lib/llvm-14/lib/libclang-cpp.so.14", false);
    touch(root.path(), "usr/lib/llvm-14/lib/libclang.so.1", false);
    touch(root.path(), "usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h", false);
    let (ok, missing) = check(root.path(), &[]);
    assert!(ok, "asked for {missing:?}");
}

#[test]
fn libclang_without_clang_headers_asks_for_libclang_dev() {
    // libclang1-14 alone: bindgen loads it, then cannot find stddef.h.
    let root = root_without_libclang();
    touch(root.path(), "usr/lib/x86_64-linux-gnu/libclang-14.so.1", false);
    let (ok, missing) = check(root.path(), &[]);
    assert!(!ok);
    assert_eq!(missing, vec!["libclang-dev".to_string()]);
}

#[test]
fn libclang_path_is_the_only_place_searched_when_set() {
    // clang-sys searches $LIBCLANG_PATH alone when it is set: so does the detection.
    let root = root_without_libclang();
    touch(root.path(), "usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h", false);
    touch(root.path(), "opt/llvm/lib/libclang.so", false);
    let (ok, missing) = check(root.path(), &[("LIBCLANG_PATH", "/opt/llvm/lib")]);
    assert!(ok, "asked for {missing:?}");
    let (ok, missing) = check(root.path(), &[("LIBCLANG_PATH", "/opt/other")]);
    assert!(!ok);
    assert_eq!(missing, vec!["libclang-dev".to_string()]);
}

#[test]
fn an_empty_root_asks_for_everything() {
    let root = tempfile::tempdir().unwrap();
    let (ok, mut missing) = check(root.path(), &[]);
    assert!(!ok);
    missing.sort();
    let mut want: Vec<String> =
        ["g++", "make", "cmake", "libclang-dev", "python3", "python3-pip", "python3-venv", "prometheus"]
            .map(String::from)
            .to_vec();
    want.sort();
    assert_eq!(missing, want);
}

#[test]
fn python_without_pip_or_venv_asks_for_both() {
    let root = root_without_libclang();
    touch(root.path(), "usr/lib/llvm-14/lib/libclang.so.1", false);
    touch(root.path(), "usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h", false);
    fs::remove_file(root.path().join("usr/lib/python3/dist-packages/pip/__init__.py")).unwrap();
    fs::remove_file(root.path().join("usr/lib/python3.11/ensurepip/__init__.py")).unwrap();
    let (ok, missing) = check(root.path(), &[]);
    assert!(!ok);
    assert_eq!(missing, vec!["python3-pip".to_string(), "python3-venv".to_string()]);
}
