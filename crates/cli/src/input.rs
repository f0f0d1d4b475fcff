//! Reading sentences: JSON lines (`{"text": ...}`) or STS CSV.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use embedrt_core::sts;

/// `-` or no path: standard input.
pub fn read_all(path: Option<&Path>) -> Result<String> {
    let mut text = String::new();
    match path {
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input (is it UTF-8?)")?;
        }
        Some(p) if p == Path::new("-") => return read_all(None),
        Some(p) => {
            let file = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
            BufReader::new(file)
                .read_to_string(&mut text)
                .with_context(|| format!("{}: not readable as UTF-8 text", p.display()))?;
        }
    }
    Ok(text)
}

/// Texts from JSON lines; blank lines are skipped, errors name the line.
pub fn parse_json_lines(text: &str, origin: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Line {
        text: String,
    }
    let mut texts = Vec::new();
    for (i, line) in text.as_bytes().lines().enumerate() {
        let line = line.with_context(|| format!("{origin}: line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(l) => texts.push(l.text),
            Err(e) => bail!(
                "{origin}: line {}: expected a JSON object {{\"text\": \"...\"}}: {e}",
                i + 1
            ),
        }
    }
    Ok(texts)
}

/// Sentences of a file: both sides of each pair for `.csv` (STS format),
/// else JSON lines.
pub fn read_sentences(path: &Path) -> Result<Vec<String>> {
    let text = read_all(Some(path))?;
    let origin = path.display().to_string();
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        let pairs = sts::parse_csv(&text).with_context(|| origin.clone())?;
        Ok(pairs
            .into_iter()
            .flat_map(|p| [p.sentence1, p.sentence2])
            .collect())
    } else {
        parse_json_lines(&text, &origin)
    }
}
