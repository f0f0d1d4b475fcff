//! embedrt-server: the HTTP embedding server behind `embedrt serve`.
//!
//! Three layers, after text-embeddings-inference's router/queue/backend
//! split: the HTTP layer ([`routes`], [`error`]: axum handlers, limits,
//! error mapping), the queue and batcher ([`queue`]: one thread per loaded
//! model forming token-budget batches and calling the blocking engine), and
//! the engine itself (any `Arc<dyn Backend>`). [`model`] holds the loaded
//! models and switches between them on reload.

pub mod error;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod queue;
mod routes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

pub use error::ApiError;
pub use metrics::Metrics;
pub use model::{fingerprint_file, BatchSettings, LoadedModel, Loader, Target};
pub use pool::Engine;

use model::{Current, Slot};

/// The response header naming the model version that answered.
pub const VERSION_HEADER: &str = "x-model-version";

/// Everything `embedrt serve` can be told.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub batch: BatchSettings,
    /// Requests being answered at once; more get 429.
    pub max_concurrent_requests: usize,
    /// Inputs in one request; more get 413.
    pub max_client_batch_size: usize,
    /// Bytes of one request body; more get 413.
    pub payload_limit: usize,
    /// When set, every route but `/health` and `/ready` wants
    /// `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

pub struct AppState {
    options: Options,
    current: Current,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    loader: Loader,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    loads: AtomicU64,
}

/// Loads `target` beside whatever is serving, warms it up, then switches
/// new requests to it. The old slot is freed when its last request ends.
/// Without a target, what is serving now is re-read from disk.
async fn reload(
    state: &Arc<AppState>,
    target: Option<Target>,
) -> Result<(Option<String>, Arc<Slot>)> {
    let _one_at_a_time = state.reload_lock.lock().await;
    let target = match target.or_else(|| state.current.get().map(|s| s.target.clone())) {
        Some(t) => t,
        None => anyhow::bail!("no model is loaded yet and the request names none"),
    };
    let counter = state.loads.load(Ordering::Acquire) + 1;
    let loader = state.loader.clone();
    let settings = state.options.batch;
    let metrics = state.metrics.clone();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let loaded = loader(&target).with_context(|| format!("loading {target}"))?;
        Slot::start(loaded, target, counter, settings, metrics)
    })
    .await
    .context("the loading thread failed");
    let slot = match result {
        Ok(Ok(slot)) => Arc::new(slot),
        Ok(Err(e)) | Err(e) => {
            state.metrics.reload_done(false);
            return Err(e);
        }
    };
    state.loads.store(counter, Ordering::Release);
    let previous = state
        .current
        .replace(slot.clone())
        .map(|s| s.version.clone());
    state.metrics.reload_done(true);
    eprintln!(
        "embedrt serve: model version {} ({}) serving after {:.1}s{}",
        slot.version,
        slot.target,
        started.elapsed().as_secs_f64(),
        previous
            .as_ref()
            .map(|p| format!("; version {p} finishes its in-flight requests"))
            .unwrap_or_default()
    );
    Ok((previous, slot))
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        // TEI serves its model's main route at `/` too (huggingface_hub's
        // InferenceClient posts there).
        .route("/", post(routes::embed))
        .route("/embed", post(routes::embed))
        .route("/v1/embeddings", post(routes::openai_embeddings))
        .route("/embeddings", post(routes::openai_embeddings))
        .route("/tokenize", post(routes::tokenize_route))
        .route("/info", get(routes::info))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .route("/admin/reload", post(routes::reload))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            around_request,
        ))
        .layer(DefaultBodyLimit::max(state.options.payload_limit))
        .with_state(state)
}

fn authorized(state: &AppState, req: &Request) -> bool {
    let Some(key) = &state.options.api_key else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Around every request: the API key, the latency metric, the version
/// header, and a JSON body for errors axum itself answers (405, ...).
async fn around_request(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let open = route == "/health" || route == "/ready";
    let mut resp = if open || authorized(&state, &req) {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (send Authorization: Bearer <key>)",
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
        let headers = resp.headers().clone();
        let error_type = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            s if s.is_server_error() => "server",
            _ => "bad_request",
        };
        resp = ApiError::new(status, error_type, format!("{reason}: {route}")).into_response();
        for name in [header::ALLOW, header::RETRY_AFTER] {
            if let Some(v) = headers.get(&name) {
                resp.headers_mut().insert(name, v.clone());
            }
        }
    }
    if !resp.headers().contains_key(VERSION_HEADER) {
        if let Some(v) = state
            .current
            .get()
            .and_then(|s| HeaderValue::from_str(&s.version).ok())
        {
            resp.headers_mut().insert(VERSION_HEADER, v);
        }
    }
    state
        .metrics
        .request_done(&route, status.as_u16(), start.elapsed());
    resp
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = ctrl_c => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// SIGHUP reloads what is serving from disk.
fn reload_on_sighup(state: Arc<AppState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = reload(&state, None).await {
                let msg = format!("{e:#}").replace('\n', " ");
                eprintln!("embedrt serve: reload failed, the previous model keeps serving: {msg}");
            }
        }
    });
}

/// Runs the server until SIGTERM (then finishes in-flight requests and
/// returns `Ok`) or until the first model fails to load (then `Err`).
pub fn run(options: Options, initial: Target, loader: Loader) -> Result<()> {
    // Tokenization runs on the blocking pool: bound it near the core count
    // so a burst of requests queues there instead of spawning hundreds of
    // threads that fight the engine for the cores.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2 * cores + 2)
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(options, initial, loader));
    // A model still loading on the blocking pool must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(options: Options, initial: Target, loader: Loader) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", options.host, options.port))?;
    serve_on(listener, options, initial, loader, true, async {
        stop_signal().await;
        eprintln!("embedrt serve: stopping; finishing in-flight requests");
    })
    .await
}

/// Serves on `listener` until `stop` resolves (then finishes in-flight
/// requests and returns `Ok`) or the first model fails to load (`Err`).
/// `signals`: SIGHUP reloads. Tests run a server in-process through this.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    options: Options,
    initial: Target,
    loader: Loader,
    signals: bool,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr: SocketAddr = listener.local_addr().context("the listening address")?;
    eprintln!("embedrt serve: listening on http://{addr} (loading {initial})");
    let state = Arc::new(AppState {
        permits: Arc::new(Semaphore::new(options.max_concurrent_requests.max(1))),
        options,
        current: Current::default(),
        metrics: Arc::new(Metrics::new()),
        loader,
        reload_lock: tokio::sync::Mutex::new(()),
        loads: AtomicU64::new(0),
    });

    // The first load runs while the server already answers /health (and
    // /ready with 503); if it fails, the server stops with its error.
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let state = state.clone();
        let failure = failure.clone();
        tokio::spawn(async move {
            if let Err(e) = reload(&state, Some(initial)).await {
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                let _ = failed_tx.send(());
            }
        });
    }
    if signals {
        reload_on_sighup(state.clone());
    }

    let shutdown = async move {
        tokio::select! {
            _ = stop => {}
            Ok(()) = failed_rx => {}
        }
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    eprintln!("embedrt serve: stopped");
    Ok(())
}
