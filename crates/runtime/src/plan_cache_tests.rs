//! The plan cache without a GPU: plans are assembled on the CPU from the
//! tiny fixture models, with a made-up GPU identity.

use std::cell::Cell;
use std::ffi::OsString;

use embedrt_cuda::build::assemble_plan;

use super::*;

fn fixture(name: &str) -> SentenceModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    SentenceModel::load(dir.join(name).to_str().unwrap()).unwrap()
}

fn h200() -> GpuIdentity {
    GpuIdentity {
        target: GpuTarget {
            name: "NVIDIA H200".into(),
            cc_major: 9,
            cc_minor: 0,
        },
        driver_version: 13000,
        cublaslt_version: 130_100,
    }
}

fn profile() -> Profile {
    Profile::SERVING.parse().unwrap()
}

fn plan_for(model: &SentenceModel, gpu: &GpuIdentity) -> Plan {
    let weights = model.load_weights().unwrap();
    let mut plan = assemble_plan(
        model,
        &weights,
        Precision::Fp16,
        profile(),
        gpu.target.clone(),
    );
    plan.header.cublaslt_version = gpu.cublaslt_version;
    plan
}

fn key(digest: &str, gpu: &GpuIdentity, precision: Precision, profile: &Profile) -> String {
    cache_key(&KeyParts {
        model_digest: digest,
        gpu,
        precision,
        profile,
        tuned: true,
    })
}

#[test]
fn the_directory_follows_embedrt_plan_cache_then_xdg_then_home() {
    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }
    let all = [
        ("EMBEDRT_PLAN_CACHE", "/srv/plans"),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/home/u"),
    ];
    assert_eq!(dir_from_env(env(&all)), Some("/srv/plans".into()));
    let xdg = [("XDG_CACHE_HOME", "/x"), ("HOME", "/home/u")];
    assert_eq!(dir_from_env(env(&xdg)), Some("/x/embedrt/plans".into()));
    // A relative or empty XDG_CACHE_HOME is ignored (XDG spec); so is an empty override.
    let rel = [
        ("EMBEDRT_PLAN_CACHE", ""),
        ("XDG_CACHE_HOME", "rel"),
        ("HOME", "/home/u"),
    ];
    assert_eq!(
        dir_from_env(env(&rel)),
        Some("/home/u/.cache/embedrt/plans".into())
    );
    let off = [("EMBEDRT_PLAN_CACHE", "off"), ("HOME", "/home/u")];
    assert_eq!(dir_from_env(env(&off)), None);
    assert_eq!(dir_from_env(env(&[])), None);
}

#[test]
fn the_key_changes_with_the_model_the_gpu_the_precision_and_the_profile() {
    let bert = model_digest(&fixture("tiny-bert-mean-norm")).unwrap();
    let mpnet = model_digest(&fixture("tiny-mpnet-mean-norm")).unwrap();
    assert_eq!(bert.len(), 64);
    assert_ne!(bert, mpnet);
    // Same content, same digest; pooling is not part of it (set at load).
    let mut cls = fixture("tiny-bert-mean-norm");
    cls.pooling = embedrt_core::PoolingMode::Cls;
    assert_eq!(model_digest(&cls).unwrap(), bert);
    let mut shorter = fixture("tiny-bert-mean-norm");
    shorter.max_seq_length -= 1;
    assert_ne!(model_digest(&shorter).unwrap(), bert);

    let gpu = h200();
    let p = profile();
    let base = key(&bert, &gpu, Precision::Fp16, &p);
    assert_eq!(base, key(&bert, &gpu, Precision::Fp16, &p), "deterministic");
    let mut variants = vec![
        key(&mpnet, &gpu, Precision::Fp16, &p),
        key(&bert, &gpu, Precision::Fp32, &p),
        key(
            &bert,
            &gpu,
            Precision::Fp16,
            &p.with_max_tokens(16384).unwrap(),
        ),
        cache_key(&KeyParts {
            model_digest: &bert,
            gpu: &gpu,
            precision: Precision::Fp16,
            profile: &p,
            tuned: false,
        }),
    ];
    for change in [
        |g: &mut GpuIdentity| g.target.name = "NVIDIA H100".into(),
        |g: &mut GpuIdentity| g.target.cc_minor = 1,
        |g: &mut GpuIdentity| g.driver_version = 13010,
        |g: &mut GpuIdentity| g.cublaslt_version += 1,
    ] {
        let mut other = h200();
        change(&mut other);
        variants.push(key(&bert, &other, Precision::Fp16, &p));
    }
    for v in &variants {
        assert_ne!(*v, base);
    }
    let path = plan_path(Path::new("/c"), &base, Precision::Fp16, &gpu.target);
    assert_eq!(
        path,
        Path::new(&format!("/c/fp16-sm90-{}.plan", &base[..32]))
    );
}

