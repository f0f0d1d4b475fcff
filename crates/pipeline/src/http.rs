//! The few HTTP calls the deploy targets and the Ray runner make (plain
//! HTTP on a cluster's internal addresses; ureq without TLS). Every non-2xx
//! answer becomes an error that names the URL, the status and the body.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One answer: its `x-model-version` header (empty when absent) and JSON body.
pub struct Answer {
    pub version: String,
    pub body: Value,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(timeout).build()
}

fn finish(url: &str, result: std::result::Result<ureq::Response, ureq::Error>) -> Result<Answer> {
    match result {
        Ok(resp) => {
            let version = resp.header("x-model-version").unwrap_or("").to_string();
            let text = resp.into_string().context("reading the response")?;
            // Some endpoints (Serve's PUT) answer 200 with an empty body.
            let body = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)
                    .with_context(|| format!("{url}: the answer is not JSON: {:.200}", text))?
            };
            Ok(Answer { version, body })
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            bail!("{url} answered {code}: {:.2000}", text.trim())
        }
        Err(e) => bail!("{url}: {e}"),
    }
}

pub fn get(url: &str, timeout: Duration) -> Result<Answer> {
    finish(url, agent(timeout).get(url).call())
}

pub fn send(method: &str, url: &str, body: &Value, timeout: Duration) -> Result<Answer> {
    finish(
        url,
        agent(timeout)
            .request(method, url)
            .set("content-type", "application/json")
            .send_string(&body.to_string()),
    )
}

/// `base` + `path` with exactly one slash between them.
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}
