//! Deploy targets and the canary. `embedrt serve`: `POST /admin/reload
//! {"model"|"plan": PATH}`, then the canary sentences through the live
//! `/embed` must give the new version's vectors (cosine >= canary.min_cosine)
//! and `x-model-version` must end in the new weights' fingerprint (the
//! server names versions `<load counter>-<first 12 hex of the file's sha256>`).
//! RayService: the `serveConfigV2` patch is written for `kubectl patch`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::config::{CanarySection, DeployTarget};
use crate::tools::{cosine, Engine};

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build()
}

fn post(url: &str, body: &Value) -> Result<(String, Value)> {
    match agent()
        .post(url)
        .set("content-type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(resp) => {
            let version = resp.header("x-model-version").unwrap_or("").to_string();
            let text = resp.into_string().context("reading the response")?;
            Ok((
                version,
                serde_json::from_str(&text).context("response is not JSON")?,
            ))
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            bail!("{url} answered {code}: {}", text.trim())
        }
        Err(e) => bail!("{url}: {e}"),
    }
}

/// Points a target at an engine. `version` and `fingerprint` label it.
pub fn switch(
    target: &DeployTarget,
    engine: &Engine,
    version: &str,
    run_dir: &Path,
) -> Result<Value> {
    match target {
        DeployTarget::EmbedrtServe { url } => {
            let body = match engine {
                Engine::Model(p) => json!({"model": p}),
                Engine::Plan(p) => json!({"plan": p}),
            };
            let (_, answer) = post(
                &format!("{}/admin/reload", url.trim_end_matches('/')),
                &body,
            )
            .with_context(|| format!("reloading {url}"))?;
            Ok(answer)
        }
        DeployTarget::Rayservice {
            name,
            app,
            import_path,
        } => {
            let (model, plan) = match engine {
                Engine::Model(p) => (p.display().to_string(), Value::Null),
                Engine::Plan(p) => (String::new(), json!(p.display().to_string())),
            };
            let patch = json!({"spec": {"serveConfigV2": serde_yaml_like(&json!({
                "applications": [{
                    "name": app,
                    "import_path": import_path,
                    "deployments": [{"name": "Embedder", "user_config": {"model": model, "plan": plan, "version": version}}]
                }]
            }))}});
            let path = run_dir.join(format!("rayservice-{name}-patch.json"));
            crate::registry::write_json(&path, &patch)?;
            Ok(
                json!({"patch": path, "apply": format!("kubectl patch rayservice {name} --type merge --patch-file {}", path.display())}),
            )
        }
    }
}

/// serveConfigV2 is a YAML string; JSON is valid YAML.
fn serde_yaml_like(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The canary: the live endpoint against `expected` (the new version's
/// vectors computed locally). Ok(report) or Err(why).
pub fn canary(
    target: &DeployTarget,
    canary: &CanarySection,
    expected: &[Vec<f32>],
    fingerprint: &str,
) -> std::result::Result<Value, String> {
    let DeployTarget::EmbedrtServe { url } = target else {
        return Ok(json!({"skipped": "no live endpoint for this target kind"}));
    };
    let (version, answer) = post(
        &format!("{}/embed", url.trim_end_matches('/')),
        &json!({"inputs": canary.sentences, "normalize": true}),
    )
    .map_err(|e| format!("canary request failed: {e:#}"))?;
    let got: Vec<Vec<f32>> =
        serde_json::from_value(answer).map_err(|e| format!("canary answer is not vectors: {e}"))?;
    if got.len() != expected.len() {
        return Err(format!(
            "canary: {} vectors back for {} sentences",
            got.len(),
            expected.len()
        ));
    }
    let mut expected = expected.to_vec();
    if canary.inject_fault {
        // Test hook (canary.inject_fault): the expectation is made wrong.
        for x in expected[0].iter_mut() {
            *x = -*x;
        }
    }
    let min = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| cosine(a, b))
        .fold(f64::INFINITY, f64::min);
    let report = json!({"min_cosine": min, "x_model_version": version, "fingerprint": fingerprint});
    if !version.ends_with(fingerprint) {
        return Err(format!(
            "canary: the endpoint answered as version {version:?}, not the new weights {fingerprint}"
        ));
    }
    if min < canary.min_cosine {
        return Err(format!(
            "canary: the live vectors differ from the new version's (min cosine {min:.6} < canary.min_cosine {})",
            canary.min_cosine
        ));
    }
    Ok(report)
}
