//! The export directory and the model's structure, read back with the same
//! protobuf types. Numerical parity is checked against ONNX Runtime in
//! tests/python/test_onnx.py.

use std::path::{Path, PathBuf};

use embedrt_core::SentenceModel;
use embedrt_onnx::proto::{tensor_proto::DataType, ModelProto};
use embedrt_onnx::{build_model, export_dir, ExportOptions, Precision, MANIFEST_FILE, MODEL_FILE};
use prost::Message;

fn fixture(name: &str) -> SentenceModel {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "../../tests/fixtures", name]
        .iter()
        .collect();
    SentenceModel::load(dir.to_str().unwrap()).unwrap()
}

fn opts(precision: Precision, opset: i64) -> ExportOptions {
    ExportOptions {
        precision,
        opset,
        quant: None,
    }
}

fn read_model(dir: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(dir.join(MODEL_FILE)).unwrap().as_slice()).unwrap()
}

#[test]
fn opsets_outside_17_to_21_are_refused_with_the_reason() {
    let m = fixture("tiny-bert-max");
    let w = m.load_weights().unwrap();
    let err = build_model(&m, &w, Precision::Fp32, 16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("opset 16") && err.contains("LayerNormalization"),
        "{err}"
    );
    let err = build_model(&m, &w, Precision::Fp32, 99)
        .unwrap_err()
        .to_string();
    assert!(err.contains("17 to 21"), "{err}");
    for opset in 17..=21 {
        let bytes = build_model(&m, &w, Precision::Fp32, opset).unwrap();
        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(model.opset_import[0].version, Some(opset));
    }
}

#[test]
fn precision_names_parse_and_others_are_refused() {
    assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::Fp16);
    assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
    let err = "bf16".parse::<Precision>().unwrap_err().to_string();
    assert!(err.contains("bf16") && err.contains("fp32, fp16"), "{err}");
}

#[test]
fn export_writes_model_tokenizer_manifest_and_no_temp_files() {
    let m = fixture("tiny-mpnet-mean-norm");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let report = export_dir(&m, &dir, &opts(Precision::Fp16, 17), &|_| {}).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [MANIFEST_FILE, MODEL_FILE, "tokenizer.json"]);
    assert_eq!(report.manifest.precision, "fp16");
    assert_eq!(report.manifest.max_seq_length, m.max_seq_length);

    let model = read_model(&dir);
    let graph = model.graph.unwrap();
    let meta: Vec<(String, String)> = model
        .metadata_props
        .iter()
        .map(|p| (p.key().to_string(), p.value().to_string()))
        .collect();
    assert!(meta.contains(&("pooling".into(), "mean".into())));
    assert!(meta.contains(&("normalize".into(), "true".into())));
    assert!(meta.contains(&("max_seq_length".into(), m.max_seq_length.to_string())));
    let dtype = |name: &str| {
        graph
            .initializer
            .iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("no initializer {name}"))
            .data_type()
    };
    // Every HF tensor is an initializer under its own name; the fp16 rule
    // keeps LayerNorm parameters and the relative bias in fp32.
    let w = m.load_weights().unwrap();
    for t in w.tensors() {
        let expect = if t.name.contains("LayerNorm") || t.name.contains("relative_attention_bias") {
            DataType::Float
        } else {
            DataType::Float16
        } as i32;
        assert_eq!(dtype(&t.name), expect, "{}", t.name);
    }
}

#[test]
fn a_directory_with_another_model_is_refused_and_the_same_model_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    export_dir(
        &fixture("tiny-bert-max"),
        &dir,
        &opts(Precision::Fp32, 17),
        &|_| {},
    )
    .unwrap();
    let before = std::fs::read(dir.join(MODEL_FILE)).unwrap();
    let err = export_dir(
        &fixture("tiny-bert-mean-norm"),
        &dir,
        &opts(Precision::Fp32, 17),
        &|_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("different model"), "{err}");
    assert_eq!(std::fs::read(dir.join(MODEL_FILE)).unwrap(), before);
    export_dir(
        &fixture("tiny-bert-max"),
        &dir,
        &opts(Precision::Fp32, 18),
        &|_| {},
    )
    .unwrap();
    assert_eq!(read_model(&dir).opset_import[0].version, Some(18));
}

#[test]
fn an_unvouched_model_onnx_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(MODEL_FILE), b"other").unwrap();
    let err = export_dir(
        &fixture("tiny-bert-max"),
        tmp.path(),
        &opts(Precision::Fp32, 17),
        &|_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("without a manifest.json"), "{err}");
    assert_eq!(
        std::fs::read(tmp.path().join(MODEL_FILE)).unwrap(),
        b"other"
    );
}
