//! The runtime's error: a core error, a misuse of the spec, or either with
//! the context it happened in. Display shows one layer; [`Error::message`]
//! joins the whole chain with ": " (what the CLI prints after `error:`).

/// Every failure of opening an engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure of the model, its files or an engine.
    #[error(transparent)]
    Core(#[from] embedrt_core::Error),
    /// The spec itself is wrong (unknown device, conflicting options).
    #[error("{0}")]
    Spec(String),
    /// `source`, which happened while doing `context`.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure it is, for callers that map errors to their own
/// types (Python exceptions, HTTP statuses, retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input or a bad spec: the caller's to fix.
    Input,
    /// A file or directory that is not there or cannot be read.
    NotFound,
    /// The engine failed (out of memory, device lost, driver).
    Engine(Option<embedrt_core::FaultKind>),
}

impl Error {
    pub fn spec(message: impl Into<String>) -> Self {
        Error::Spec(message.into())
    }

    /// Wraps `self` with what was being done.
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The innermost core error, if the chain ends in one.
    pub fn core(&self) -> Option<&embedrt_core::Error> {
        match self {
            Error::Core(e) => Some(e),
            Error::Spec(_) => None,
            Error::Context { source, .. } => source.core(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        use embedrt_core::Error as Core;
        match self.core() {
            None => ErrorKind::Input,
            Some(Core::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Some(Core::Fault { kind, .. }) => ErrorKind::Engine(Some(*kind)),
            Some(Core::Backend(_)) => ErrorKind::Engine(None),
            Some(_) => ErrorKind::Input,
        }
    }

    /// The whole cause chain on one line, joined by ": ", as anyhow's `{:#}`
    /// prints it (so the CLI and the Python package say the same thing).
    pub fn message(&self) -> String {
        chain_message(self)
    }
}

/// `error` and every `source()` below it, joined by ": ", on one line.
pub fn chain_message(error: &dyn std::error::Error) -> String {
    let mut msg = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        next = e.source();
    }
    msg.replace('\n', " ")
}

/// `.context(...)` on results, as anyhow has it.
pub trait ResultExt<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
    fn with_context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}
