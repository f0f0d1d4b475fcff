//! STS Benchmark evaluation: the CSV format of `../shared/data/stsb`
//! (`sentence1,sentence2,score`, no header, RFC 4180 quoting) and
//! Spearman's rank correlation as sentence-transformers reports it.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct StsPair {
    pub sentence1: String,
    pub sentence2: String,
    pub score: f64,
}

/// Parses the CSV; errors name the line.
pub fn parse_csv(text: &str) -> Result<Vec<StsPair>> {
    let mut pairs = Vec::new();
    for (line_no, record) in csv_records(text)? {
        if record.len() == 1 && record[0].trim().is_empty() {
            continue;
        }
        if record.len() != 3 {
            return Err(Error::Input(format!(
                "line {line_no}: expected 3 fields (sentence1,sentence2,score), found {}",
                record.len()
            )));
        }
        let score: f64 = record[2].trim().parse().map_err(|_| {
            Error::Input(format!(
                "line {line_no}: score {:?} is not a number",
                record[2]
            ))
        })?;
        let mut it = record.into_iter();
        pairs.push(StsPair {
            sentence1: it.next().unwrap_or_default(),
            sentence2: it.next().unwrap_or_default(),
            score,
        });
    }
    Ok(pairs)
}

/// Splits RFC 4180 CSV into records, each with the line it starts on.
fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut line = 1;
    let mut start_line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_quotes, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => in_quotes = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') if field.is_empty() => in_quotes = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                fields.push(std::mem::take(&mut field));
                records.push((start_line, std::mem::take(&mut fields)));
                line += 1;
                start_line = line;
            }
            (false, c) => field.push(c),
        }
    }
    if in_quotes {
        return Err(Error::Input(format!(
            "line {start_line}: quoted field is not closed"
        )));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        records.push((start_line, fields));
    }
    Ok(records)
}

/// Ranks with ties given their average rank (as scipy's `rankdata`).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut r = vec![0.0; values.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && values[idx[j + 1]] == values[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// Spearman's rank correlation of two equally long series.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_and_escaped_quotes() {
        let text = "a,b,1.0\n\"x, y\",\"say \"\"hi\"\"\",2.5\r\nlast,one,0\n";
        let pairs = parse_csv(text).unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[1].sentence1, "x, y");
        assert_eq!(pairs[1].sentence2, "say \"hi\"");
        assert_eq!(pairs[1].score, 2.5);
        assert_eq!(pairs[2].sentence1, "last");
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = parse_csv("a,b,1\nc,d\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_csv("a,b,1\nc,d,x\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"x\""), "{err}");
    }

    #[test]
    fn spearman_matches_hand_computed_values() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ties: scipy.stats.spearmanr([1,2,2,3],[1,3,2,4]) = 0.9486832980505138
        let s = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!((s - 0.9486832980505138).abs() < 1e-12, "{s}");
    }
}
