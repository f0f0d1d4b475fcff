//! The HTTP handlers: TEI's `/embed` and `/tokenize`, OpenAI's
//! `/v1/embeddings`, and `/info`, `/health`, `/ready`, `/metrics`,
//! `/admin/reload`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use embedrt_core::pooling::normalize;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{parse_json, ApiError, JsonBody};
use crate::model::{Slot, Target};
use crate::{AppState, VERSION_HEADER};

/// One text or a list of texts.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    fn into_vec(self) -> Vec<String> {
        match self {
            Inputs::One(s) => vec![s],
            Inputs::Many(v) => v,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
pub struct EmbedRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default = "yes")]
    truncate: bool,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    Float,
    Base64,
}

#[derive(Deserialize)]
pub struct OpenAiRequest {
    input: Inputs,
    /// Accepted and echoed back; the server has one model.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
pub struct TokenizeRequest {
    inputs: Inputs,
}

/// What one admitted request holds until it answers: a place among the
/// concurrent requests and the model it runs on.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    slot: Arc<Slot>,
}

fn admit(state: &AppState) -> Result<Admitted, ApiError> {
    let permit = state.permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::overloaded(format!(
            "more than {} concurrent requests; retry later",
            state.options.max_concurrent_requests
        ))
    })?;
    let slot = state.current.get().ok_or_else(ApiError::not_ready)?;
    if !slot.is_serving() {
        return Err(ApiError::no_engine().with_version(&slot.version));
    }
    Ok(Admitted {
        _permit: permit,
        slot,
    })
}

fn check_count(state: &AppState, n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::validation("the input list is empty"));
    }
    if n > state.options.max_client_batch_size {
        return Err(ApiError::too_large(format!(
            "{n} inputs in one request; at most {} are allowed (--max-client-batch-size)",
            state.options.max_client_batch_size
        )));
    }
    Ok(())
}

