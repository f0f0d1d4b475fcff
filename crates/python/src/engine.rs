//! `embedrt.Engine`: one opened engine. Every call that tokenizes or runs
//! the engine releases the GIL, so Python threads overlap their calls.

use std::path::PathBuf;

use embedrt_core::Embedder;
use embedrt_runtime::EngineSpec;
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{core_to_py, to_py};

/// A sentence-embedding model opened on a device.
///
/// Engine(model=None, plan=None, device="auto", precision=None, pooling=None, plan_cache=None)
///
/// ``model`` is a sentence-transformers model directory or a Hugging Face
/// model id; ``plan`` a GPU plan file made by ``embedrt build`` (give one of
/// the two). ``device`` is auto (GPU 0 when usable, else the CPU), cpu,
/// cuda or cuda:N. ``precision`` (fp32, fp16) and ``pooling`` (mean, cls,
/// max, mean_sqrt_len) override the defaults: a model on a GPU runs fp16,
/// from a plan built once and cached in ``plan_cache`` (None: as the CLI,
/// ``$EMBEDRT_PLAN_CACHE``, else ``$XDG_CACHE_HOME/embedrt/plans``, else
/// ``~/.cache/embedrt/plans``; ``"off"``: built in memory each time);
/// ``info()["notes"]`` says which.
///
/// >>> import embedrt
/// >>> engine = embedrt.Engine(model="tests/fixtures/tiny-bert-mean-norm", device="cpu")
/// >>> vectors = engine.embed(["A man is eating food.", "A man rides a horse."])
/// >>> vectors.shape == (2, engine.dimension), str(vectors.dtype)
/// (True, 'float32')
#[pyclass(module = "embedrt._embedrt", frozen)]
pub struct Engine {
    embedder: Embedder,
    notes: Vec<String>,
    device: String,
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (model=None, plan=None, device="auto".to_string(), precision=None, pooling=None, plan_cache=None))]
    fn new(
        py: Python<'_>,
        model: Option<String>,
        plan: Option<PathBuf>,
        device: String,
        precision: Option<String>,
        pooling: Option<String>,
        plan_cache: Option<PathBuf>,
    ) -> PyResult<Self> {
        use embedrt_runtime::plan_cache::{dir_from_env, OFF};
        let plan_cache = match plan_cache {
            None => dir_from_env(|name| std::env::var_os(name)),
            Some(dir) if dir.as_os_str() == OFF => None,
            Some(dir) => Some(dir),
        };
        let spec = EngineSpec {
            model,
            plan,
            device: device.clone(),
            precision,
            pooling,
            // The Python package, like the CLI, takes GPU tuning from EMBEDRT_* variables.
            engine_options: embedrt_runtime::engine_options_from_env().map_err(to_py)?,
            plan_cache,
        };
        let opened = py.detach(|| embedrt_runtime::open(&spec)).map_err(to_py)?;
        Ok(Engine {
            embedder: opened.embedder,
            notes: opened.notes,
            device,
        })
    }

    /// Embeddings of ``texts`` as a float32 array of shape (len(texts), dimension).
    ///
    /// ``normalize`` None follows the model (L2-normalized when it has a
    /// Normalize module). Texts longer than ``max_seq_length`` tokens are
    /// cut; with ``truncate=False`` they raise ValueError naming the text.
    /// ``batch_size`` caps the sequences per engine call (None: the
    /// engine's largest batch); results do not depend on it.
    #[pyo3(signature = (texts, normalize=None, truncate=true, batch_size=None))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        normalize: Option<bool>,
        truncate: bool,
        batch_size: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let dim = self.embedder.backend.hidden_size();
        let normalize = normalize.unwrap_or(self.embedder.model.normalize);
        let batch_size = match batch_size {
            Some(0) => return Err(PyValueError::new_err("batch_size must be at least 1")),
            Some(n) => n,
            None => usize::MAX,
        };
        let flat = py.detach(|| self.embed_flat(&texts, normalize, truncate, batch_size))?;
        let rows = texts.len();
        PyArray1::from_vec(py, flat).reshape([rows, dim])
    }

    /// Token ids of each text, special tokens included, cut at ``max_seq_length``.
    fn tokenize(&self, py: Python<'_>, texts: Vec<String>) -> PyResult<Vec<Vec<u32>>> {
        let encoded = py
            .detach(|| self.embedder.tokenize(&texts))
            .map_err(core_to_py)?;
        Ok(encoded.into_iter().map(|e| e.ids).collect())
    }

    /// What is loaded and where: model, dimension, max_seq_length, device,
    /// precision, pooling, normalize, version, notes.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let model = &self.embedder.model;
        let backend = self.embedder.backend.info();
        let d = PyDict::new(py);
        d.set_item("model", &model.source)?;
        d.set_item("dimension", self.embedder.backend.hidden_size())?;
        d.set_item("max_seq_length", model.max_seq_length)?;
        d.set_item("device", backend.device)?;
        d.set_item("requested_device", &self.device)?;
        d.set_item("precision", backend.precision)?;
        d.set_item("pooling", model.pooling.to_string())?;
        d.set_item("normalize", model.normalize)?;
        d.set_item("max_batch_size", backend.max_batch_size)?;
        d.set_item("max_batch_tokens", backend.max_batch_tokens)?;
        d.set_item("version", env!("CARGO_PKG_VERSION"))?;
        d.set_item("notes", self.notes.clone())?;
        Ok(d)
    }

    /// Raises EngineError (or a subclass) when the engine can no longer run.
    fn health(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.embedder.backend.health())
            .map_err(core_to_py)
    }

    /// Width of one embedding.
    #[getter]
    fn dimension(&self) -> usize {
        self.embedder.backend.hidden_size()
    }

    /// Longest input in tokens; longer texts are cut (or refused).
    #[getter]
    fn max_seq_length(&self) -> usize {
        self.embedder.model.max_seq_length
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine(model={:?}, device={:?})",
            self.embedder.model.source,
            self.embedder.backend.info().device
        )
    }
}

impl Engine {
    /// Tokenize, check lengths, embed; row-major (n, dim). Runs without the GIL.
    fn embed_flat(
        &self,
        texts: &[String],
        normalize: bool,
        truncate: bool,
        batch_size: usize,
    ) -> PyResult<Vec<f32>> {
        let encoded = self.embedder.tokenize(texts).map_err(core_to_py)?;
        let max = self.embedder.model.max_seq_length;
        if !truncate {
            if let Some(i) = encoded
                .iter()
                .position(|e| e.truncated || e.ids.len() > max)
            {
                return Err(PyValueError::new_err(format!(
                    "text {i} is longer than the model's {max} tokens and truncate is False"
                )));
            }
        }
        let ids: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
        let vectors = self
            .embedder
            .embed_ids(&ids, batch_size, normalize, &|_| {})
            .map_err(core_to_py)?;
        Ok(vectors.concat())
    }
}
