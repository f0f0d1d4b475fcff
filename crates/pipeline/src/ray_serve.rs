//! Deploy target `kind = "ray-serve"`: a live Ray Serve application (the
//! embedrt app, `python/embedrt/serve/`) moved to a new version through the
//! dashboard's REST API, the way `serve deploy` does it:
//!
//! 1. `GET /api/serve/applications/`: the running declarative config;
//! 2. only this app's deployment `user_config` changes (`model` or `plan`,
//!    and `version`, the keys `Embedder.reconfigure` reads; every other key
//!    and every other app stay as they are);
//! 3. `PUT /api/serve/applications/` with the whole config (a PUT replaces
//!    every app, so the others must be in it);
//! 4. wait until the app is RUNNING and every replica the REST API lists
//!    answers `/info` with the new version: Serve calls `reconfigure` on the
//!    live replicas, which load the new engine beside the old one and swap,
//!    so no request is dropped. A replica that cannot load the new artifact
//!    keeps serving the old one and reports `reload_error`; that fails the
//!    switch at once instead of waiting for the timeout.
//!
//! The version label is `<registry version>-<fingerprint>`, so the canary's
//! "`x-model-version` ends with the new fingerprint" check is the same as for
//! `embedrt serve`. Rolling back PUTs the user_config read before the switch.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::deploy::Artifact;
use crate::http;
use crate::tools::Engine;

const REST_TIMEOUT: Duration = Duration::from_secs(60);

/// The `[[deploy]] kind = "ray-serve"` fields.
pub struct Target<'a> {
    /// The dashboard (`http://HEAD:8265`).
    pub address: &'a str,
    pub app: &'a str,
    pub deployment: &'a str,
    pub route_prefix: &'a str,
    /// The Serve HTTP endpoint (`http://HEAD:8000`).
    pub url: &'a str,
    pub timeout: Duration,
}

impl Target<'_> {
    /// A path of the app through the live Serve endpoint.
    pub fn endpoint(&self, path: &str) -> String {
        http::join(
            &http::join(self.url, self.route_prefix),
            path.trim_start_matches('/'),
        )
    }

    fn applications_url(&self) -> String {
        http::join(self.address, "api/serve/applications/")
    }

    fn details(&self) -> Result<Value> {
        let url = self.applications_url();
        let details = http::get(&url, REST_TIMEOUT)
            .with_context(|| format!("reading the Ray Serve config from {}", self.address))?
            .body;
        if !details["applications"][self.app].is_object() {
            let names: Vec<&String> = details["applications"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            bail!(
                "Ray Serve at {} runs no application {:?} (it runs {names:?}); deploy the app first (serve deploy python/embedrt/serve/config.yaml)",
                self.address,
                self.app
            );
        }
        Ok(details)
    }
}

/// What the app serves now: its deployment's effective `user_config`.
pub fn snapshot(t: &Target) -> Result<Value> {
    let details = t.details()?;
    let app = &details["applications"][t.app];
    let live = app["route_prefix"].as_str().unwrap_or("");
    if live != t.route_prefix {
        bail!(
            "Ray Serve app {:?} is served under route_prefix {live:?}, the deploy target says {:?}",
            t.app,
            t.route_prefix
        );
    }
    let user_config = current_user_config(app, t.deployment)?;
    Ok(json!({"user_config": user_config}))
}

fn current_user_config(app: &Value, deployment: &str) -> Result<Value> {
    let live = &app["deployments"][deployment];
    if !live.is_object() {
        bail!("the Ray Serve app has no deployment {deployment:?}");
    }
    // The effective config (code defaults merged with the file's overrides).
    let uc = &live["deployment_config"]["user_config"];
    Ok(if uc.is_object() {
        uc.clone()
    } else {
        json!({})
    })
}

/// The new `user_config`: the old one with `model`/`plan` and `version` replaced.
pub fn new_user_config(old: &Value, artifact: &Artifact, label: &str) -> Value {
    let mut uc = old.as_object().cloned().unwrap_or_default();
    match artifact.engine {
        Engine::Model(_) => {
            uc.insert("model".into(), json!(artifact.location));
            uc.remove("plan");
        }
        Engine::Plan(_) => {
            uc.insert("plan".into(), json!(artifact.location));
            uc.remove("model");
            // A plan runs on a GPU: a CPU device left from a CPU version would refuse it.
            if uc.get("device").and_then(Value::as_str) == Some("cpu") {
                uc.remove("device");
            }
        }
    }
    uc.insert("version".into(), json!(label));
    Value::Object(uc)
}

