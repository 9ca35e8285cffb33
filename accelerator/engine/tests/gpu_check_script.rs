//! `scripts/gpu-check`'s llama step, run against a made-up bundle with stand-ins for nvcc,
//! nvidia-smi, cmake and qdl-llama-check (no GPU, no CUDA, no build): what it asks cmake for
//! (CUDA on, shared libraries, the GPUs' architectures), that it runs the check once per GPU with
//! CUDA_VISIBLE_DEVICES and LD_LIBRARY_PATH at the libraries it built, that a failure on one GPU
//! fails the step, and that without nvcc (or with a CUDA 11 one for a Hopper GPU) the step is a
//! SKIP that says why and fails nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gpu-check")
}

fn write(path: &Path, text: &str, executable: bool) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    if executable {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A bundle as `--build` lays it out (empty files), stand-in tools in `fake/`, and a log
/// directory the stand-ins write what they were asked into.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("bundle/llama.cpp-src/CMakeLists.txt"), "", false);
        write(&d.join("bundle/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), "", false);
        write(&d.join("bundle/llama/references.json"), "{}", false);
        fs::create_dir_all(d.join("log")).unwrap();
        // qdl-llama-check: records its environment and arguments, fails on $FAKE_FAIL_GPU.
        write(
            &d.join("bundle/bin/qdl-llama-check"),
            "#!/bin/bash\necho \"CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} LD_LIBRARY_PATH=$LD_LIBRARY_PATH $*\" >> \"$FAKE_LOG/check\"\n\
             if [ \"${FAKE_FAIL_GPU:-x}\" = \"${CUDA_VISIBLE_DEVICES:-}\" ]; then echo 'llama | 1 | FAIL | bad | 1.0'; exit 1; fi\n\
             echo 'llama | 0 | PASS | 100 tokens/s, exact 12/12 | 1.0'\n",
            true,
        );
        // cmake: records its arguments; configure remembers the prefix, install puts libraries there.
        write(
            &d.join("fake/cmake"),
            "#!/bin/bash\necho \"$*\" >> \"$FAKE_LOG/cmake\"\n\
             case \"$1\" in\n\
               -S) prev=; for a; do case $a in -DCMAKE_INSTALL_PREFIX=*) prefix=${a#*=};; esac; [ \"$prev\" = -B ] && b=$a; prev=$a; done\n\
                   mkdir -p \"$b\"; echo \"$prefix\" > \"$b/prefix\" ;;\n\
               --install) p=$(cat \"$2/prefix\"); mkdir -p \"$p/lib\"; touch \"$p/lib/libllama.so.0.0.1\" \"$p/lib/libggml-cuda.so.0.9.0\" ;;\n\
             esac\n",
            true,
        );
        // nvidia-smi: the GPUs of $FAKE_GPUS ("0, 9.0;1, 8.0"); no compute_cap with FAKE_NO_CC=1.
        write(
            &d.join("fake/nvidia-smi"),
            "#!/bin/bash\ncase \"$*\" in\n\
               *compute_cap*) [ \"${FAKE_NO_CC:-}\" = 1 ] && { echo 'Field \"compute_cap\" is not a valid field to query.'; exit 2; }\n\
                              tr ';' '\\n' <<<\"$FAKE_GPUS\" | sed '/^$/d' ;;\n\
               *) tr ';' '\\n' <<<\"$FAKE_GPUS\" | sed -e '/^$/d' -e 's/,.*//' ;;\n\
             esac\n",
            true,
        );
        write(&d.join("cuda/bin/nvcc"), "#!/bin/bash\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n", true);
        for tool in ["make", "c++"] {
            write(&d.join("fake").join(tool), "#!/bin/bash\nexit 0\n", true);
        }
        Setup { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `scripts/gpu-check ARGS` with the stand-ins first on PATH (nvcc itself only through
    /// NVCC when `nvcc`), `gpus` as nvidia-smi's; returns (status, stdout + stderr).
    fn run(&self, args: &[&str], gpus: &str, nvcc: bool, env: &[(&str, &str)]) -> (i32, String) {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .args(args)
            .env("PATH", format!("{}:/usr/bin:/bin", self.path("fake").display()))
            .env("CUDA_HOME", self.path("no-cuda"))
            .env("FAKE_LOG", self.path("log"))
            .env("FAKE_GPUS", gpus)
            .env_remove("NVCC")
            .env_remove("QDL_LLAMA_CMAKE_ARGS")
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("CUDA_VISIBLE_DEVICES");
        if nvcc {
            cmd.env("NVCC", self.path("cuda/bin/nvcc"));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run scripts/gpu-check");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    fn log(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.path("log").join(name)).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

#[test]
fn the_cuda_step_builds_for_the_gpus_architectures_and_checks_each_gpu() {
    let s = Setup::new();
    let bin = s.path("bundle/bin");
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap()], "0, 9.0;1, 8.0", true, &[]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("gpu-check: llama PASS"), "{out}");
    let cmake = s.log("cmake");
    assert_eq!(cmake.len(), 3, "configure, build, install: {cmake:?}");
    for want in [
        "-DGGML_CUDA=ON",
        "-DBUILD_SHARED_LIBS=ON",
        "-DCMAKE_CUDA_ARCHITECTURES=80;90",
        "-DGGML_NATIVE=OFF",
        "-DLLAMA_BUILD_COMMON=OFF",
    ] {
        assert!(cmake[0].split(' ').any(|a| a == want), "{want} in {}", cmake[0]);
    }
    assert!(cmake[0].contains(&format!("-DCMAKE_CUDA_COMPILER={}", s.path("cuda/bin/nvcc").display())), "{}", cmake[0]);
    assert!(cmake[1].starts_with("--build ") && cmake[1].contains(" -j "), "all cores: {}", cmake[1]);
    let lib = s.path("bundle/llama-cuda/lib");
    let checks = s.log("check");
    assert_eq!(checks.len(), 2, "one run per GPU: {checks:?}");
    for (gpu, line) in checks.iter().enumerate() {
        assert!(line.starts_with(&format!("CUDA_VISIBLE_DEVICES={gpu} LD_LIBRARY_PATH={}", lib.display())), "{line}");
        assert!(line.contains(" --expect cuda ") && line.contains(&format!(" --gpu {gpu} ")), "{line}");
        assert!(line.contains(&format!("--library-dir {}", lib.display())), "{line}");
    }
}

#[test]
fn a_failure_on_one_gpu_fails_the_step_and_gpu_selects_one() {
    let s = Setup::new();
    let bin = s.path("bundle/bin");
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap()], "0, 9.0;1, 9.0", true, &[("FAKE_FAIL_GPU", "1")]);
    assert_eq!(status, 1, "{out}");
    assert!(out.contains("gpu-check: llama FAIL"), "{out}");
    assert_eq!(s.log("check").len(), 2);
    let s = Setup::new();
    let bin = s.path("bundle/bin");
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap(), "--gpu", "1"], "0, 9.0;1, 9.0", true, &[]);
    assert_eq!(status, 0, "{out}");
    let checks = s.log("check");
    assert!(checks.len() == 1 && checks[0].starts_with("CUDA_VISIBLE_DEVICES=1 "), "{checks:?}");
}

#[test]
fn without_a_compute_capability_the_architecture_is_native() {
    let s = Setup::new();
    let bin = s.path("bundle/bin");
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap()], "0, 9.0", true, &[("FAKE_NO_CC", "1")]);
    assert_eq!(status, 0, "{out}");
    assert!(s.log("cmake")[0].split(' ').any(|a| a == "-DCMAKE_CUDA_ARCHITECTURES=native"), "{:?}", s.log("cmake"));
}

