//! `qdl-frontend submission --check DIR`: qdl's own check of a Network-division submission tree
//! ([`qdl_frontend::submission::check::check_tree`]), printed one finding a line.

use std::path::Path;

use qdl_frontend::submission::check::check_tree;
use qdl_shared::exit;

/// The `submission` command's help epilogue.
pub const HELP: &str = "Without --check it produces a tree in --out on two synthetic accelerators on \
loopback (Offline and Server: a performance, an accuracy and a TEST06 run each, resumable from \
OUT/.qdl-submission.json), then checks it: exit 0 when the only errors are the accuracy targets \
(and, with --test-mode, the shortened settings' findings), 1 otherwise.\n\n\
With --check, DIR is the directory that holds network/ (the official checker's --input). \
Each finding is printed as `error|warning [Rule] PATH: message`, then a summary line.\n\n\
Exit status: 0 the tree is clean (warnings allowed), 1 it has errors (including a tree whose only \
errors are the accuracy targets, which the summary line names).";

/// Checks the tree under `dir`, prints the findings and the summary; returns the exit status.
pub fn check(dir: &Path) -> i32 {
    if !dir.is_dir() {
        eprintln!("qdl-frontend: submission --check: {} is not a directory", dir.display());
        return exit::RUNTIME;
    }
    let report = check_tree(dir);
    for f in &report.findings {
        println!("{f}");
    }
    println!("{}", report.summary());
    if report.is_clean() { exit::OK } else { exit::RUNTIME }
}