/// The declarative config to PUT: every app's submitted config, this app's
/// deployment with `user_config` replaced.
pub fn put_body(
    details: &Value,
    app: &str,
    deployment: &str,
    user_config: &Value,
) -> Result<Value> {
    let mut apps = Vec::new();
    let listed = details["applications"]
        .as_object()
        .context("the Ray Serve config lists no applications")?;
    for (name, a) in listed {
        let mut config = a["deployed_app_config"].clone();
        if !config.is_object() {
            // An app made with serve.run (imperative) has no declarative config;
            // a PUT without it would delete it.
            bail!(
                "Ray Serve app {name:?} was not deployed from a config file (serve.run); the REST API can only change declaratively deployed apps"
            );
        }
        if name == app {
            let deployments = config
                .as_object_mut()
                .context("deployed_app_config is not an object")?
                .entry("deployments")
                .or_insert_with(|| json!([]));
            let list = deployments
                .as_array_mut()
                .context("deployed_app_config.deployments is not a list")?;
            match list.iter_mut().find(|d| d["name"] == json!(deployment)) {
                Some(d) => d["user_config"] = user_config.clone(),
                None => list.push(json!({"name": deployment, "user_config": user_config})),
            }
        }
        apps.push(config);
    }
    let mut body = Map::new();
    for key in [
        "proxy_location",
        "http_options",
        "grpc_options",
        "target_capacity",
    ] {
        if !details[key].is_null() {
            body.insert(key.into(), details[key].clone());
        }
    }
    body.insert("applications".into(), json!(apps));
    Ok(Value::Object(body))
}

/// PUTs `user_config` for the app and waits until it serves `wait_for`.
pub fn apply(t: &Target, user_config: &Value) -> Result<Value> {
    let details = t.details()?;
    let body = put_body(&details, t.app, t.deployment, user_config)?;
    http::send("PUT", &t.applications_url(), &body, REST_TIMEOUT)
        .with_context(|| format!("PUT {}", t.applications_url()))?;
    // The app str()s a YAML number (`version: 1`); compare the same way.
    let version = match &user_config["version"] {
        Value::Null => None,
        Value::String(v) => Some(v.clone()),
        other => Some(other.to_string()),
    };
    let started = Instant::now();
    let replicas = wait_serving(t, version.as_deref())?;
    Ok(json!({
        "user_config": user_config,
        "replicas": replicas,
        "switch_seconds": started.elapsed().as_secs_f64(),
    }))
}

/// Points the app at `artifact`, labelled `label`; returns the switch report.
pub fn switch(t: &Target, artifact: &Artifact, label: &str) -> Result<Value> {
    let details = t.details()?;
    let old = current_user_config(&details["applications"][t.app], t.deployment)?;
    apply(t, &new_user_config(&old, artifact, label))
}

/// Puts back what `snapshot` read.
pub fn restore(t: &Target, snapshot: &Value) -> Result<Value> {
    apply(t, &snapshot["user_config"])
}

