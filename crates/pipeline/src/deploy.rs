//! Deploy targets and the canary. `embedrt serve`: `POST /admin/reload
//! {"model"|"plan": PATH}`, then the canary sentences through the live
//! `/embed` must give the new version's vectors (cosine >= canary.min_cosine)
//! and `x-model-version` must end in the new weights' fingerprint (the
//! server names versions `<load counter>-<first 12 hex of the file's sha256>`).
//! Ray Serve: the app's `user_config` through the dashboard's REST API
//! ([`crate::ray_serve`]), labelled `<version>-<fingerprint>`, then the same
//! canary. RayService: the `serveConfigV2` patch is written for `kubectl patch`
//! ([`crate::rayservice`]).
//!
//! Ray replicas run on other machines (pods on EKS): with the registry on an
//! object store they are given the artifact's URI (`s3://.../versions/v0003/
//! model/`), which `embedrt.serve.fetch` downloads; `embedrt serve` is given
//! the local path (it runs beside the pipeline, or shares its volume).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::config::{CanarySection, DeployTarget};
use crate::http;
use crate::ray_serve;
use crate::tools::{cosine, Engine};

/// A version as a target gets it.
pub struct Artifact {
    /// Its files here: the canary's expectation.
    pub engine: Engine,
    /// The first 12 hex digits of its weights' sha256 ([`crate::run::fingerprint`]),
    /// hashed once: targets label the version with it, the canary checks it.
    pub fingerprint: String,
    /// Where a Ray replica loads it from: the registry's URI of the same
    /// files when the registry is remote, else the local path.
    pub location: String,
}

/// Long: a reload answers when the new engine is loaded.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(300);

fn post(url: &str, body: &Value) -> Result<(String, Value)> {
    let a = http::send("POST", url, body, RELOAD_TIMEOUT)?;
    Ok((a.version, a.body))
}

fn ray_target(target: &DeployTarget) -> Option<ray_serve::Target<'_>> {
    match target {
        DeployTarget::RayServe {
            address,
            app,
            url,
            route_prefix,
            deployment,
            timeout_s,
        } => Some(ray_serve::Target {
            address,
            app,
            deployment,
            route_prefix,
            url,
            timeout: Duration::from_secs_f64(*timeout_s),
        }),
        _ => None,
    }
}

/// What a target serves before the switch, for [`restore`]; Null when the
/// target is rolled back by switching it to the fallback version instead.
pub fn snapshot(target: &DeployTarget) -> Result<Value> {
    match ray_target(target) {
        Some(t) => ray_serve::snapshot(&t),
        None => Ok(Value::Null),
    }
}

/// Rolls a target back: Ray Serve gets the `user_config` it had (PUT back),
/// the others are switched to `engine` (the fallback version).
pub fn restore(
    target: &DeployTarget,
    snapshot: &Value,
    artifact: &Artifact,
    version: &str,
    run_dir: &Path,
) -> Result<Value> {
    match ray_target(target) {
        Some(t) if !snapshot.is_null() => ray_serve::restore(&t, snapshot),
        _ => switch(target, artifact, version, run_dir),
    }
}

/// Points a target at a version's artifact, labelled `version`.
pub fn switch(
    target: &DeployTarget,
    artifact: &Artifact,
    version: &str,
    run_dir: &Path,
) -> Result<Value> {
    match target {
        DeployTarget::EmbedrtServe { url } => {
            let body = match &artifact.engine {
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
            manifest,
            deployment,
        } => {
            let bytes = crate::store::read_uri(manifest)?;
            let text = std::str::from_utf8(&bytes)
                .with_context(|| format!("{manifest}: the RayService manifest is not UTF-8"))?;
            let label = format!("{version}-{}", artifact.fingerprint);
            let patch = crate::rayservice::patch(text, name, app, deployment, artifact, &label)
                .with_context(|| format!("{manifest}: patching RayService {name}"))?;
            let path = run_dir.join(format!("rayservice-{name}-patch.json"));
            crate::registry::write_json(&path, &patch)?;
            Ok(
                json!({"patch": path, "apply": format!("kubectl patch rayservice {name} --type merge --patch-file {}", path.display())}),
            )
        }
        DeployTarget::RayServe { .. } => {
            let t = ray_target(target).context("a ray-serve target")?;
            let label = format!("{version}-{}", artifact.fingerprint);
            ray_serve::switch(&t, artifact, &label)
        }
    }
}

/// The canary: the live endpoint against `expected` (the new version's
/// vectors computed locally). Ok(report) or Err(why).
pub fn canary(
    target: &DeployTarget,
    canary: &CanarySection,
    expected: &[Vec<f32>],
    fingerprint: &str,
) -> std::result::Result<Value, String> {
    let endpoint = match (target, ray_target(target)) {
        (DeployTarget::EmbedrtServe { url }, _) => http::join(url, "embed"),
        (_, Some(t)) => t.endpoint("embed"),
        _ => return Ok(json!({"skipped": "no live endpoint for this target kind"})),
    };
    let (version, answer) = post(
        &endpoint,
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
    let report = json!({"endpoint": endpoint, "min_cosine": min, "x_model_version": version, "fingerprint": fingerprint});
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rayservice_switch_writes_the_whole_serve_config_with_the_new_version() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let model = std::path::PathBuf::from(root).join("tests/fixtures/tiny-bert-mean-norm");
        let target = DeployTarget::Rayservice {
            name: "embedrt".into(),
            app: "embedrt".into(),
            manifest: format!("{root}/deploy/base/rayservice.yaml"),
            deployment: "Embedder".into(),
        };
        let artifact = Artifact {
            location: "s3://b/reg/versions/v0002/model/".into(),
            fingerprint: crate::run::fingerprint(&Engine::Model(model.clone())).unwrap(),
            engine: Engine::Model(model.clone()),
        };
        let dir = tempfile::tempdir().unwrap();
        let out = switch(&target, &artifact, "v0002", dir.path()).unwrap();
        let patch: Value =
            serde_json::from_slice(&std::fs::read(out["patch"].as_str().unwrap()).unwrap())
                .unwrap();
        let serve: Value =
            yaml_serde::from_str(patch["spec"]["serveConfigV2"].as_str().unwrap()).unwrap();
        let dep = &serve["applications"][0]["deployments"][0];
        let fp = crate::run::fingerprint(&Engine::Model(model)).unwrap();
        assert_eq!(dep["user_config"]["version"], format!("v0002-{fp}"));
        assert_eq!(
            dep["user_config"]["model"],
            "s3://b/reg/versions/v0002/model/"
        );
        assert_eq!(dep["ray_actor_options"]["num_gpus"], 1, "{dep}");
        // A manifest that is not there is named.
        let missing = DeployTarget::Rayservice {
            name: "embedrt".into(),
            app: "embedrt".into(),
            manifest: format!("{root}/deploy/base/nope.yaml"),
            deployment: "Embedder".into(),
        };
        let e = switch(&missing, &artifact, "v0002", dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("nope.yaml"), "{e:#}");
    }
}