/// Tokenizes on the blocking pool, off the async runtime. Over-long texts
/// are cut, or refused with 413 when `truncate` is false.
async fn tokenize(
    slot: &Arc<Slot>,
    texts: Vec<String>,
    truncate: bool,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let slot = slot.clone();
    tokio::task::spawn_blocking(move || {
        let max = slot.info.max_seq_len.min(slot.model.max_seq_length);
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let enc = slot
                    .model
                    .tokenizer
                    .encode(text)
                    .map_err(|e| ApiError::validation(format!("input {i}: {e}")))?;
                if (enc.truncated || enc.ids.len() > max) && !truncate {
                    return Err(ApiError::too_large(format!(
                        "input {i} is longer than the model's {max} tokens and \"truncate\" is false"
                    )));
                }
                let mut ids = enc.ids;
                ids.truncate(max);
                Ok(ids)
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::backend(format!("tokenizer worker failed: {e}")))?
}

/// Texts in, pooled vectors (not normalized) and the token count out.
async fn embed_texts(
    slot: &Arc<Slot>,
    texts: Vec<String>,
    truncate: bool,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let seqs = tokenize(slot, texts, truncate).await?;
    let tokens = seqs.iter().map(Vec::len).sum();
    let rows = slot
        .queue
        .submit(seqs)
        .wait()
        .await
        .map_err(ApiError::backend)?;
    Ok((rows, tokens))
}

fn with_version(mut resp: Response, slot: &Slot) -> Response {
    if let Ok(v) = HeaderValue::from_str(&slot.version) {
        resp.headers_mut().insert(VERSION_HEADER, v);
    }
    resp
}

pub async fn embed(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<EmbedRequest>,
) -> Result<Response, ApiError> {
    let texts = req.inputs.into_vec();
    check_count(&state, texts.len())?;
    let run = admit(&state)?;
    let slot = &run.slot;
    let (mut rows, _) = embed_texts(slot, texts, req.truncate)
        .await
        .map_err(|e| e.with_version(&slot.version))?;
    if req.normalize {
        rows.iter_mut().for_each(|r| normalize(r));
    }
    Ok(with_version(Json(rows).into_response(), slot))
}

pub async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<OpenAiRequest>,
) -> Result<Response, ApiError> {
    let texts = req.input.into_vec();
    check_count(&state, texts.len())?;
    let run = admit(&state)?;
    let slot = &run.slot;
    let dims = match req.dimensions {
        None => slot.hidden_size,
        Some(d) if (1..=slot.hidden_size).contains(&d) => d,
        Some(d) => {
            return Err(ApiError::validation(format!(
                "dimensions {d}: must be between 1 and the model's {}",
                slot.hidden_size
            ))
            .with_version(&slot.version))
        }
    };
    let (rows, tokens) = embed_texts(slot, texts, true)
        .await
        .map_err(|e| e.with_version(&slot.version))?;
    let base64 = req.encoding_format == Some(EncodingFormat::Base64);
    let data: Vec<serde_json::Value> = rows
        .into_iter()
        .enumerate()
        .map(|(index, mut row)| {
            // Shortened embeddings are renormalized, as OpenAI's are.
            row.truncate(dims);
            if slot.model.normalize {
                normalize(&mut row);
            }
            let embedding = if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(row)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": req.model.unwrap_or_else(|| slot.name.clone()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok(with_version(Json(body).into_response(), slot))
}

pub async fn tokenize_route(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let texts = req.inputs.into_vec();
    check_count(&state, texts.len())?;
    let run = admit(&state)?;
    let slot = &run.slot;
    let seqs = tokenize(slot, texts, true)
        .await
        .map_err(|e| e.with_version(&slot.version))?;
    let tokenizer = &slot.model.tokenizer;
    let out: Vec<Vec<serde_json::Value>> = seqs
        .iter()
        .map(|ids| {
            ids.iter()
                .map(|&id| json!({"id": id, "text": tokenizer.id_to_token(id)}))
                .collect()
        })
        .collect();
    Ok(with_version(Json(out).into_response(), slot))
}

pub async fn info(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let slot = state.current.get().ok_or_else(ApiError::not_ready)?;
    let limits = slot.queue.limits();
    let o = &state.options;
    let devices: Vec<serde_json::Value> = slot
        .pool
        .statuses()
        .into_iter()
        .map(|r| {
            json!({
                "device": r.label,
                "engine": r.device,
                "state": if r.healthy { "healthy" } else { "failed" },
                "batches": r.batches,
                "failures": u8::from(!r.healthy),
                "error": r.error,
            })
        })
        .collect();
    let body = json!({
        "model_id": slot.name,
        "model_version": slot.version,
        "source": slot.target.to_string(),
        "architecture": format!("{:?}", slot.model.config.architecture),
        "pooling": slot.model.pooling.to_string(),
        "normalize": slot.model.normalize,
        "hidden_size": slot.hidden_size,
        "precision": slot.info.precision,
        "device": slot.info.device,
        "devices": devices,
        "max_input_length": slot.info.max_seq_len.min(slot.model.max_seq_length),
        "max_batch_tokens": limits.max_tokens,
        "max_batch_requests": limits.max_sequences,
        "max_wait_us": limits.max_wait.as_micros() as u64,
        "max_client_batch_size": o.max_client_batch_size,
        "max_concurrent_requests": o.max_concurrent_requests,
        "payload_limit": o.payload_limit,
        "version": env!("CARGO_PKG_VERSION"),
    });
    Ok(with_version(Json(body).into_response(), &slot))
}

/// Alive while a model loads; once one serves, each engine in rotation is
/// health-checked, and when none passes the answer is 503.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if let Some(slot) = state.current.get() {
        let pool = slot.pool.clone();
        let serving = tokio::task::spawn_blocking(move || pool.check_health())
            .await
            .unwrap_or(0);
        if serving == 0 {
            return ApiError::no_engine()
                .with_version(&slot.version)
                .into_response();
        }
    }
    Json(json!({"status": "alive"})).into_response()
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.current.get() {
        Some(slot) if !slot.is_serving() => ApiError::no_engine()
            .with_version(&slot.version)
            .into_response(),
        Some(slot) => with_version(
            Json(json!({"status": "ready", "model_version": slot.version})).into_response(),
            &slot,
        ),
        None => ApiError::not_ready().into_response(),
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let slot = state.current.get();
    let model = slot
        .as_ref()
        .map(|s| (s.version.as_str(), s.name.as_str(), s.counter));
    let memory = slot
        .as_ref()
        .and_then(|s| s.memory_in_use.as_ref())
        .and_then(|f| f());
    let statuses = slot.as_ref().map(|s| s.pool.statuses()).unwrap_or_default();
    let engines: Vec<(&str, bool)> = statuses
        .iter()
        .map(|r| (r.label.as_str(), r.healthy))
        .collect();
    let text = state.metrics.render(model, memory, &engines);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// `POST /admin/reload` with an optional body `{"model": ...}` or
/// `{"plan": ...}`; without one, what is serving now is re-read from disk.
pub async fn reload(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let target = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_json::<Target>(&body)?)
    };
    // A task of its own: a client that hangs up mid-load does not abort
    // the reload it asked for.
    let task = tokio::spawn(async move { crate::reload(&state, target).await });
    let outcome = task
        .await
        .map_err(|e| ApiError::backend(format!("the reload task failed: {e}")))?;
    let (previous, slot) = outcome.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload_failed",
            format!("reload failed, the previous model keeps serving: {e:#}"),
        )
    })?;
    let body = json!({
        "model_id": slot.name,
        "model_version": slot.version,
        "previous_version": previous,
    });
    Ok(with_version(Json(body).into_response(), &slot))
}
