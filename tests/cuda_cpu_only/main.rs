//! embedrt-cuda behaviour that needs no GPU: the plan file format and its
//! errors, weight packing, profiles, the kernel cache's integrity check, and
//! a clear error (never a panic) where CUDA is missing.

use std::path::{Path, PathBuf};

use embedrt_core::SentenceModel;
use embedrt_cuda::build::assemble_plan;
use embedrt_cuda::kernels::verify_entry;
use embedrt_cuda::plan::{check_target, pack_weights, GpuTarget, PLAN_FORMAT_VERSION};
use embedrt_cuda::{CudaEngine, Plan, Precision, Profile};

mod quant_plan;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn model(name: &str) -> SentenceModel {
    SentenceModel::load(&fixture(name).display().to_string()).expect("fixture loads")
}

fn h100() -> GpuTarget {
    GpuTarget {
        name: "NVIDIA H100 80GB HBM3".into(),
        cc_major: 9,
        cc_minor: 0,
    }
}

fn plan_of(name: &str, precision: Precision) -> Plan {
    let m = model(name);
    let w = m.load_weights().expect("weights");
    assemble_plan(
        &m,
        &w,
        precision,
        "1x8:16x64:64x128".parse().unwrap(),
        h100(),
    )
}

fn written(plan: &Plan) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plan");
    plan.write(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (dir, path, bytes)
}

fn read_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.plan");
    std::fs::write(&path, bytes).unwrap();
    match Plan::read(&path) {
        Ok(_) => panic!("a damaged plan was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn plan_round_trips_through_a_file() {
    for name in ["tiny-mpnet-mean-norm", "tiny-bert-max"] {
        let plan = plan_of(name, Precision::Fp16);
        let (_d, path, _) = written(&plan);
        let back = Plan::read(&path).unwrap();
        assert_eq!(back.header, plan.header);
        assert_eq!(back.weights, plan.weights);
        assert_eq!(back.tokenizer_json, plan.tokenizer_json);
        // The tokenizer, pooling and normalization travel in the plan.
        let m = embedrt_cuda::model_from_plan(&back, &path).unwrap();
        let orig = model(name);
        assert_eq!(m.pooling, orig.pooling);
        assert_eq!(m.normalize, orig.normalize);
        assert_eq!(
            m.tokenizer.encode("plans carry the tokenizer").unwrap(),
            orig.tokenizer.encode("plans carry the tokenizer").unwrap()
        );
    }
}

#[test]
fn truncated_plan_is_named_truncated() {
    let (_d, _p, bytes) = written(&plan_of("tiny-mpnet-mean-norm", Precision::Fp32));
    for keep in [bytes.len() - 1, bytes.len() / 2, 3000, 30] {
        let e = read_err(&bytes[..keep]);
        assert!(e.contains("truncated"), "{keep} bytes: {e}");
    }
}

#[test]
fn corrupted_plan_is_named_corrupted() {
    let (_d, _p, bytes) = written(&plan_of("tiny-mpnet-mean-norm", Precision::Fp32));
    for at in [bytes.len() - 100, bytes.len() / 2, 40] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x5a;
        let e = read_err(&bad);
        assert!(e.contains("corrupted"), "byte {at}: {e}");
    }
}

#[test]
fn other_format_version_is_refused_with_both_versions() {
    let (_d, _p, mut bytes) = written(&plan_of("tiny-bert-max", Precision::Fp16));
    let other = PLAN_FORMAT_VERSION + 1;
    bytes[16..20].copy_from_slice(&other.to_le_bytes());
    let e = read_err(&bytes);
    assert!(
        e.contains(&format!("format version {other}"))
            && e.contains(&format!("reads versions 1 to {PLAN_FORMAT_VERSION}"))
            && e.contains("embedrt build"),
        "{e}"
    );
}

#[test]
fn not_a_plan_is_named() {
    let e = read_err(b"{\"text\": \"this is JSON, not a plan\"}\n");
    assert!(e.contains("not an embedrt plan"), "{e}");
}

#[test]
fn other_compute_capability_is_refused() {
    let plan = plan_of("tiny-bert-max", Precision::Fp16);
    let e = check_target(&plan.header, "NVIDIA A100-SXM4-80GB", (8, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("compute capability 9.0") && e.contains("8.0") && e.contains("A100"),
        "{e}"
    );
    assert!(check_target(&plan.header, "NVIDIA H100 PCIe", (9, 0)).is_ok());
}

#[test]
fn fp16_weights_take_half_the_bytes_and_round_correctly() {
    let m = model("tiny-mpnet-mean-norm");
    let w = m.load_weights().unwrap();
    let (t32, b32) = pack_weights(&w, Precision::Fp32);
    let (t16, b16) = pack_weights(&w, Precision::Fp16);
    assert!(b16.len() * 2 <= b32.len(), "{} vs {}", b16.len(), b32.len());
    assert_eq!(t32.len(), t16.len());
    // Q, K, V stacked: the qkv weight's first rows are the query's.
    let q = &w.layers[0].query.weight.data;
    let e16 = t16.iter().find(|t| t.name == "layer.0.qkv.weight").unwrap();
    assert_eq!(e16.shape, vec![3 * q.len() / e16.shape[1], e16.shape[1]]);
    for (i, &v) in q.iter().enumerate().take(64) {
        let o = e16.offset + 2 * i;
        let got = half::f16::from_le_bytes([b16[o], b16[o + 1]]);
        assert_eq!(got, half::f16::from_f32(v), "element {i}");
    }
    let k = &w.layers[0].key.weight.data;
    let e32 = t32.iter().find(|t| t.name == "layer.0.qkv.weight").unwrap();
    let o = e32.offset + 4 * q.len();
    assert_eq!(f32::from_le_bytes(b32[o..o + 4].try_into().unwrap()), k[0]);
}

#[test]
fn profiles_parse_and_bad_ones_say_why() {
    let p: Profile = "1x8:64x128:256x512".parse().unwrap();
    assert_eq!(
        (p.min.batch, p.opt.seq, p.max.tokens()),
        (1, 128, 256 * 512)
    );
    assert_eq!(p.to_string(), "1x8:64x128:256x512");
    assert_eq!(p.capped(256).max.seq, 256);
    for bad in [
        "1x8:64x128",
        "1x8:64x128:32x512",
        "0x8:1x8:1x8",
        "ax8:1x8:1x8",
        "18:1x8:1x8",
    ] {
        let e = bad.parse::<Profile>().unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("MIN:OPT:MAX"), "{bad}: {e}");
    }
}

#[test]
fn kernel_cache_entries_are_checked() {
    let image = b"not really a cubin, but bytes".to_vec();
    let mut entry = image.clone();
    entry.extend_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&image));
    assert_eq!(verify_entry(&entry), Some(image));
    let mut bad = entry.clone();
    bad[3] ^= 1;
    assert_eq!(verify_entry(&bad), None);
    assert_eq!(verify_entry(&entry[..10]), None);
}

#[test]
fn no_cuda_is_an_error_not_a_panic() {
    let plan = plan_of("tiny-bert-max", Precision::Fp32);
    // On a machine with the CUDA libraries the probe passes; whether a GPU
    // is there is for the GPU tests (bench/gpu) to check.
    if let Err(e) = embedrt_cuda::probe::check_libraries() {
        let e = e.to_string();
        assert!(
            e.contains("CUDA is not usable") && e.contains("libcuda.so.1"),
            "{e}"
        );
        let load = CudaEngine::load(&plan, 0, &Default::default())
            .err()
            .expect("no GPU here");
        assert!(load.to_string().contains("CUDA is not usable"), "{load}");
    }
}