/// Until the app is RUNNING and each of its replicas has answered `/info`
/// as `version` (any version when None). The replica ids seen.
fn wait_serving(t: &Target, version: Option<&str>) -> Result<Vec<String>> {
    let deadline = Instant::now() + t.timeout;
    let mut seen: HashSet<String> = HashSet::new();
    let mut last = String::from("nothing read yet");
    while Instant::now() < deadline {
        match poll(t, version, &mut seen) {
            Ok(Some(replicas)) => return Ok(replicas),
            Ok(None) => {}
            Err(Poll::Fatal(e)) => return Err(e),
            Err(Poll::NotYet(why)) => last = why,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "Ray Serve app {:?} did not serve version {} on every replica within {:.0}s (last: {last})",
        t.app,
        version.unwrap_or("(any)"),
        t.timeout.as_secs_f64()
    )
}

enum Poll {
    /// Keep waiting (the reason is reported if the wait times out).
    NotYet(String),
    Fatal(anyhow::Error),
}

fn poll(
    t: &Target,
    version: Option<&str>,
    seen: &mut HashSet<String>,
) -> std::result::Result<Option<Vec<String>>, Poll> {
    let details = t.details().map_err(|e| Poll::NotYet(format!("{e:#}")))?;
    let app = &details["applications"][t.app];
    let status = app["status"].as_str().unwrap_or("");
    // UNHEALTHY can pass (a replica being replaced); DEPLOY_FAILED does not.
    if status == "DEPLOY_FAILED" {
        return Err(Poll::Fatal(anyhow::anyhow!(
            "Ray Serve app {:?} is {status}: {}",
            t.app,
            app["message"].as_str().unwrap_or("")
        )));
    }
    let dep = &app["deployments"][t.deployment];
    let replicas: Vec<String> = dep["replicas"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["state"] == json!("RUNNING"))
                .filter_map(|r| r["replica_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let info = http::get(&t.endpoint("info"), REST_TIMEOUT)
        .map_err(|e| Poll::NotYet(format!("{e:#}")))?
        .body;
    let answered = info["model_version"].as_str().unwrap_or("");
    let replica = info["replica"].as_str().unwrap_or("").to_string();
    if version.is_none_or(|v| v == answered) {
        seen.insert(replica.clone());
    } else if status == "RUNNING" && dep["status"] == json!("HEALTHY") {
        // Serve has reconfigured every replica; one still on another version
        // could not load the new one (the app keeps the old engine then).
        if let Some(err) = info["reload_error"].as_str() {
            return Err(Poll::Fatal(anyhow::anyhow!(
                "replica {replica} of Ray Serve app {:?} could not load version {}: {err}",
                t.app,
                version.unwrap_or("")
            )));
        }
    }
    if status != "RUNNING" || dep["status"] != json!("HEALTHY") || replicas.is_empty() {
        return Err(Poll::NotYet(format!(
            "app {status}, deployment {}",
            dep["status"].as_str().unwrap_or("missing")
        )));
    }
    let missing: Vec<&String> = replicas.iter().filter(|r| !seen.contains(*r)).collect();
    if missing.is_empty() {
        return Ok(Some(replicas));
    }
    Err(Poll::NotYet(format!(
        "replicas {missing:?} not seen answering the new version yet (last answer {answered:?} from {replica:?})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details() -> Value {
        json!({
            "proxy_location": "EveryNode",
            "http_options": {"host": "127.0.0.1", "port": 8000},
            "grpc_options": {"port": 9000},
            "target_capacity": null,
            "applications": {
                "embedrt": {
                    "route_prefix": "/",
                    "deployed_app_config": {
                        "name": "embedrt", "route_prefix": "/",
                        "import_path": "embedrt.ray_serve:build_app",
                        "args": {"model": "/m1"},
                        "deployments": [{"name": "Embedder", "max_ongoing_requests": 64,
                            "user_config": {"model": "/m1", "device": "cpu", "version": "1"}}]
                    },
                    "deployments": {"Embedder": {"deployment_config": {
                        "user_config": {"model": "/m1", "device": "cpu", "version": "1"}}}}
                },
                "other": {"deployed_app_config": {"name": "other", "import_path": "x:y"}}
            }
        })
    }

    fn artifact(engine: Engine) -> Artifact {
        let location = match &engine {
            Engine::Model(p) | Engine::Plan(p) => p.display().to_string(),
        };
        Artifact {
            engine,
            location,
            fingerprint: "f".into(),
        }
    }

    #[test]
    fn a_replica_gets_the_artifacts_uri() {
        let old = json!({"model": "/m1", "version": "1"});
        let a = Artifact {
            engine: Engine::Model("/cache/versions/v0002/model".into()),
            location: "s3://b/reg/versions/v0002/model/".into(),
            fingerprint: "f".into(),
        };
        assert_eq!(
            new_user_config(&old, &a, "v0002-f")["model"],
            "s3://b/reg/versions/v0002/model/"
        );
    }

    #[test]
    fn only_this_apps_user_config_changes() {
        let d = details();
        let old = current_user_config(&d["applications"]["embedrt"], "Embedder").unwrap();
        let uc = new_user_config(&old, &artifact(Engine::Model("/m2".into())), "v0002-abc");
        assert_eq!(
            uc,
            json!({"model": "/m2", "device": "cpu", "version": "v0002-abc"})
        );
        let body = put_body(&d, "embedrt", "Embedder", &uc).unwrap();
        assert!(body.get("target_capacity").is_none());
        assert_eq!(body["http_options"]["port"], 8000);
        let apps = body["applications"].as_array().unwrap();
        assert_eq!(apps.len(), 2);
        let mine = apps.iter().find(|a| a["name"] == "embedrt").unwrap();
        assert_eq!(mine["deployments"][0]["user_config"], uc);
        assert_eq!(mine["deployments"][0]["max_ongoing_requests"], 64);
        assert_eq!(mine["args"]["model"], "/m1");
        let other = apps.iter().find(|a| a["name"] == "other").unwrap();
        assert_eq!(other, &d["applications"]["other"]["deployed_app_config"]);
    }

    #[test]
    fn a_plan_replaces_the_model_and_a_cpu_device() {
        let old =
            json!({"model": "/m1", "device": "cpu", "version": "1", "max_batch_tokens": 4096});
        let uc = new_user_config(&old, &artifact(Engine::Plan("/p.plan".into())), "v3-f");
        assert_eq!(
            uc,
            json!({"plan": "/p.plan", "version": "v3-f", "max_batch_tokens": 4096})
        );
    }

    #[test]
    fn an_unlisted_deployment_is_added_and_an_imperative_app_refused() {
        let mut d = details();
        d["applications"]["embedrt"]["deployed_app_config"]["deployments"] = json!([]);
        let body = put_body(&d, "embedrt", "Embedder", &json!({"model": "/m"})).unwrap();
        let mine = &body["applications"].as_array().unwrap()[0];
        assert_eq!(
            mine["deployments"],
            json!([{"name": "Embedder", "user_config": {"model": "/m"}}])
        );
        d["applications"]["other"]["deployed_app_config"] = Value::Null;
        let err = put_body(&d, "embedrt", "Embedder", &json!({})).unwrap_err();
        assert!(err.to_string().contains("\"other\""), "{err}");
    }

    #[test]
    fn endpoints_join_the_route_prefix() {
        let t = Target {
            address: "http://h:8265",
            app: "a",
            deployment: "Embedder",
            route_prefix: "/",
            url: "http://h:8000/",
            timeout: Duration::from_secs(1),
        };
        assert_eq!(t.endpoint("/embed"), "http://h:8000/embed");
        let t = Target {
            route_prefix: "/emb",
            ..t
        };
        assert_eq!(t.endpoint("info"), "http://h:8000/emb/info");
    }
}
