//! A day in Parquet: columns `sentence1, sentence2, score` (scored pairs)
//! and/or `anchor, positive` (pairs). With both sets, each row is whichever
//! set it fills. Rows are numbered from 1, like the CSV reader's rows and the
//! validation messages.
//!
//! The parquet crate is built with snappy only (pyarrow's and pandas'
//! default; pure Rust), so a file with another codec is refused up front
//! naming its codec, instead of failing inside the decoder.

use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;

use crate::data::Row;

const SCORED: [&str; 3] = ["sentence1", "sentence2", "score"];
const PAIR: [&str; 2] = ["anchor", "positive"];

pub fn parse(bytes: &[u8]) -> Result<Vec<Row>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(Bytes::copy_from_slice(bytes))
        .context("not a readable Parquet file")?;
    for rg in builder.metadata().row_groups() {
        for col in rg.columns() {
            if !matches!(
                col.compression(),
                Compression::UNCOMPRESSED | Compression::SNAPPY
            ) {
                bail!(
                    "column {} is compressed with {}, a codec this build does not read; \
                     write the file uncompressed or with snappy (pyarrow: compression=\"snappy\")",
                    col.column_path(),
                    codec_name(col.compression())
                );
            }
        }
    }
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let has = |c: &&str| names.iter().any(|n| n == c);
    let scored = SCORED.iter().all(has);
    let pair = PAIR.iter().all(has);
    if !scored && !pair {
        // Name what is missing from the set the file started on (or both).
        let mut missing: Vec<&str> = Vec::new();
        let touched_scored = SCORED.iter().any(has);
        let touched_pair = PAIR.iter().any(has);
        if touched_scored || !touched_pair {
            missing.extend(SCORED.iter().filter(|c| !has(c)));
        }
        if touched_pair || !touched_scored {
            missing.extend(PAIR.iter().filter(|c| !has(c)));
        }
        bail!(
            "missing column(s) {}: a day needs sentence1, sentence2, score and/or anchor, positive (the file has {})",
            missing.join(", "),
            names.join(", ")
        );
    }
    let reader = builder.build().context("reading the Parquet file")?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.context("reading the Parquet file")?;
        read_batch(&batch, scored, pair, &mut rows)?;
    }
    Ok(rows)
}

