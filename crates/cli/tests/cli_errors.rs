//! Bad input through the real `embedrt` binary: each case must exit
//! non-zero with exactly one `error: ...` line on stderr that names the
//! problem, and never panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A writable copy of a tiny fixture.
fn fixture_copy(tmp: &tempfile::TempDir) -> PathBuf {
    let dir = tmp.path().join("model");
    copy_dir(&fixture("tiny-bert-mean-norm"), &dir);
    dir
}

fn embedrt(args: &[&str], stdin: &[u8], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_embedrt"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `embed` on one valid line and checks the failure has the agreed shape.
fn expect_error(args: &[&str], stdin: &[u8], envs: &[(&str, &str)], needles: &[&str]) {
    let (code, _, stderr) = embedrt(args, stdin, envs);
    assert_ne!(code, 0, "{args:?} should fail; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want one stderr line, got {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(
            stderr.contains(n),
            "{args:?}: {stderr:?} should mention {n:?}"
        );
    }
}

const ONE_LINE: &[u8] = b"{\"text\": \"hello world\"}\n";

#[test]
fn embed_works_on_a_fixture() {
    let dir = fixture("tiny-bert-mean-norm");
    let (code, stdout, stderr) = embedrt(
        &["embed", "--model", dir.to_str().unwrap()],
        b"{\"text\": \"a\"}\n\n{\"text\": \"b c\"}\n",
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["index"], 1);
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 32);
}

#[test]
fn missing_model_directory() {
    expect_error(
        &["embed", "--model", "/nonexistent/model"],
        ONE_LINE,
        &[],
        &["/nonexistent/model"],
    );
}

#[test]
fn model_id_offline_and_not_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_str().unwrap();
    expect_error(
        &[
            "embed",
            "--model",
            "sentence-transformers/all-mpnet-base-v2",
        ],
        ONE_LINE,
        &[("HF_HUB_OFFLINE", "1"), ("HF_HOME", home)],
        &["sentence-transformers/all-mpnet-base-v2", "cache"],
    );
}

#[test]
fn missing_config_and_unsupported_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy(&tmp);
    let d = dir.to_str().unwrap();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"bert\"", "\"gpt2\""),
    )
    .unwrap();
    expect_error(
        &["embed", "--model", d],
        ONE_LINE,
        &[],
        &["gpt2", "mpnet", "bert"],
    );
    std::fs::write(dir.join("config.json"), b"{not json").unwrap();
    expect_error(
        &["embed", "--model", d],
        ONE_LINE,
        &[],
        &["config.json", "invalid JSON"],
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    expect_error(&["embed", "--model", d], ONE_LINE, &[], &["config.json"]);
}

#[test]
fn corrupt_and_truncated_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy(&tmp);
    let d = dir.to_str().unwrap();
    let weights = dir.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    expect_error(
        &["embed", "--model", d],
        ONE_LINE,
        &[],
        &["model.safetensors", "safetensors"],
    );
    std::fs::write(&weights, b"garbage, not a tensor file").unwrap();
    expect_error(
        &["embed", "--model", d],
        ONE_LINE,
        &[],
        &["model.safetensors"],
    );
}

/// Rewrites the fixture's weights with `edit` applied to the tensor list.
fn rewrite_weights(dir: &Path, edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn missing_tensor_and_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy(&tmp);
    let d = dir.to_str().unwrap();
    let original = std::fs::read(dir.join("model.safetensors")).unwrap();
    rewrite_weights(&dir, |t| {
        t.retain(|(n, _, _)| n != "encoder.layer.1.output.dense.weight")
    });
    expect_error(
        &["embed", "--model", d],
        ONE_LINE,
        &[],
        &["encoder.layer.1.output.dense.weight", "missing"],
    );

    std::fs::write(dir.join("model.safetensors"), &original).unwrap();
    rewrite_weights(&dir, |t| {
        for (n, shape, _) in t.iter_mut() {
            if n == "embeddings.LayerNorm.weight" {
                // Same bytes, other shape: 32 -> 4 x 8.
                *shape = vec![4, 8];
            }
        }
    });
    expect_error(
        &["embed", "--model", d],
        ONE_LINE,
        &[],
        &["embeddings.LayerNorm.weight", "[4, 8]", "[32]"],
    );
}

#[test]
fn only_pytorch_bin_says_convert() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy(&tmp);
    std::fs::rename(dir.join("model.safetensors"), dir.join("pytorch_model.bin")).unwrap();
    expect_error(
        &["embed", "--model", dir.to_str().unwrap()],
        ONE_LINE,
        &[],
        &["pytorch_model.bin", "safetensors"],
    );
}

#[test]
fn malformed_json_line_is_named_by_number() {
    let dir = fixture("tiny-bert-mean-norm");
    let input = b"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": oops}\n";
    expect_error(
        &["embed", "--model", dir.to_str().unwrap()],
        input,
        &[],
        &["line 3"],
    );
    expect_error(
        &["embed", "--model", dir.to_str().unwrap()],
        b"{\"txt\": \"x\"}\n",
        &[],
        &["line 1", "text"],
    );
    expect_error(
        &["embed", "--model", dir.to_str().unwrap()],
        b"\xff\xfe\n",
        &[],
        &["UTF-8"],
    );
}

#[test]
fn unknown_pooling_device_and_input_file() {
    let dir = fixture("tiny-bert-mean-norm");
    let d = dir.to_str().unwrap();
    expect_error(
        &["embed", "--model", d, "--pooling", "median"],
        ONE_LINE,
        &[],
        &["median", "mean_sqrt_len"],
    );
    expect_error(
        &["embed", "--model", d, "--device", "tpu"],
        ONE_LINE,
        &[],
        &["tpu"],
    );
    expect_error(
        &["embed", "--model", d, "--input", "/nonexistent.jsonl"],
        b"",
        &[],
        &["/nonexistent.jsonl"],
    );
}

#[test]
fn bad_sts_file_names_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("sts.csv");
    std::fs::write(&csv, "a,b,1.0\nc,d,not-a-number\n").unwrap();
    let dir = fixture("tiny-bert-mean-norm");
    expect_error(
        &[
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--sts",
            csv.to_str().unwrap(),
        ],
        b"",
        &[],
        &["line 2", "not-a-number"],
    );
}

/// A model id is found in the Hugging Face cache layout
/// (`$HF_HOME/hub/models--org--name/{refs/main,snapshots/REV/...}`) with no network.
#[test]
fn model_id_resolves_from_the_hub_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("hub/models--embedrt-test--tiny-bert");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    copy_dir(
        &fixture("tiny-bert-mean-norm"),
        &repo.join("snapshots").join(rev),
    );
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    let home = tmp.path().to_str().unwrap();
    let envs = [("HF_HUB_OFFLINE", "1"), ("HF_HOME", home)];
    let (code, by_id, stderr) = embedrt(
        &["embed", "--model", "embedrt-test/tiny-bert"],
        ONE_LINE,
        &envs,
    );
    assert_eq!(code, 0, "{stderr}");
    let dir = fixture("tiny-bert-mean-norm");
    let (_, by_dir, _) = embedrt(&["embed", "--model", dir.to_str().unwrap()], ONE_LINE, &[]);
    assert_eq!(by_id, by_dir);
}
