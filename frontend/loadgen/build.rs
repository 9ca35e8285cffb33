//! Builds the official MLCommons LoadGen from its hash-pinned PyPI source distribution.
//!
//! Where the sources come from, in order:
//! 1. `QDL_LOADGEN_SRC`: a directory holding an unpacked `mlcommons-loadgen` sdist (offline builds).
//! 2. `QDL_LOADGEN_SDIST`: a path to the `.tar.gz` sdist itself; its SHA-256 is checked here.
//! 3. Otherwise `python3 -m pip download --no-deps --no-binary :all: --require-hashes` of the pinned
//!    requirement in `loadgen-requirements.txt`, into `OUT_DIR` (pip checks the hash, and so do we).
//!
//! No LoadGen source is ever written into the repository. The C++ is compiled at `-O3` whatever
//! the Cargo profile: LoadGen sits on the measured path.

use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = "6.0.17";
const SDIST_NAME: &str = "mlcommons_loadgen-6.0.17.tar.gz";
const SDIST_SHA256: &str = "a2e85d09e3cc0c606f89bfe1fbf97537c8b5b238ae0afbd923ad9c710fcf2ca8";

const SOURCES: &[&str] = &[
    "early_stopping.cc",
    "issue_query_controller.cc",
    "loadgen.cc",
    "logging.cc",
    "test_settings_internal.cc",
    "utils.cc",
    "version.cc",
    "results.cc",
    "generated/version_generated.cc",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=loadgen-requirements.txt");
    println!("cargo:rerun-if-changed=shim/qdl_loadgen_shim.cc");
    println!("cargo:rerun-if-env-changed=QDL_LOADGEN_SRC");
    println!("cargo:rerun-if-env-changed=QDL_LOADGEN_SDIST");
    println!("cargo:rerun-if-env-changed=PYTHON");

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = match env::var_os("QDL_LOADGEN_SRC") {
        Some(dir) => PathBuf::from(dir),
        None => unpacked_sdist(&out),
    };
    check_tree(&src);

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++14")
        .opt_level(3)
        .include(&src)
        .define("MAJOR_VERSION", "6")
        .define("MINOR_VERSION", "0")
        .warnings(false)
        .cargo_warnings(false);
    for file in SOURCES {
        build.file(src.join(file));
    }
    build.file("shim/qdl_loadgen_shim.cc");
    build.compile("mlperf_loadgen");
    // cc links libstdc++ for cpp(true); pthread is needed by LoadGen's threads.
    println!("cargo:rustc-link-lib=pthread");
}

/// Returns the directory of the unpacked, hash-verified sdist under `out`, fetching it if needed.
fn unpacked_sdist(out: &Path) -> PathBuf {
    let tree = out.join(format!("mlcommons_loadgen-{VERSION}"));
    let marker = out.join(".loadgen-unpacked");
    if marker.exists() && tree.join("loadgen.cc").exists() {
        return tree;
    }
    let tarball = match env::var_os("QDL_LOADGEN_SDIST") {
        Some(path) => PathBuf::from(path),
        None => download(out),
    };
    let bytes = fs::read(&tarball).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", tarball.display())));
    let digest = sha256_hex(&bytes);
    if digest != SDIST_SHA256 {
        fail(&format!(
            "{} has SHA-256 {digest}, expected {SDIST_SHA256}: refusing to build an unpinned LoadGen",
            tarball.display()
        ));
    }
    let decoder = flate2::read::GzDecoder::new(&bytes[..]);
    tar::Archive::new(decoder)
        .unpack(out)
        .unwrap_or_else(|e| fail(&format!("cannot unpack {}: {e}", tarball.display())));
    fs::write(&marker, VERSION).ok();
    tree
}

fn download(out: &Path) -> PathBuf {
    let dest = out.join("sdist");
    let target = dest.join(SDIST_NAME);
    if target.exists() {
        return target;
    }
    fs::create_dir_all(&dest).ok();
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let requirements = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("loadgen-requirements.txt");
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "--require-hashes", "-r"])
        .arg(&requirements)
        .arg("-d")
        .arg(&dest)
        .status();
    match status {
        Ok(s) if s.success() && target.exists() => target,
        Ok(s) => fail(&format!(
            "`{python} -m pip download` of mlcommons-loadgen {VERSION} failed ({s}); \
             set QDL_LOADGEN_SDIST to the .tar.gz or QDL_LOADGEN_SRC to an unpacked copy for offline builds"
        )),
        Err(e) => fail(&format!(
            "cannot run `{python}` to fetch mlcommons-loadgen {VERSION}: {e}; install python3 with pip, \
             or set QDL_LOADGEN_SDIST / QDL_LOADGEN_SRC for offline builds"
        )),
    }
}

fn check_tree(src: &Path) {
    for file in SOURCES.iter().chain(["loadgen.h", "mlperf_conf.h"].iter()) {
        if !src.join(file).exists() {
            fail(&format!("{} is not an mlcommons-loadgen source tree: {file} is missing", src.display()));
        }
    }
    if let Ok(mut f) = fs::File::open(src.join("VERSION.txt")) {
        let mut v = String::new();
        f.read_to_string(&mut v).ok();
        if v.trim() != VERSION {
            println!(
                "cargo:warning=LoadGen source at {} is version {}, qdl is pinned to {VERSION}",
                src.display(),
                v.trim()
            );
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn fail(msg: &str) -> ! {
    eprintln!("qdl-loadgen build: {msg}");
    panic!("qdl-loadgen build failed: {msg}");
}
