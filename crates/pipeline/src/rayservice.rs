//! Deploy target `kind = "rayservice"`: the `kubectl patch --type merge`
//! body that moves a KubeRay RayService to a new version.
//!
//! `serveConfigV2` is one YAML string, so a merge patch replaces all of it:
//! a patch holding only the new `user_config` would drop the app's
//! autoscaling, its GPU request and every other key, and the changed
//! options would restart the replicas instead of reconfiguring them. So the
//! patch is the RayService's own `serveConfigV2` (`target.manifest`: the
//! manifest as applied, e.g. `kubectl get rayservice NAME -o yaml` or
//! `kubectl kustomize deploy/overlays/eks`) with only this app's deployment
//! `user_config` changed, as the `ray-serve` target changes it
//! ([`ray_serve::new_user_config`]): KubeRay then calls `reconfigure` on the
//! live replicas, with no request dropped.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::deploy::Artifact;
use crate::ray_serve;

/// The merge patch for RayService `name`: `manifest` (YAML, one or more
/// documents) with `app`'s `deployment` pointed at `artifact`, labelled `label`.
pub fn patch(
    manifest: &str,
    name: &str,
    app: &str,
    deployment: &str,
    artifact: &Artifact,
    label: &str,
) -> Result<Value> {
    let service = find_service(manifest, name)?;
    let text = service["spec"]["serveConfigV2"]
        .as_str()
        .with_context(|| format!("RayService {name} has no spec.serveConfigV2"))?;
    let mut serve: Value =
        yaml_serde::from_str(text).context("RayService serveConfigV2 is not valid YAML")?;
    let apps = serve["applications"]
        .as_array_mut()
        .context("serveConfigV2 has no applications list")?;
    let names: Vec<String> = apps
        .iter()
        .filter_map(|a| a["name"].as_str().map(String::from))
        .collect();
    let Some(found) = apps.iter_mut().find(|a| a["name"] == app) else {
        bail!("RayService {name} runs no application {app:?} (it runs {names:?})");
    };
    if !found["deployments"].is_array() {
        found["deployments"] = json!([]);
    }
    let deployments = found["deployments"]
        .as_array_mut()
        .context("a deployments list")?;
    let index = match deployments.iter().position(|d| d["name"] == deployment) {
        Some(i) => i,
        None => {
            deployments.push(json!({ "name": deployment }));
            deployments.len() - 1
        }
    };
    let entry = &mut deployments[index];
    let old = entry.get("user_config").cloned().unwrap_or(json!({}));
    entry["user_config"] = ray_serve::new_user_config(&old, artifact, label);
    let text = yaml_serde::to_string(&serve).context("writing serveConfigV2 as YAML")?;
    Ok(json!({"spec": {"serveConfigV2": text}}))
}

/// The RayService named `name` among the manifest's documents.
fn find_service(manifest: &str, name: &str) -> Result<Value> {
    let mut seen = Vec::new();
    for document in yaml_serde::Deserializer::from_str(manifest) {
        let doc =
            Value::deserialize(document).context("the RayService manifest is not valid YAML")?;
        // `kubectl get -o yaml` of several objects gives one List.
        let items = match doc["kind"].as_str() {
            Some("List") => doc["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![doc],
        };
        for item in items {
            if item["kind"] == "RayService" {
                if item["metadata"]["name"] == name {
                    return Ok(item);
                }
                seen.push(item["metadata"]["name"].clone());
            }
        }
    }
    bail!("the manifest holds no RayService named {name:?} (RayServices in it: {seen:?})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::Engine;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: embedrt}
---
apiVersion: ray.io/v1
kind: RayService
metadata: {name: embedrt}
spec:
  serveConfigV2: |
    applications:
      - name: other
        import_path: x:y
      - name: embedrt
        import_path: embedrt.ray_serve:build_app
        deployments:
          - name: Embedder
            max_ongoing_requests: 64
            ray_actor_options: {num_gpus: 1}
            user_config:
              model: s3://b/models/base/
              device: cuda
              version: "1"
"#;

    fn artifact() -> Artifact {
        Artifact {
            engine: Engine::Model("/cache/versions/v0002/model".into()),
            location: "s3://b/reg/versions/v0002/model/".into(),
            fingerprint: "f".into(),
        }
    }

    fn serve_of(patch: &Value) -> Value {
        yaml_serde::from_str(patch["spec"]["serveConfigV2"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn only_the_user_config_changes() {
        let p = patch(
            MANIFEST,
            "embedrt",
            "embedrt",
            "Embedder",
            &artifact(),
            "v0002-f",
        )
        .unwrap();
        let got = serve_of(&p);
        let service = find_service(MANIFEST, "embedrt").unwrap();
        let mut want: Value =
            yaml_serde::from_str(service["spec"]["serveConfigV2"].as_str().unwrap()).unwrap();
        want["applications"][1]["deployments"][0]["user_config"] = json!({
            "model": "s3://b/reg/versions/v0002/model/", "device": "cuda", "version": "v0002-f"
        });
        assert_eq!(got, want);
    }

    #[test]
    fn the_repositorys_rayservice_keeps_its_gpu_and_autoscaling() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/base/rayservice.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let p = patch(&text, "embedrt", "embedrt", "Embedder", &artifact(), "v2-f").unwrap();
        let dep = &serve_of(&p)["applications"][0]["deployments"][0];
        assert_eq!(dep["ray_actor_options"]["num_gpus"], 1);
        assert!(
            dep["autoscaling_config"]["max_replicas"].is_number(),
            "{dep}"
        );
        assert_eq!(dep["user_config"]["device"], "cuda");
        assert_eq!(
            dep["user_config"]["model"],
            "s3://b/reg/versions/v0002/model/"
        );
    }

    #[test]
    fn a_missing_service_or_app_is_named() {
        let e = patch(MANIFEST, "nope", "embedrt", "Embedder", &artifact(), "v").unwrap_err();
        assert!(
            e.to_string().contains("\"nope\"") && e.to_string().contains("embedrt"),
            "{e}"
        );
        let e = patch(MANIFEST, "embedrt", "emb", "Embedder", &artifact(), "v").unwrap_err();
        assert!(
            e.to_string().contains("\"emb\"") && e.to_string().contains("other"),
            "{e}"
        );
    }
}
