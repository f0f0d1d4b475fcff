//! Where `embed` writes its vectors: JSON lines on standard output (or a
//! `.jsonl` file), a `.npy` array, or a `.parquet` table. The format comes
//! from the file's extension. Files are built in memory and written
//! atomically (temp file + rename), so a failed run leaves no half file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::{
    ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use embedrt_core::fsutil::write_atomic;

/// One of the formats `--output` takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// `{"index": i, "embedding": [...]}` per line on standard output.
    Stdout,
    /// The same JSON lines into a file.
    JsonLines(PathBuf),
    /// `float32 [n, dim]`, C order.
    Npy(PathBuf),
    /// Columns `index` (int64), `text` (utf8), `embedding` (fixed-size list of float32).
    Parquet(PathBuf),
}

impl Output {
    pub fn parse(path: Option<&Path>) -> Result<Output> {
        let Some(path) = path.filter(|p| *p != Path::new("-")) else {
            return Ok(Output::Stdout);
        };
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        Ok(match ext.as_deref() {
            Some("npy") => Output::Npy(path.to_path_buf()),
            Some("parquet") => Output::Parquet(path.to_path_buf()),
            Some("jsonl") | Some("json") => Output::JsonLines(path.to_path_buf()),
            _ => bail!(
                "--output {}: unknown format; name the file FILE.parquet, FILE.npy or FILE.jsonl, or give - for JSON lines on standard output",
                path.display()
            ),
        })
    }

    /// Writes the vectors (and, for parquet, their texts).
    pub fn write(&self, texts: &[String], vectors: &[Vec<f32>], dim: usize) -> Result<()> {
        match self {
            Output::Stdout => {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                write_json_lines(&mut out, vectors).context("writing standard output")
            }
            Output::JsonLines(path) => {
                let mut bytes = Vec::new();
                write_json_lines(&mut bytes, vectors)?;
                write_file(path, &bytes)
            }
            Output::Npy(path) => write_file(path, &npy_bytes(vectors, dim)?),
            Output::Parquet(path) => write_file(path, &parquet_bytes(texts, vectors, dim)?),
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_json_lines(out: &mut impl Write, vectors: &[Vec<f32>]) -> Result<()> {
    for (index, embedding) in vectors.iter().enumerate() {
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({"index": index, "embedding": embedding}),
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn npy_bytes(vectors: &[Vec<f32>], dim: usize) -> Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let mut bytes = Vec::with_capacity(128 + vectors.len() * dim * 4);
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[vectors.len() as u64, dim as u64])
        .writer(&mut bytes)
        .begin_nd()?;
    writer.extend(vectors.iter().flatten().copied())?;
    writer.finish()?;
    Ok(bytes)
}

fn parquet_bytes(texts: &[String], vectors: &[Vec<f32>], dim: usize) -> Result<Vec<u8>> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let flat: Float32Array = vectors.iter().flatten().copied().collect();
    let width = i32::try_from(dim).context("embedding width does not fit parquet's list size")?;
    let embedding = FixedSizeListArray::try_new(item.clone(), width, Arc::new(flat), None)?;
    let index: Int64Array = (0..vectors.len() as i64).collect();
    let text = StringArray::from_iter_values(texts);
    let schema = Arc::new(Schema::new(vec![
        Field::new("index", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(item, width), false),
    ]));
    let columns: Vec<ArrayRef> = vec![Arc::new(index), Arc::new(text), Arc::new(embedding)];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_extension() {
        assert_eq!(Output::parse(None).unwrap(), Output::Stdout);
        assert_eq!(Output::parse(Some(Path::new("-"))).unwrap(), Output::Stdout);
        assert_eq!(
            Output::parse(Some(Path::new("a.NPY"))).unwrap(),
            Output::Npy("a.NPY".into())
        );
        assert_eq!(
            Output::parse(Some(Path::new("d/a.parquet"))).unwrap(),
            Output::Parquet("d/a.parquet".into())
        );
        let err = Output::parse(Some(Path::new("a.csv")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown format") && err.contains("a.csv"),
            "{err}"
        );
    }

    #[test]
    fn npy_holds_the_shape_and_the_floats() {
        let bytes = npy_bytes(&[vec![1.0, 2.0], vec![3.0, -4.5]], 2).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(npy.shape(), &[2, 2]);
        assert_eq!(npy.into_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, -4.5]);
    }
}