#[test]
fn a_missing_weights_file_is_an_error_naming_it() {
    let mut model = fixture("tiny-bert-mean-norm");
    model.dir = model.dir.join("nowhere");
    let err = model_digest(&model).unwrap_err().message();
    assert!(err.contains("model.safetensors"), "{err}");
}

/// Runs [`load_or_build`] as the runtime does, counting builds.
fn open_cached(
    path: &Path,
    model: &SentenceModel,
    gpu: &GpuIdentity,
    builds: &Cell<usize>,
) -> (Plan, Outcome) {
    let p = profile();
    load_or_build(
        path,
        |plan| check_cached(plan, model, Precision::Fp16, &p, gpu),
        || {
            builds.set(builds.get() + 1);
            Ok(plan_for(model, gpu))
        },
    )
    .unwrap()
}

#[test]
fn the_second_start_reads_the_cache_and_a_bad_file_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    // The directory does not exist yet: the first store creates it.
    let path = dir.path().join("embedrt/plans/fp16-sm90-k.plan");
    let model = fixture("tiny-bert-mean-norm");
    let gpu = h200();
    let builds = Cell::new(0);

    let (first, outcome) = open_cached(&path, &model, &gpu, &builds);
    assert_eq!((builds.get(), &outcome.source), (1, &Source::Built));
    assert_eq!(outcome.stored, Ok(()));
    let (second, outcome) = open_cached(&path, &model, &gpu, &builds);
    assert_eq!((builds.get(), &outcome.source), (1, &Source::Cached));
    assert_eq!(second.weights, first.weights);
    assert_eq!(second.header, first.header);
    // Nothing but the plan is left in the directory (no temp files).
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("fp16-sm90-k.plan")]);

    // Truncated (a crash of a writer without the rename would leave no
    // such file, but a disk can): rebuilt and replaced.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (_, outcome) = open_cached(&path, &model, &gpu, &builds);
    assert_eq!(builds.get(), 2);
    match &outcome.source {
        Source::Rebuilt(why) => assert!(why.contains("truncated"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // One flipped byte: the checksum catches it.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    std::fs::write(&path, &flipped).unwrap();
    let (_, outcome) = open_cached(&path, &model, &gpu, &builds);
    assert_eq!(builds.get(), 3);
    assert!(matches!(&outcome.source, Source::Rebuilt(w) if w.contains("corrupted")));

    // Not a plan at all.
    std::fs::write(&path, b"hello").unwrap();
    let (_, outcome) = open_cached(&path, &model, &gpu, &builds);
    assert_eq!(builds.get(), 4);
    assert!(matches!(outcome.source, Source::Rebuilt(_)));
    let (_, outcome) = open_cached(&path, &model, &gpu, &builds);
    assert_eq!((builds.get(), outcome.source), (4, Source::Cached));
}

#[test]
fn a_plan_for_another_gpu_or_model_under_the_name_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.plan");
    let model = fixture("tiny-bert-mean-norm");
    let builds = Cell::new(0);
    let mut h100 = h200();
    h100.target.name = "NVIDIA H100".into();
    plan_for(&model, &h100).write(&path).unwrap();
    let (plan, outcome) = open_cached(&path, &model, &h200(), &builds);
    assert_eq!(builds.get(), 1);
    assert!(matches!(&outcome.source, Source::Rebuilt(w) if w.contains("NVIDIA H100")));
    assert_eq!(plan.header.gpu.name, "NVIDIA H200");

    let other = fixture("tiny-mpnet-mean-norm");
    plan_for(&other, &h200()).write(&path).unwrap();
    let (_, outcome) = open_cached(&path, &model, &h200(), &builds);
    assert_eq!(builds.get(), 2);
    assert!(matches!(&outcome.source, Source::Rebuilt(w) if w.contains("another model")));
}

#[test]
fn a_cache_that_cannot_be_written_still_gives_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    let blocker = dir.path().join("plans");
    std::fs::write(&blocker, b"").unwrap();
    let path = blocker.join("p.plan");
    let builds = Cell::new(0);
    let (plan, outcome) = open_cached(&path, &fixture("tiny-bert-mean-norm"), &h200(), &builds);
    assert_eq!(builds.get(), 1);
    assert_eq!(plan.header.precision, Precision::Fp16);
    let why = outcome.stored.clone().unwrap_err();
    assert!(why.contains("cannot create"), "{why}");
    let line = note(&outcome, &path, Precision::Fp16, &h200().target);
    assert!(line.contains(", not cached at "), "{line}");
}

