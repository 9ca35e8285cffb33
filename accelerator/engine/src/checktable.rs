//! The result table of the check binaries (`qdl-gpu-check`, `qdl-llama-check`): one row per
//! check, `check | gpu | result | detail | ms`, aligned, and the same rows as JSON.

use std::path::Path;
use std::time::Instant;

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What was checked (`copy`, `worker`, `llama`).
    pub check: &'static str,
    /// The GPU it ran on (its CUDA ordinal), or `-`.
    pub gpu: String,
    /// Whether it passed.
    pub ok: bool,
    /// What it found, or why it failed.
    pub detail: String,
    /// How long it took, ms.
    pub ms: f64,
}

/// The row of a check that started at `since` and answered `result`.
pub fn row<E: std::fmt::Display>(check: &'static str, gpu: &str, result: Result<String, E>, since: Instant) -> Row {
    let ms = since.elapsed().as_secs_f64() * 1e3;
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(e) => (false, e.to_string()),
    };
    Row { check, gpu: gpu.to_string(), ok, detail, ms }
}

/// The rows as an aligned text table, a header and a rule first.
pub fn table(rows: &[Row]) -> String {
    let header = ["check", "gpu", "result", "detail", "ms"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let result = if r.ok { "PASS" } else { "FAIL" };
            [r.check.to_string(), r.gpu.clone(), result.to_string(), r.detail.clone(), format!("{:.1}", r.ms)]
        })
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, cell) in width.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: [&str; 5]| {
        format!(
            "{:<w0$} | {:<w1$} | {:<w2$} | {:<w3$} | {:>w4$}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4]
        )
    };
    let mut out = format!("{}\n{}\n", line(header), width.map(|w| "-".repeat(w)).join("-|-"));
    for c in &cells {
        out += &line([&c[0], &c[1], &c[2], &c[3], &c[4]]);
        out.push('\n');
    }
    out
}

/// The rows as JSON objects (`check`, `gpu`, `result`, `detail`, `ms`).
pub fn rows_json(rows: &[Row]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "check": r.check,
                "gpu": r.gpu,
                "result": if r.ok { "PASS" } else { "FAIL" },
                "detail": r.detail,
                "ms": (r.ms * 10.0).round() / 10.0,
            })
        })
        .collect()
}

/// Writes `doc` to `path`, pretty-printed.
pub fn write_json(path: &Path, doc: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(doc)?;
    std::fs::write(path, text + "\n")
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let rows = [
            Row { check: "discover", gpu: "-".into(), ok: true, detail: "1 GPU(s)".into(), ms: 12.34 },
            Row { check: "copy", gpu: "0".into(), ok: false, detail: "CUDA: cuMemAlloc failed".into(), ms: 1.0 },
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{text}");
        assert!(lines[0].starts_with("check    | gpu | result | detail "), "{text}");
        assert!(lines[2].contains("| PASS   |") && lines[3].contains("| FAIL   |"), "{text}");
        assert!(lines[2].ends_with(" 12.3") && lines[3].ends_with("  1.0"), "{text}");
        let json = rows_json(&rows);
        assert_eq!((json[0]["result"].as_str(), json[1]["ms"].as_f64()), (Some("PASS"), Some(1.0)));
    }
}