#[test]
fn without_nvcc_the_step_is_skipped_with_the_reason() {
    if ["/usr/bin/nvcc", "/bin/nvcc"].iter().any(|p| Path::new(p).exists()) {
        eprintln!("skipped: this machine has an nvcc on the PATH the test keeps");
        return;
    }
    let s = Setup::new();
    let bin = s.path("bundle/bin");
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap()], "0, 9.0", false, &[]);
    assert_eq!(status, 0, "a SKIP fails nothing: {out}");
    assert!(out.contains("| SKIP   |") && out.contains("no nvcc (the CUDA toolkit)"), "{out}");
    assert!(out.contains("gpu-check: llama SKIP (no nvcc"), "{out}");
    assert!(s.log("cmake").is_empty() && s.log("check").is_empty());
    // No GPU at all is status 2, as for the other checks.
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap()], "", true, &[]);
    assert_eq!(status, 2, "{out}");
}

#[test]
fn nvcc_is_found_in_cuda_home_when_not_on_path() {
    let s = Setup::new();
    let bin = s.path("bundle/bin");
    let cuda = s.path("cuda");
    let (status, out) =
        s.run(&["--llama", bin.to_str().unwrap()], "0, 9.0", false, &[("CUDA_HOME", cuda.to_str().unwrap())]);
    assert_eq!(status, 0, "{out}");
    let nvcc = s.path("cuda/bin/nvcc");
    assert!(s.log("cmake")[0].contains(&format!("-DCMAKE_CUDA_COMPILER={}", nvcc.display())), "{:?}", s.log("cmake"));
}