#[test]
fn a_build_failure_is_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.plan");
    let err = load_or_build(
        &path,
        |_| Ok(()),
        || Err(CoreError::Backend("out of memory".into()).into()),
    )
    .err()
    .unwrap();
    assert!(err.message().contains("out of memory"));
    assert!(!path.exists());
}

#[test]
fn each_outcome_is_one_note_line() {
    let gpu = h200().target;
    let path = Path::new("/c/fp16-sm90-k.plan");
    let at = |source, stored| note(&Outcome { source, stored }, path, Precision::Fp16, &gpu);
    assert_eq!(
        at(Source::Built, Ok(())),
        "no --plan: built an fp16 plan for NVIDIA H200 (sm_90), cached at /c/fp16-sm90-k.plan \
         (--precision fp32 for the exact path)"
    );
    assert_eq!(
        at(Source::Cached, Ok(())),
        "no --plan: using the cached fp16 plan /c/fp16-sm90-k.plan"
    );
    assert_eq!(
        at(Source::Rebuilt("truncated".into()), Ok(())),
        "no --plan: the cached plan /c/fp16-sm90-k.plan was unusable (truncated); built an fp16 \
         plan for NVIDIA H200 (sm_90) and cached it (--precision fp32 for the exact path)"
    );
    assert_eq!(
        uncached_note(Precision::Fp16, &gpu, "the plan cache is off"),
        "no --plan: built an fp16 plan for NVIDIA H200 (sm_90) in memory, not cached (the plan \
         cache is off) (--precision fp32 for the exact path)"
    );
    let rebuilt_unstored = at(Source::Rebuilt("a\nb".into()), Err("disk full".into()));
    assert!(rebuilt_unstored.contains("not cached at /c/fp16-sm90-k.plan (disk full)"));
    assert!(!rebuilt_unstored.contains('\n'), "{rebuilt_unstored}");
}

#[test]
fn fp16_plans_take_the_tanh_gelu_fp32_the_exact_one_and_old_headers_read_as_exact() {
    use embedrt_core::quant::GeluForm;
    let model = fixture("tiny-bert-mean-norm");
    let plan = plan_for(&model, &h200());
    assert_eq!(plan.header.gelu, GeluForm::Tanh);
    let weights = model.load_weights().unwrap();
    let fp32 = assemble_plan(&model, &weights, Precision::Fp32, profile(), h200().target);
    assert_eq!(fp32.header.gelu, GeluForm::Exact);
    // The field survives a write and a read; a header written before it had
    // no such field and means the exact GELU.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.plan");
    plan.write(&path).unwrap();
    assert_eq!(Plan::read(&path).unwrap().header.gelu, GeluForm::Tanh);
    let mut json = serde_json::to_value(&plan.header).unwrap();
    json.as_object_mut().unwrap().remove("gelu");
    let old: embedrt_cuda::plan::PlanHeader = serde_json::from_value(json).unwrap();
    assert_eq!(old.gelu, GeluForm::Exact);
}
