"""`embedrt export`: the ONNX file checked by onnx's full checker and run by
ONNX Runtime (the oracle), compared with embedrt's own CPU engine."""
import csv
import json
import pathlib
import shutil
import struct
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TINY_FIXTURES
from tokenizers import Tokenizer

FP32_TOL = 1e-5
FP16_MIN_COSINE = 0.9999


# ---------------------------------------------------------------- helpers


def export(embedrt_bin, model, out, *extra):
    proc = subprocess.run(
        [str(embedrt_bin), "export", "--model", str(model), "-o", str(out), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc


def export_ok(embedrt_bin, model, out, *extra):
    proc = export(embedrt_bin, model, out, *extra)
    assert proc.returncode == 0, proc.stderr
    return pathlib.Path(out)


def cpu_embed(embedrt_bin, model, texts, tmp_path):
    """The CPU engine's sentence embeddings (normalized as the model says)."""
    inp = tmp_path / "texts.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    proc = subprocess.run(
        [str(embedrt_bin), "embed", "--model", str(model), "--device", "cpu", "--input", str(inp)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return np.array([r["embedding"] for r in sorted(rows, key=lambda r: r["index"])], np.float32)


def session(export_dir, threads=2, level=None):
    """`level` (an ort.GraphOptimizationLevel) overrides ORT's default, which
    fuses QDQ pairs into its integer kernels."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if level is not None:
        opts.graph_optimization_level = level
    return ort.InferenceSession(
        str(export_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )


def tokenizer(export_dir):
    """The exported tokenizer.json, used as any consumer would use it."""
    return Tokenizer.from_file(str(export_dir / "tokenizer.json"))


def padded(tok, texts):
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    return ids, mask


def ort_embed(sess, tok, texts, batch_size=32):
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = padded(tok, texts[i : i + batch_size])
        out.append(sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0])
    return np.concatenate(out)


def cosine_rows(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def safetensors_names(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k for k in header if k != "__metadata__"}


def read_sts(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(r[0], r[1], float(r[2])) for r in csv.reader(f) if r]


def spearman(x, y):
    def ranks(v):
        v = np.asarray(v, np.float64)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        # average ranks over ties
        for val in np.unique(v):
            idx = v == val
            if idx.sum() > 1:
                r[idx] = r[idx].mean()
        return r

    return np.corrcoef(ranks(x), ranks(y))[0, 1]


@pytest.fixture(scope="module")
def exports(embedrt_bin, fixtures_dir, minilm_dir, tmp_path_factory):
    """Every model exported once per precision: {(name, precision): dir}."""
    root = tmp_path_factory.mktemp("exports")
    models = {name: fixtures_dir / name for name in TINY_FIXTURES}
    models["minilm"] = minilm_dir
    done = {}

    def get(name, precision="fp32"):
        key = (name, precision)
        if key not in done:
            done[key] = export_ok(
                embedrt_bin, models[name], root / f"{name}-{precision}", "--precision", precision
            )
        return done[key]

    get.models = models
    return get


# ---------------------------------------------------------------- the file


@pytest.mark.parametrize("name", TINY_FIXTURES + ["minilm"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_passes_full_check_with_standard_ops_and_hf_names(exports, name, precision):
    d = exports(name, precision)
    model = onnx.load(str(d / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [o.domain for o in model.opset_import] == [""]
    assert model.opset_import[0].version == 17
    assert all(n.domain == "" for n in model.graph.node)
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Erf", "Softmax"} <= ops

    manifest = json.loads((d / "manifest.json").read_text())
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pooling"] == manifest["pooling"]
    assert meta["normalize"] == str(manifest["normalize"]).lower()
    assert meta["max_seq_length"] == str(manifest["max_seq_length"])
    assert manifest["precision"] == precision

    # Initializers carry the Hugging Face parameter names (prefix-free).
    src = exports.models[name]
    hf = set()
    for n in safetensors_names(src / "model.safetensors"):
        for prefix in ("bert.", "mpnet."):
            n = n.removeprefix(prefix)
        if not n.startswith(("pooler.", "lm_head.", "cls.")) and "position_ids" not in n:
            hf.add(n)
    inits = {t.name for t in model.graph.initializer}
    assert hf <= inits, sorted(hf - inits)

    # Inputs int64 [batch, sequence] dynamic; outputs fp32.
    def sig(v):
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]

    hidden = manifest["hidden_size"]
    i64, f32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    assert [sig(v) for v in model.graph.input] == [
        ("input_ids", i64, ["batch", "sequence"]),
        ("attention_mask", i64, ["batch", "sequence"]),
    ]
    assert [sig(v) for v in model.graph.output] == [
        ("token_embeddings", f32, ["batch", "sequence", hidden]),
        ("sentence_embedding", f32, ["batch", hidden]),
    ]


def test_fp16_rule_matmuls_in_fp16_norms_softmax_pooling_in_fp32(exports):
    d = exports("tiny-mpnet-mean-norm", "fp16")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(d / "model.onnx")), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    by_op = {}
    for n in model.graph.node:
        by_op.setdefault(n.op_type, set()).add(types.get(n.input[0]))
    assert by_op["MatMul"] == {f16}
    assert by_op["LayerNormalization"] == {f32}
    assert by_op["Softmax"] == {f32}
    assert by_op["ReduceSum"] == {f32}
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert weights["encoder.layer.0.attention.attn.q.weight"] == f16
    assert weights["embeddings.word_embeddings.weight"] == f16
    assert weights["encoder.layer.0.output.LayerNorm.weight"] == f32


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("name", TINY_FIXTURES)
def test_fp32_matches_cpu_engine_on_fixtures(exports, embedrt_bin, fixtures_dir, tmp_path, name):
    d = exports(name)
    expected = json.loads((fixtures_dir / name / "expected.json").read_text())
    texts = expected["texts"]
    tok = tokenizer(d)
    # The exported tokenizer gives the ids sentence-transformers used.
    assert [tok.encode(t).ids for t in texts] == expected["token_ids"]
    got = ort_embed(session(d), tok, texts, batch_size=len(texts))
    ref = cpu_embed(embedrt_bin, fixtures_dir / name, texts, tmp_path)
    assert got.shape == ref.shape
    err = np.abs(got - ref).max()
    assert err <= FP32_TOL, err


def test_fp32_matches_cpu_engine_on_minilm(exports, embedrt_bin, minilm_dir, stsb_dir, tmp_path):
    d = exports("minilm")
    pairs = read_sts(stsb_dir / "stsb-en-dev.csv")[:150]
    texts = [s for p in pairs for s in p[:2]]
    got = ort_embed(session(d), tokenizer(d), texts)
    ref = cpu_embed(embedrt_bin, minilm_dir, texts, tmp_path)
    err = np.abs(got - ref).max()
    assert err <= FP32_TOL, err


@pytest.mark.parametrize("name", TINY_FIXTURES + ["minilm"])
def test_fp16_close_to_fp32(exports, fixtures_dir, stsb_dir, name):
    if name == "minilm":
        texts = [s for p in read_sts(stsb_dir / "stsb-en-dev.csv")[:100] for s in p[:2]]
    else:
        texts = json.loads((fixtures_dir / name / "expected.json").read_text())["texts"]
    tok = tokenizer(exports(name))
    a = ort_embed(session(exports(name, "fp32")), tok, texts)
    b = ort_embed(session(exports(name, "fp16")), tok, texts)
    assert b.dtype == np.float32
    cos = cosine_rows(a, b).min()
    assert cos >= FP16_MIN_COSINE, cos


@pytest.mark.parametrize("name", ["tiny-mpnet-mean-norm", "tiny-bert-max", "minilm"])
def test_one_session_serves_1x1_to_16x_max_and_padding_is_masked(exports, name):
    d = exports(name)
    max_len = json.loads((d / "manifest.json").read_text())["max_seq_length"]
    sess = session(d)
    rng = np.random.default_rng(0)
    vocab = 900  # below every model's vocabulary size

    def run(ids, mask):
        return sess.run(None, {"input_ids": ids, "attention_mask": mask})

    for batch, seq in [(1, 1), (1, max_len), (3, 7), (16, max_len)]:
        ids = rng.integers(5, vocab, size=(batch, seq), dtype=np.int64)
        # Ragged lengths: row r keeps a prefix, the rest is padding with junk ids.
        lengths = rng.integers(1, seq + 1, size=batch)
        lengths[0] = seq
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        tokens, sentences = run(ids, mask)
        assert tokens.shape[:2] == (batch, seq) and sentences.shape[0] == batch
        assert np.isfinite(tokens).all() and np.isfinite(sentences).all()
        # Each row alone, unpadded, must give the same result as in the batch.
        for r in {0, batch - 1}:
            n = lengths[r]
            t1, s1 = run(ids[r : r + 1, :n], mask[r : r + 1, :n])
            assert np.abs(t1[0] - tokens[r, :n]).max() <= FP32_TOL
            assert np.abs(s1[0] - sentences[r]).max() <= FP32_TOL


def test_minilm_stsb_spearman_through_onnxruntime_equals_cpu_engine(
    exports, embedrt_bin, minilm_dir, stsb_dir
):
    d = exports("minilm")
    dev = stsb_dir / "stsb-en-dev.csv"
    pairs = read_sts(dev)
    texts = [s for p in pairs for s in p[:2]]
    emb = ort_embed(session(d), tokenizer(d), texts, batch_size=64)
    cos = cosine_rows(emb[0::2], emb[1::2])
    ours = 100 * spearman(cos, [p[2] for p in pairs])
    proc = subprocess.run(
        [str(embedrt_bin), "eval", "--model", str(minilm_dir), "--device", "cpu", "--sts", str(dev)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    cpu = json.loads(proc.stdout)["spearman"]
    assert abs(ours - cpu) <= 0.01, (ours, cpu)


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("name", ["tiny-bert-max", "tiny-mpnet-mean-norm"])
def test_newer_opsets_check_and_match(exports, embedrt_bin, tmp_path, opset, name):
    d = export_ok(embedrt_bin, exports.models[name], tmp_path / "x", "--opset", str(opset))
    model = onnx.load(str(d / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
    texts = ["a short one", "and a somewhat longer sentence than that"]
    tok = tokenizer(d)
    ref = ort_embed(session(exports(name)), tok, texts)
    got = ort_embed(session(d), tok, texts)
    assert np.abs(got - ref).max() <= FP32_TOL


# ---------------------------------------------------------------- bad input


def one_line_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_unsupported_architecture_is_a_clear_error(embedrt_bin, fixtures_dir, tmp_path):
    model = tmp_path / "roberta"
    shutil.copytree(fixtures_dir / "tiny-bert-mean-norm", model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "roberta"
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    one_line_error(export(embedrt_bin, model, out), "roberta", "not supported")
    assert not (out / "model.onnx").exists()


@pytest.mark.parametrize("opset", ["16", "11"])
def test_opset_below_17_is_a_clear_error(embedrt_bin, fixtures_dir, tmp_path, opset):
    proc = export(embedrt_bin, fixtures_dir / "tiny-bert-max", tmp_path / "o", "--opset", opset)
    one_line_error(proc, f"opset {opset}", "17")
    assert not (tmp_path / "o").exists()


def test_unknown_precision_is_a_clear_error(embedrt_bin, fixtures_dir, tmp_path):
    proc = export(embedrt_bin, fixtures_dir / "tiny-bert-max", tmp_path / "o", "--precision", "int4")
    one_line_error(proc, "int4", "fp16", "int8")
    assert not (tmp_path / "o").exists()


def test_fp8_export_without_calibration_is_a_clear_error(embedrt_bin, fixtures_dir, tmp_path):
    proc = export(embedrt_bin, fixtures_dir / "tiny-bert-max", tmp_path / "o", "--precision", "fp8")
    one_line_error(proc, "fp8", "--calibration")
    assert not (tmp_path / "o").exists()


def test_fp8_export_below_opset_19_is_a_clear_error(embedrt_bin, fixtures_dir, tmp_path):
    proc = export(embedrt_bin, fixtures_dir / "tiny-bert-max", tmp_path / "o", "--precision", "fp8",
                  "--opset", "17")
    one_line_error(proc, "fp8", "--opset 19")
    assert not (tmp_path / "o").exists()


def test_int8_export_without_calibration_is_a_clear_error(embedrt_bin, fixtures_dir, tmp_path):
    proc = export(embedrt_bin, fixtures_dir / "tiny-bert-max", tmp_path / "o", "--precision", "int8")
    one_line_error(proc, "int8", "--calibration")
    assert not (tmp_path / "o").exists()


def test_output_that_cannot_be_a_directory_is_a_clear_error(embedrt_bin, fixtures_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = export(embedrt_bin, fixtures_dir / "tiny-bert-max", blocker)
    one_line_error(proc, str(blocker), "not a directory")
    proc = export(embedrt_bin, fixtures_dir / "tiny-bert-max", blocker / "sub")
    one_line_error(proc, str(blocker / "sub"), "cannot create the output directory")


def test_directory_holding_another_model_is_refused_and_left_alone(embedrt_bin, fixtures_dir, tmp_path):
    out = export_ok(embedrt_bin, fixtures_dir / "tiny-bert-max", tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = export(embedrt_bin, fixtures_dir / "tiny-mpnet-cls", out)
    one_line_error(proc, "different model", "tiny-bert-max")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # The same weights again (another precision) replace the export in place.
    export_ok(embedrt_bin, fixtures_dir / "tiny-bert-max", out, "--precision", "fp16")
    assert json.loads((out / "manifest.json").read_text())["precision"] == "fp16"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]

    # A model.onnx that no manifest vouches for is not overwritten either.
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "model.onnx").write_bytes(b"someone else's model")
    proc = export(embedrt_bin, fixtures_dir / "tiny-bert-max", stray)
    one_line_error(proc, "model.onnx", "manifest")
    assert (stray / "model.onnx").read_bytes() == b"someone else's model"


def test_manifest_hashes_match_the_files(exports, fixtures_dir):
    import hashlib

    d = exports("tiny-mpnet-cls")
    m = json.loads((d / "manifest.json").read_text())
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert m["onnx_sha256"] == sha(d / "model.onnx")
    assert m["tokenizer_sha256"] == sha(d / "tokenizer.json")
    assert m["weights_sha256"] == sha(fixtures_dir / "tiny-mpnet-cls" / "model.safetensors")
    assert m["source"].endswith("tiny-mpnet-cls")
    assert (m["architecture"], m["pooling"], m["normalize"]) == ("mpnet", "cls", False)
