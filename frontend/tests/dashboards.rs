//! Every PromQL expression of every Grafana dashboard panel, evaluated by a real Prometheus
//! scraping a real run (a frontend and two accelerators on loopback): an expression that errors
//! or returns no series fails, so dashboards and metric names cannot drift apart.
//!
//! Needs the `prometheus` binary (Debian's package; `scripts/setup` installs it).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A minimal HTTP/1.1 GET (Content-Length or chunked bodies).
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dashboard_expressions(dir: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap().to_string();
                out.push((name.clone(), p["title"].as_str().unwrap().to_string(), expr));
            }
        }
    }
    out
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_dashboard_query_returns_series_from_a_live_run() {
    let Ok(bin) = which("prometheus") else {
        panic!("the `prometheus` binary is needed (Debian: apt install prometheus; scripts/setup installs it)");
    };
    let dashboards = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards");
    let exprs = dashboard_expressions(&dashboards);
    assert!(exprs.len() >= 30, "{} expressions", exprs.len());

    let a = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "dash-a"]);
    let b = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "dash-b"]);
    let fe_metrics = format!("127.0.0.1:{}", free_port());
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: qdl-frontend\n    static_configs:\n      - targets: [\"{fe_metrics}\"]\n  - job_name: qdl-accelerator\n    static_configs:\n      - targets: [\"{}\", \"{}\"]\n",
            a.metrics, b.metrics
        ),
    )
    .unwrap();
    let _prom = Prometheus(
        Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&prom_addr, "/-/ready").is_ok_and(|(s, _)| s == 200) {
        assert!(Instant::now() < deadline, "Prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A Server run long enough for several scrapes of every target.
    let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let out = dir.path().join("run");
    let o = frontend(&[
        "run",
        "-a",
        &a.addr,
        "-a",
        &b.addr,
        "-w",
        "bert",
        "-s",
        "server",
        "--target-qps",
        "1500",
        "--min-duration-ms",
        "8000",
        "--min-query-count",
        "100",
        "--output-dir",
        out.to_str().unwrap(),
        "--metrics-listen",
        &fe_metrics,
        "--progress",
        "off",
    ]);
    ok(&o);
    std::thread::sleep(Duration::from_secs(2));
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();

    let mut failures = Vec::new();
    for (file, title, expr) in &exprs {
        let q = expr.replace("$__rate_interval", "4s");
        let path = format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1", encode(&q));
        let (status, body) = get(&prom_addr, &path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let series = v["data"]["result"].as_array().map(|r| r.len()).unwrap_or(0);
        if status != 200 || v["status"] != "success" {
            failures.push(format!("{file} / {title}: {q}\n    error: {}", v["error"].as_str().unwrap_or(&body)));
        } else if series == 0 {
            failures.push(format!("{file} / {title}: {q}\n    no series"));
        }
    }
    assert!(failures.is_empty(), "{} of {} expressions failed:\n{}", failures.len(), exprs.len(), failures.join("\n"));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .ok_or(())
}
