//! Ingest and validate a day's data: CSV (`sentence1,sentence2,score` or
//! `anchor,positive`, no header), JSON lines with the same keys, or Parquet
//! with those columns ([`crate::parquet_day`]); from a local path, `file://`
//! or `s3://bucket/key`. A day that fails a check is rejected with a reason
//! naming the row (rows count from 1 in every format).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::DataSection;

/// One training row; scores are kept on the config's label scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Row {
    Scored {
        sentence1: String,
        sentence2: String,
        score: f64,
    },
    Pair {
        anchor: String,
        positive: String,
    },
}

impl Row {
    pub fn texts(&self) -> [&str; 2] {
        match self {
            Row::Scored {
                sentence1,
                sentence2,
                ..
            } => [sentence1, sentence2],
            Row::Pair { anchor, positive } => [anchor, positive],
        }
    }
}

/// Summary statistics kept per accepted day, for the next days' distribution check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DayStats {
    pub rows: usize,
    pub scored: usize,
    pub score_mean: Option<f64>,
    pub score_std: Option<f64>,
    /// Rows dropped because a sentence is in the frozen benchmark.
    #[serde(default)]
    pub leaked: usize,
    /// Rows dropped as repeats of an earlier row.
    #[serde(default)]
    pub duplicates: usize,
}

/// The day's bytes from a local path, `file://` or `s3://bucket/key`.
pub fn fetch(uri: &str) -> Result<Vec<u8>> {
    crate::store::read_uri(uri).with_context(|| format!("{uri}: cannot read the day's data"))
}

/// Parses the day by its extension (`.csv`, `.jsonl`/`.json`/`.ndjson`, `.parquet`).
pub fn parse_day(uri: &str, bytes: &[u8]) -> Result<Vec<Row>> {
    let ext = Path::new(uri)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "parquet" {
        return crate::parquet_day::parse(bytes).map_err(|e| anyhow::anyhow!("{uri}: {e:#}"));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{uri}: not UTF-8 ({e})"))?;
    match ext.as_str() {
        "csv" => parse_csv_rows(text),
        "jsonl" | "json" | "ndjson" => parse_jsonl_rows(text),
        _ => bail!("{uri}: unknown format {ext:?}; use .csv, .jsonl or .parquet"),
    }
}

/// Fetches and parses a day.
pub fn read_day(uri: &str) -> Result<(Vec<u8>, Vec<Row>)> {
    let bytes = fetch(uri)?;
    let rows = parse_day(uri, &bytes)?;
    Ok((bytes, rows))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn parse_jsonl_rows(text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "row {}: expected {{\"sentence1\",\"sentence2\",\"score\"}} or {{\"anchor\",\"positive\"}} ({e})",
                i + 1
            )
        })?;
        rows.push(row);
    }
    Ok(rows)
}

fn parse_csv_rows(text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (line_no, fields) in csv_records(text)? {
        match fields.len() {
            1 if fields[0].trim().is_empty() => continue,
            3 => {
                let score: f64 = fields[2].trim().parse().map_err(|_| {
                    anyhow::anyhow!("row {line_no}: score {:?} is not a number", fields[2])
                })?;
                let mut it = fields.into_iter();
                rows.push(Row::Scored {
                    sentence1: it.next().unwrap_or_default(),
                    sentence2: it.next().unwrap_or_default(),
                    score,
                });
            }
            2 => {
                let mut it = fields.into_iter();
                rows.push(Row::Pair {
                    anchor: it.next().unwrap_or_default(),
                    positive: it.next().unwrap_or_default(),
                });
            }
            n => bail!(
                "row {line_no}: expected 3 fields (sentence1,sentence2,score) or 2 (anchor,positive), found {n}"
            ),
        }
    }
    Ok(rows)
}

/// RFC 4180 records with the line each starts on.
fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            match chars.next() {
                None => {
                    if quoted {
                        bail!("row {start}: unterminated quoted field");
                    }
                    break;
                }
                Some('"') if quoted => {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                }
                Some('"') if field.is_empty() => quoted = true,
                Some(',') if !quoted => fields.push(std::mem::take(&mut field)),
                Some('\r') if !quoted => {}
                Some('\n') if !quoted => {
                    line += 1;
                    break;
                }
                Some(c) => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
        }
        fields.push(field);
        out.push((start, fields));
    }
    Ok(out)
}

