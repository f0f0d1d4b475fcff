use std::path::PathBuf;

/// Every failure embedrt-core reports. Messages are one line and say what to
/// do where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{0}")]
    Model(String),
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model id {id:?}: {message}")]
    Hub { id: String, message: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("{0}")]
    Backend(String),
    /// An engine fault whose kind callers act on (retry elsewhere, shed
    /// load, restart the replica); the message says what failed.
    #[error("{message}")]
    Fault { kind: FaultKind, message: String },
}

/// What kind of engine fault: decides whether the engine can still serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The device ran out of memory; smaller batches may still run.
    OutOfMemory,
    /// The device or its context is gone (illegal address, launch failure,
    /// ECC error, device unavailable): nothing more runs on this engine.
    DeviceLost,
    /// Any other driver or library (cuBLASLt, NVRTC) failure.
    Driver,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::OutOfMemory => "out of memory",
            FaultKind::DeviceLost => "device lost",
            FaultKind::Driver => "driver",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn fault(kind: FaultKind, message: impl Into<String>) -> Self {
        Error::Fault {
            kind,
            message: message.into(),
        }
    }

    /// The fault kind, when this is an engine fault.
    pub fn fault_kind(&self) -> Option<FaultKind> {
        match self {
            Error::Fault { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Reads a whole file, naming the file in the error.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Reads and parses a JSON file, naming the file in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
