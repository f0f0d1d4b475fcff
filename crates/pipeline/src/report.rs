//! The run report: report.json, report.md and gates.svg (the frozen-benchmark
//! and held-out Spearman of every registered version, a hand-written SVG).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use embedrt_core::fsutil::write_atomic;
use serde_json::Value;

use crate::registry::{write_json, Registry};

pub fn write(run_dir: &Path, registry: &Registry, report: &Value) -> Result<()> {
    write_json(&run_dir.join("report.json"), report)?;
    let series = version_series(registry)?;
    write_atomic(&run_dir.join("gates.svg"), chart(&series).as_bytes())?;
    write_atomic(&run_dir.join("report.md"), markdown(report).as_bytes())?;
    Ok(())
}

/// (version, frozen spearman, held-out spearman) of one registered version.
type Point = (String, Option<f64>, Option<f64>);

fn version_series(registry: &Registry) -> Result<Vec<Point>> {
    let mut out = Vec::new();
    for v in registry.versions()? {
        let info = registry.version_info(&v)?;
        out.push((
            v,
            info["metrics"]["frozen_spearman"].as_f64(),
            info["metrics"]["held_out_spearman"].as_f64(),
        ));
    }
    Ok(out)
}

fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Pipeline run {}\n", r["run"].as_str().unwrap_or("?"));
    let _ = writeln!(
        s,
        "Decision: **{}** at stage `{}`; version {}; champion {}.\n",
        r["decision"].as_str().unwrap_or("?"),
        r["stage"].as_str().unwrap_or("?"),
        r["version"],
        r["champion"]
    );
    if let Some(reason) = r["reason"].as_str() {
        let _ = writeln!(s, "Reason: {reason}\n");
    }
    let _ = writeln!(
        s,
        "## Gates\n\n| gate | value | threshold | passed | decided |\n|---|---|---|---|---|"
    );
    for g in r["gates"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            g["name"].as_str().unwrap_or(""),
            g["value"],
            g["threshold"],
            g["passed"],
            if g["decided"].as_bool() == Some(true) {
                "**yes**"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(s, "\n## Stages\n\n| stage | seconds |\n|---|---|");
    if let Some(m) = r["stage_seconds"].as_object() {
        for (k, v) in m {
            let _ = writeln!(s, "| {k} | {:.1} |", v.as_f64().unwrap_or(0.0));
        }
    }
    let _ = writeln!(
        s,
        "\n## Gate metrics across versions\n\n![gates](gates.svg)"
    );
    s
}

fn chart(series: &[Point]) -> String {
    let (w, h, pad) = (640.0, 320.0, 48.0);
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, a, b)| [*a, *b])
        .flatten()
        .collect();
    let lo = values
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let hi = values
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(1.0);
    let n = series.len().max(2) as f64;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
    let y = |v: f64| h - pad - (h - 2.0 * pad) * (v - lo) / (hi - lo).max(1e-9);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{pad}\" y=\"20\">Spearman x 100 per version (blue: frozen benchmark, orange: held-out slice of its day)</text>\n"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        h - pad,
        w - pad,
        h - pad
    );
    let _ = writeln!(
        s,
        "<text x=\"4\" y=\"{:.1}\">{hi:.1}</text><text x=\"4\" y=\"{:.1}\">{lo:.1}</text>",
        y(hi) + 4.0,
        y(lo)
    );
    for (idx, color) in [(1usize, "#1f77b4"), (2, "#ff7f0e")] {
        let pts: Vec<String> = series
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let v = if idx == 1 { r.1 } else { r.2 };
                v.map(|v| format!("{:.1},{:.1}", x(i), y(v)))
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                s,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
    }
    for (i, (v, _, _)) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{v}</text>",
            x(i),
            h - pad + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}
