//! Grafana's dashboards against a real Prometheus scraping a real run (a frontend and two
//! accelerators on loopback): every template variable's query must return values, every
//! annotation query and every panel's PromQL expression (with the variables substituted by the
//! values found) must evaluate to series, so dashboards and metric names cannot drift apart. A
//! static test checks that they import into any Grafana 10/11: the data source is a variable,
//! never a hard-wired uid.
//!
//! Needs the `prometheus` binary (Debian's package; `scripts/setup` installs it).

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
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

/// One dashboard file, parsed.
struct Dashboard {
    file: String,
    json: serde_json::Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        out.push(Dashboard { file, json });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    assert!(out.len() >= 4, "{} dashboards in {}", out.len(), dir.display());
    out
}

/// Panels, rows' nested panels included (rows themselves have no query).
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// (title, expression) of every panel target.
fn panel_expressions(d: &Dashboard) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(&d.json) {
        for t in p["targets"].as_array().unwrap() {
            out.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// The query variables (name, `label_values(...)` query), in order.
fn variables(d: &Dashboard) -> Vec<(String, String)> {
    d.json["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap();
            (v["name"].as_str().unwrap().to_string(), q.to_string())
        })
        .collect()
}

/// The Prometheus annotation queries (name, expression, tag keys).
fn annotations(d: &Dashboard) -> Vec<(String, String, Vec<String>)> {
    d.json["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["builtIn"] != 1)
        .map(|a| {
            let tags = a["tagKeys"].as_str().unwrap_or("").split(',').filter(|t| !t.is_empty());
            let name = a["name"].as_str().unwrap().to_string();
            (name, a["expr"].as_str().unwrap().to_string(), tags.map(String::from).collect())
        })
        .collect()
}

const DATASOURCE: &str = r#"{"type":"prometheus","uid":"${datasource}"}"#;

#[test]
fn dashboards_import_into_any_grafana() {
    let ds: serde_json::Value = serde_json::from_str(DATASOURCE).unwrap();
    let mut failures = Vec::new();
    for d in dashboards() {
        let (f, j) = (&d.file, &d.json);
        if serde_json::to_string(j).unwrap().contains("qdl-prometheus") {
            failures.push(format!("{f}: names the compose lab's data source uid qdl-prometheus"));
        }
        if j["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            failures.push(format!("{f}: schemaVersion {} (Grafana 10 writes 38/39)", j["schemaVersion"]));
        }
        let list = j["templating"]["list"].as_array().unwrap();
        let var = |name: &str| list.iter().find(|v| v["name"] == name);
        match var("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => failures.push(format!("{f}: no `datasource` variable of type datasource (prometheus)")),
        }
        for name in ["job", "instance", "accelerator"] {
            match var(name) {
                Some(v) if v["type"] == "query" && v["datasource"] == ds => {}
                _ => failures.push(format!("{f}: no query variable `{name}` on the data source variable")),
            }
        }
        let anns = annotations(&d);
        if !anns.iter().any(|(_, e, _)| e.contains("qdl_frontend_test_running")) {
            failures.push(format!("{f}: no annotation from qdl_frontend_test_running"));
        }
        for a in j["annotations"]["list"].as_array().unwrap().iter().filter(|a| a["builtIn"] != 1) {
            if a["datasource"] != ds {
                failures.push(format!("{f}: annotation {} datasource {}", a["name"], a["datasource"]));
            }
        }
        for p in panels(j) {
            if p["datasource"] != ds {
                failures.push(format!("{f} / {}: panel datasource {}", p["title"], p["datasource"]));
            }
            for t in p["targets"].as_array().unwrap() {
                if t["datasource"] != ds {
                    failures.push(format!("{f} / {}: target datasource {}", p["title"], t["datasource"]));
                }
                let expr = t["expr"].as_str().unwrap_or("");
                // The bound is drawn over the accelerators' panels whichever job is chosen.
                let exempt = metric_names(expr).iter().all(|n| n == "qdl_frontend_latency_bound_seconds");
                for v in ["$job", "$instance"] {
                    if !exempt && !expr.contains(v) {
                        failures.push(format!("{f} / {}: not filtered by {v}: {expr}", p["title"]));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_rdma_metric_has_a_panel_and_every_panel_names_real_rdma_metrics() {
    use qdl_shared::metrics::rdma as r;
    let known = [
        r::CQ_POLLS,
        r::COMPLETIONS_PER_POLL,
        r::CQ_EVENTS,
        r::POSTS,
        r::INLINE_POSTS,
        r::DOORBELLS,
        r::STAGED,
        r::WC_ERRORS,
    ];
    let exprs: Vec<String> = dashboards().iter().flat_map(panel_expressions).map(|(_, e)| e).collect();
    for k in known {
        assert!(exprs.iter().any(|e| metric_names(e).iter().any(|n| n == k)), "no panel shows {k}");
    }
    // A TCP run cannot produce these series, so the live test cannot catch a misspelt one.
    for e in &exprs {
        for n in metric_names(e).iter().filter(|n| n.starts_with("qdl_rdma_")) {
            assert!(known.contains(&n.as_str()), "{n} is not an RDMA metric (in {e})");
        }
    }
}

/// The metric names an expression refers to (`_bucket`, `_sum`, `_count` of histograms
/// stripped).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = ["qdl_", "process_"].iter().filter_map(|p| rest.find(p)).min() {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if !name.ends_with("_total") {
                name = name.strip_suffix(suffix).unwrap_or(name);
            }
        }
        out.push(name.to_string());
        rest = &tail[end..];
    }
    out
}

/// A PromQL regex (inside a double-quoted string) matching exactly these values, as Grafana
/// substitutes a multi-value variable.
fn regex_of(values: &[String]) -> String {
    let esc = |v: &str| {
        v.chars().fold(String::new(), |mut s, c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                s.push_str("\\\\");
            }
            s.push(c);
            s
        })
    };
    format!("({})", values.iter().map(|v| esc(v)).collect::<Vec<_>>().join("|"))
}

fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut q = expr.replace("$__rate_interval", "4s");
    // Longest names first, so `$instance` is not taken for a prefix of another.
    let mut vars: Vec<&(String, String)> = vars.iter().collect();
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in vars {
        q = q.replace(&format!("${name}"), value);
    }
    q
}

/// `label_values(LABEL)` or `label_values(SELECTOR, LABEL)` → (selector, label).
fn parse_label_values(q: &str) -> Option<(Option<String>, String)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    match inner.rsplit_once(',') {
        Some((sel, label)) => Some((Some(sel.trim().to_string()), label.trim().to_string())),
        None => Some((None, inner.trim().to_string())),
    }
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Live {
    prom: String,
    start: f64,
    end: f64,
}

impl Live {
    /// The series of a range query, or the error.
    fn range(&self, q: &str) -> Result<Vec<serde_json::Value>, String> {
        let (start, end) = (self.start, self.end);
        let path = format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1", encode(q));
        self.api(&path).map(|d| d["result"].as_array().cloned().unwrap_or_default())
    }

    /// A template variable's values.
    fn label_values(&self, q: &str) -> Result<Vec<String>, String> {
        let (sel, label) = parse_label_values(q).ok_or_else(|| format!("not a label_values() query: {q}"))?;
        let (start, end) = (self.start, self.end);
        let mut path = format!("/api/v1/label/{label}/values?start={start:.3}&end={end:.3}");
        if let Some(sel) = sel {
            path.push_str(&format!("&match[]={}", encode(&sel)));
        }
        let d = self.api(&path)?;
        Ok(d.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect())
    }

    fn api(&self, path: &str) -> Result<serde_json::Value, String> {
        let (status, body) = get(&self.prom, path).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status != 200 || v["status"] != "success" {
            return Err(v["error"].as_str().unwrap_or(&body).to_string());
        }
        Ok(v["data"].clone())
    }
}

/// Whether an empty result is expected from a TCP run: the expression shows RDMA metrics only.
fn rdma_only(expr: &str) -> bool {
    let names = metric_names(expr);
    !names.is_empty() && names.iter().all(|n| n.starts_with("qdl_rdma_"))
}

#[test]
fn every_dashboard_query_returns_series_from_a_live_run() {
    let Ok(bin) = which("prometheus") else {
        panic!("the `prometheus` binary is needed (Debian: apt install prometheus; scripts/setup installs it)");
    };
    let boards = dashboards();
    let n_exprs: usize = boards.iter().map(|d| panel_expressions(d).len()).sum();
    assert!(n_exprs >= 50, "{n_exprs} expressions");

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
    // Then an LLM run, for the LLM dashboard (first tokens, continuous batching).
    let o = frontend(&[
        "run",
        "-a",
        &a.addr,
        "-a",
        &b.addr,
        "-w",
        "llama3.1-8b",
        "-s",
        "offline",
        "--expected-qps",
        "300",
        "--min-duration-ms",
        "4000",
        "--min-query-count",
        "100",
        "--total-samples",
        "500",
        "--output-dir",
        dir.path().join("llm").to_str().unwrap(),
        "--metrics-listen",
        &fe_metrics,
        "--progress",
        "off",
    ]);
    ok(&o);
    std::thread::sleep(Duration::from_secs(2));
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let live = Live { prom: prom_addr, start, end };

    let mut failures = Vec::new();
    let mut checked = 0;
    for d in &boards {
        let f = &d.file;
        // Variables first: each later query sees the earlier ones' values.
        let mut vars: Vec<(String, String)> = Vec::new();
        for (name, query) in variables(d) {
            checked += 1;
            let q = substitute(&query, &vars);
            match live.label_values(&q) {
                Ok(values) if !values.is_empty() => {
                    let expected: &[&str] = match name.as_str() {
                        "job" => &["qdl-frontend", "qdl-accelerator"],
                        "accelerator" => &["dash-a", "dash-b"],
                        _ => &[],
                    };
                    for e in expected {
                        if !values.iter().any(|v| v == e) {
                            failures.push(format!("{f} / variable {name}: {q}\n    {e} missing from {values:?}"));
                        }
                    }
                    if name == "instance" && values.len() < 3 {
                        failures.push(format!("{f} / variable {name}: {q}\n    3 nodes expected: {values:?}"));
                    }
                    vars.push((name, regex_of(&values)));
                }
                Ok(_) => failures.push(format!("{f} / variable {name}: {q}\n    no values")),
                Err(e) => failures.push(format!("{f} / variable {name}: {q}\n    error: {e}")),
            }
        }
        for (name, expr, tags) in annotations(d) {
            checked += 1;
            let q = substitute(&expr, &vars);
            match live.range(&q) {
                Ok(series) if series.is_empty() => {
                    failures.push(format!("{f} / annotation {name}: {q}\n    no series"))
                }
                Ok(series) => {
                    for t in &tags {
                        if series.iter().any(|s| s["metric"][t].as_str().is_none_or(str::is_empty)) {
                            failures.push(format!("{f} / annotation {name}: series without its tag {t}"));
                        }
                    }
                }
                Err(e) => failures.push(format!("{f} / annotation {name}: {q}\n    error: {e}")),
            }
        }
        for (title, expr) in panel_expressions(d) {
            checked += 1;
            let q = substitute(&expr, &vars);
            if q.contains('$') {
                failures.push(format!("{f} / {title}: a variable left unsubstituted: {q}"));
                continue;
            }
            match live.range(&q) {
                Ok(series) if series.is_empty() && !rdma_only(&expr) => {
                    failures.push(format!("{f} / {title}: {q}\n    no series"))
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("{f} / {title}: {q}\n    error: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} queries failed:\n{}", failures.len(), failures.join("\n"));

    // The latency bound the panels draw is LoadGen's: mlperf.conf's BERT Server bound, 130 ms at
    // the 99th percentile.
    let bound = live.range(r#"qdl_frontend_latency_bound_seconds{workload="bert",scenario="server",quantile="0.99"}"#);
    let bound = bound.unwrap();
    assert_eq!(bound.len(), 1, "{bound:?}");
    let last = bound[0]["values"].as_array().unwrap().last().unwrap()[1].as_str().unwrap().parse::<f64>().unwrap();
    assert!((last - 0.13).abs() < 1e-9, "bound {last}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .ok_or(())
}