/// The checks of one day. `frozen` holds the frozen benchmark's sentences
/// (normalized); `earlier` the accepted days' statistics. Rows that leak a
/// frozen-benchmark sentence and repeated rows are dropped (and counted); a
/// day with too many of either is rejected. Returns the rows to keep.
pub fn validate(
    rows: &[Row],
    config: &DataSection,
    frozen: &HashSet<String>,
    earlier: &[DayStats],
) -> Result<(DayStats, Vec<Row>), String> {
    if rows.len() < config.min_rows {
        return Err(format!(
            "the day has {} rows, fewer than data.min_rows = {}",
            rows.len(),
            config.min_rows
        ));
    }
    let mut seen = HashSet::new();
    let mut scores = Vec::new();
    let mut kept = Vec::new();
    let (mut leaked, mut duplicates) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let n = i + 1;
        for (side, text) in row.texts().iter().enumerate() {
            if text.trim().is_empty() {
                return Err(format!("row {n}: field {} is empty", side + 1));
            }
            let chars = text.chars().count();
            if chars > config.max_chars {
                return Err(format!(
                    "row {n}: field {} has {chars} characters, more than data.max_chars = {}",
                    side + 1,
                    config.max_chars
                ));
            }
        }
        if let Row::Scored { score, .. } = row {
            if !score.is_finite() || *score < config.label_min || *score > config.label_max {
                return Err(format!(
                    "row {n}: score {score} is outside [{}, {}]",
                    config.label_min, config.label_max
                ));
            }
        }
        if row.texts().iter().any(|t| frozen.contains(&normalize(t))) {
            leaked += 1;
            continue;
        }
        if !seen.insert(row.texts().map(normalize)) {
            duplicates += 1;
            continue;
        }
        if let Row::Scored { score, .. } = row {
            scores.push(*score);
        }
        kept.push(row.clone());
    }
    let total = rows.len() as f64;
    if leaked as f64 > config.max_leak_fraction * total {
        return Err(format!(
            "{leaked} of {} rows use sentences of the frozen benchmark (leakage), more than data.max_leak_fraction = {}",
            rows.len(),
            config.max_leak_fraction
        ));
    }
    if duplicates as f64 > config.max_duplicate_fraction * total {
        return Err(format!(
            "{duplicates} of {} rows repeat an earlier row, more than data.max_duplicate_fraction = {}",
            rows.len(),
            config.max_duplicate_fraction
        ));
    }
    let (mean, std) = mean_std(&scores);
    let stats = DayStats {
        rows: kept.len(),
        scored: scores.len(),
        score_mean: mean,
        score_std: std,
        leaked,
        duplicates,
    };
    // Distribution against the earlier days (weighted by their rows).
    let prior: Vec<&DayStats> = earlier.iter().filter(|d| d.score_mean.is_some()).collect();
    if let (Some(m), Some(s), false) = (mean, std, prior.is_empty()) {
        let w: f64 = prior.iter().map(|d| d.scored as f64).sum();
        let pm = prior
            .iter()
            .map(|d| d.score_mean.unwrap_or(0.0) * d.scored as f64)
            .sum::<f64>()
            / w;
        let ps = prior
            .iter()
            .map(|d| d.score_std.unwrap_or(0.0) * d.scored as f64)
            .sum::<f64>()
            / w;
        if (m - pm).abs() > config.max_mean_shift {
            return Err(format!(
                "the mean score {m:.3} moved {:.3} from the earlier days' {pm:.3} (data.max_mean_shift = {})",
                (m - pm).abs(),
                config.max_mean_shift
            ));
        }
        if (s - ps).abs() > config.max_std_shift {
            return Err(format!(
                "the score standard deviation {s:.3} moved {:.3} from the earlier days' {ps:.3} (data.max_std_shift = {})",
                (s - ps).abs(),
                config.max_std_shift
            ));
        }
    }
    Ok((stats, kept))
}

fn mean_std(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (Some(m), Some(var.sqrt()))
}

/// How sentences are compared for leakage and duplicates.
pub fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(a: &str, b: &str, s: f64) -> Row {
        Row::Scored {
            sentence1: a.into(),
            sentence2: b.into(),
            score: s,
        }
    }

    #[test]
    fn csv_quotes_and_both_row_kinds() {
        let rows = parse_csv_rows("\"a, b\",c,1.5\nx,\"y \"\"q\"\"\"\n").unwrap();
        assert_eq!(rows[0], scored("a, b", "c", 1.5));
        assert_eq!(
            rows[1],
            Row::Pair {
                anchor: "x".into(),
                positive: "y \"q\"".into()
            }
        );
        let err = parse_csv_rows("a,b,c,d\n").unwrap_err().to_string();
        assert!(err.contains("row 1"), "{err}");
    }

    #[test]
    fn checks_name_the_row() {
        let cfg = DataSection {
            min_rows: 1,
            max_leak_fraction: 0.0,
            max_duplicate_fraction: 0.0,
            ..DataSection::default()
        };
        let frozen: HashSet<String> = [normalize("A frozen sentence.")].into();
        let ok = vec![scored("a", "b", 1.0), scored("c", "d", 2.0)];
        assert!(validate(&ok, &cfg, &frozen, &[]).is_ok());
        let cases = [
            (
                vec![scored("a", "b", 1.0), scored("", "d", 2.0)],
                "row 2: field 1 is empty",
            ),
            (vec![scored("a", "b", 9.0)], "row 1: score 9 is outside"),
            (
                vec![scored("a", "b", 1.0), scored("A  b", "b", 1.0)],
                "repeat an earlier row",
            ),
            (vec![scored("a", "a frozen sentence.", 1.0)], "leakage"),
        ];
        for (rows, want) in cases {
            let rows: Vec<Row> = if want.contains("repeat") {
                vec![scored("a b", "b", 1.0), scored("A  b", "b", 1.0)]
            } else {
                rows
            };
            let err = validate(&rows, &cfg, &frozen, &[]).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        let earlier = [DayStats {
            rows: 10,
            scored: 10,
            score_mean: Some(4.5),
            score_std: Some(0.5),
            leaked: 0,
            duplicates: 0,
        }];
        let err = validate(&ok, &cfg, &frozen, &earlier).unwrap_err();
        assert!(err.contains("mean score"), "{err}");
    }
}