fn read_batch(batch: &RecordBatch, scored: bool, pair: bool, rows: &mut Vec<Row>) -> Result<()> {
    let col = |name: &str| batch.column_by_name(name).cloned();
    let s1 = col("sentence1").filter(|_| scored);
    let s2 = col("sentence2").filter(|_| scored);
    let sc = col("score").filter(|_| scored);
    let an = col("anchor").filter(|_| pair);
    let po = col("positive").filter(|_| pair);
    for i in 0..batch.num_rows() {
        let n = rows.len() + 1;
        let scored_row = match (&s1, &s2, &sc) {
            (Some(a), Some(b), Some(s)) => {
                let got = (text(a, i, n, "sentence1")?, text(b, i, n, "sentence2")?);
                let score = number(s, i, n)?;
                match (got, score) {
                    ((Some(a), Some(b)), Some(s)) => Some(Row::Scored {
                        sentence1: a,
                        sentence2: b,
                        score: s,
                    }),
                    ((a, b), s) if !pair => {
                        let null = [(a.is_none(), "sentence1"), (b.is_none(), "sentence2")]
                            .into_iter()
                            .chain([(s.is_none(), "score")])
                            .find(|(null, _)| *null)
                            .map(|(_, c)| c)
                            .unwrap_or("score");
                        bail!("row {n}: {null} is null");
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(r) = scored_row {
            rows.push(r);
            continue;
        }
        let (Some(a), Some(p)) = (&an, &po) else {
            bail!("row {n}: sentence1, sentence2 or score is null");
        };
        match (text(a, i, n, "anchor")?, text(p, i, n, "positive")?) {
            (Some(anchor), Some(positive)) => rows.push(Row::Pair { anchor, positive }),
            (None, _) if !scored => bail!("row {n}: anchor is null"),
            (_, None) if !scored => bail!("row {n}: positive is null"),
            _ => bail!(
                "row {n}: neither sentence1, sentence2, score nor anchor, positive are all set"
            ),
        }
    }
    Ok(())
}

/// A string cell (None when null); other column types are an error naming the column.
fn text(col: &ArrayRef, i: usize, n: usize, name: &str) -> Result<Option<String>> {
    if col.is_null(i) {
        return Ok(None);
    }
    let v = if let Some(a) = col.as_string_opt::<i32>() {
        a.value(i)
    } else if let Some(a) = col.as_string_opt::<i64>() {
        a.value(i)
    } else if let Some(a) = col.as_string_view_opt() {
        a.value(i)
    } else {
        bail!(
            "row {n}: column {name} is {}, expected a string",
            col.data_type()
        );
    };
    Ok(Some(v.to_string()))
}

fn number(col: &ArrayRef, i: usize, n: usize) -> Result<Option<f64>> {
    if col.is_null(i) {
        return Ok(None);
    }
    Ok(Some(
        if let Some(a) = col.as_primitive_opt::<Float64Type>() {
            a.value(i)
        } else if let Some(a) = col.as_primitive_opt::<Float32Type>() {
            f64::from(a.value(i))
        } else if let Some(a) = col.as_primitive_opt::<Int64Type>() {
            a.value(i) as f64
        } else if let Some(a) = col.as_primitive_opt::<Int32Type>() {
            f64::from(a.value(i))
        } else {
            bail!(
                "row {n}: column score is {}, expected a number",
                col.data_type()
            );
        },
    ))
}

fn codec_name(c: Compression) -> &'static str {
    match c {
        Compression::UNCOMPRESSED => "none",
        Compression::SNAPPY => "snappy",
        Compression::GZIP(_) => "gzip",
        Compression::LZO => "lzo",
        Compression::BROTLI(_) => "brotli",
        Compression::LZ4 => "lz4",
        Compression::ZSTD(_) => "zstd",
        Compression::LZ4_RAW => "lz4_raw",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{Float64Array, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    fn write(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut out = Vec::new();
        let props = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .build();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    fn strings(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    #[test]
    fn scored_and_pair_rows() {
        let bytes = write(vec![
            ("sentence1", strings(&[Some("a"), None])),
            ("sentence2", strings(&[Some("b"), None])),
            ("score", Arc::new(Float64Array::from(vec![Some(1.5), None]))),
            ("anchor", strings(&[None, Some("x")])),
            ("positive", strings(&[None, Some("y")])),
        ]);
        let rows = parse(&bytes).unwrap();
        assert_eq!(
            rows,
            vec![
                Row::Scored {
                    sentence1: "a".into(),
                    sentence2: "b".into(),
                    score: 1.5
                },
                Row::Pair {
                    anchor: "x".into(),
                    positive: "y".into()
                }
            ]
        );
    }

    #[test]
    fn a_null_names_its_row_and_column() {
        let bytes = write(vec![
            ("sentence1", strings(&[Some("a"), Some("c")])),
            ("sentence2", strings(&[Some("b"), Some("d")])),
            ("score", Arc::new(Float64Array::from(vec![Some(1.0), None]))),
        ]);
        let err = parse(&bytes).unwrap_err().to_string();
        assert_eq!(err, "row 2: score is null");
    }

    #[test]
    fn missing_columns_and_wrong_types_are_named() {
        let bytes = write(vec![
            ("sentence1", strings(&[Some("a")])),
            ("score", Arc::new(Float64Array::from(vec![1.0]))),
        ]);
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.starts_with("missing column(s) sentence2:"), "{err}");
        let bytes = write(vec![
            ("sentence1", strings(&[Some("a")])),
            ("sentence2", strings(&[Some("b")])),
            ("score", strings(&[Some("high")])),
        ]);
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("row 1: column score is Utf8"), "{err}");
    }
}
