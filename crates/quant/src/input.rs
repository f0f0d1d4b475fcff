//! The calibration text: JSON lines (`{"text": ...}`) or an STS CSV (both
//! columns are sentences), split deterministically into the part the
//! statistics come from and a held-out part the accuracy is measured on.

use std::collections::HashSet;
use std::path::Path;

use embedrt_core::{sts, Error, Result};

/// Sentences calibrated over when no size is given (see docs/perf/quantization.md).
pub const DEFAULT_CALIBRATION_SIZE: usize = 512;
/// Every `HELD_OUT_EVERY`-th distinct sentence is held out...
const HELD_OUT_EVERY: usize = 5;
/// ...up to this many: enough for a stable mean cosine, cheap to re-embed
/// once per candidate fallback set.
pub const MAX_HELD_OUT: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationText {
    /// What the statistics are gathered over.
    pub calibration: Vec<String>,
    /// Never calibrated over; the accuracy target is checked on these.
    pub held_out: Vec<String>,
}

/// Reads `path` and splits it: duplicates dropped (STS files repeat
/// sentences), every fifth distinct sentence held out (at most
/// [`MAX_HELD_OUT`]), and `size` of the rest taken evenly across the file
/// (files are often sorted by topic). With fewer than five distinct
/// sentences nothing can be spared: the held-out part is the calibration part.
pub fn read_calibration_text(path: &Path, size: Option<usize>) -> Result<CalibrationText> {
    let size = size.unwrap_or(DEFAULT_CALIBRATION_SIZE);
    if size == 0 {
        return Err(Error::Input(
            "--calibration-size 0: calibrate over at least one sentence".into(),
        ));
    }
    let sentences = read_sentences(path)?;
    let mut seen = HashSet::new();
    let distinct: Vec<String> = sentences
        .into_iter()
        .filter(|s| !s.trim().is_empty() && seen.insert(s.clone()))
        .collect();
    if distinct.is_empty() {
        return Err(Error::Input(format!(
            "{}: no sentences to calibrate on; give JSON lines {{\"text\": \"...\"}} or an STS CSV (sentence1,sentence2,score)",
            path.display()
        )));
    }
    if distinct.len() < HELD_OUT_EVERY {
        return Ok(CalibrationText {
            calibration: distinct.clone(),
            held_out: distinct,
        });
    }
    let mut pool = Vec::new();
    let mut held_out = Vec::new();
    for (i, s) in distinct.into_iter().enumerate() {
        if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 && held_out.len() < MAX_HELD_OUT {
            held_out.push(s);
        } else {
            pool.push(s);
        }
    }
    let calibration = if pool.len() <= size {
        pool
    } else {
        (0..size)
            .map(|k| pool[k * pool.len() / size].clone())
            .collect()
    };
    Ok(CalibrationText {
        calibration,
        held_out,
    })
}

/// Every sentence of the file, in order: both sides of each pair for a
/// `.csv`, else the `text` of each JSON line.
pub fn read_sentences(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Input(format!("calibration file {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Input(format!("{}: not UTF-8 text", path.display())))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        let pairs =
            sts::parse_csv(&text).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        return Ok(pairs
            .into_iter()
            .flat_map(|p| [p.sentence1, p.sentence2])
            .collect());
    }
    #[derive(serde::Deserialize)]
    struct Line {
        text: String,
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!(
                "{}: line {}: expected a JSON object {{\"text\": \"...\"}} (or give an STS .csv): {e}",
                path.display(),
                i + 1
            ))
        })?;
        out.push(parsed.text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_disjoint_and_sized() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let lines: String = (0..100)
            .map(|i| format!("{{\"text\": \"sentence {}\"}}\n", i % 60))
            .collect();
        std::fs::write(&path, lines).unwrap();
        let a = read_calibration_text(&path, Some(20)).unwrap();
        let b = read_calibration_text(&path, Some(20)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.held_out.len(), 12);
        assert_eq!(a.calibration.len(), 20);
        assert!(a.calibration.iter().all(|s| !a.held_out.contains(s)));
    }

    #[test]
    fn empty_and_missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "\n\n").unwrap();
        let e = read_calibration_text(&empty, None).unwrap_err().to_string();
        assert!(e.contains("no sentences"), "{e}");
        let e = read_calibration_text(&dir.path().join("nope.csv"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.csv"), "{e}");
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"txt\": 1}\n").unwrap();
        let e = read_calibration_text(&bad, None).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