#[test]
fn a_cuda_11_nvcc_is_skipped_for_hopper_gpus() {
    let s = Setup::new();
    let old = s.path("cuda/bin/nvcc-11.8");
    write(&old, "#!/bin/bash\necho 'Cuda compilation tools, release 11.8, V11.8.89'\n", true);
    let bin = s.path("bundle/bin");
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap()], "0, 9.0", true, &[("NVCC", old.to_str().unwrap())]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("SKIP") && out.contains("is CUDA 11.8: this llama.cpp needs CUDA 12"), "{out}");
    assert!(s.log("cmake").is_empty(), "nothing built");
    // An Ampere GPU builds with it.
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap()], "0, 8.0", true, &[("NVCC", old.to_str().unwrap())]);
    assert_eq!(status, 0, "{out}");
    assert!(s.log("cmake")[0].contains("-DCMAKE_CUDA_ARCHITECTURES=80"), "{:?}", s.log("cmake"));
}

#[test]
fn the_cpu_rehearsal_builds_without_cuda_and_expects_the_cpu() {
    let s = Setup::new();
    let bin = s.path("bundle/bin");
    let (status, out) = s.run(&["--rehearse-cpu", bin.to_str().unwrap()], "", false, &[]);
    assert_eq!(status, 0, "{out}");
    let cmake = s.log("cmake");
    assert!(cmake[0].split(' ').any(|a| a == "-DGGML_CUDA=OFF"), "{cmake:?}");
    assert!(!cmake[0].contains("CMAKE_CUDA"), "{cmake:?}");
    let checks = s.log("check");
    let lib = s.path("bundle/llama-rehearsal/lib");
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert!(checks[0].starts_with(&format!("CUDA_VISIBLE_DEVICES= LD_LIBRARY_PATH={} ", lib.display())), "{checks:?}");
    assert!(checks[0].contains(" --expect cpu "), "{checks:?}");
}

#[test]
fn a_bundle_without_the_llama_parts_is_skipped() {
    let s = Setup::new();
    fs::remove_dir_all(s.path("bundle/llama.cpp-src")).unwrap();
    let bin = s.path("bundle/bin");
    let (status, out) = s.run(&["--llama", bin.to_str().unwrap()], "0, 9.0", true, &[]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("SKIP") && out.contains("scripts/gpu-check --build OUTDIR makes it"), "{out}");
}
