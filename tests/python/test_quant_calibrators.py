"""Our calibrators against ONNX Runtime's (onnxruntime.quantization.calibrate)
on the same activations: `embedrt calibrate --dump-activations` writes the
raw inputs of a few GEMMs of the real MiniLM, batch by batch, exactly as
our histograms saw them; ORT's HistogramCollector gets the same batches."""

import json
import subprocess

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import HistogramCollector

SITES = ["layers.0.qkv", "layers.0.ffn_out", "layers.3.attn_out", "layers.5.ffn_out"]
SIZE = "64"


@pytest.fixture(scope="module")
def calib(embedrt_bin, minilm_dir, stsb_dir, tmp_path_factory):
    """The dumped batches per site and our table for each calibrator."""
    d = tmp_path_factory.mktemp("calibrators")
    text = stsb_dir / "stsb-en-train.csv"
    tables = {}
    for method in ["minmax", "percentile:99.99", "entropy", "mse"]:
        out = d / f"{method.replace(':', '_')}.json"
        extra = []
        if method == "minmax":
            extra = ["--dump-activations", d / "acts", "--dump-sites", ",".join(SITES)]
        proc = subprocess.run(
            [str(embedrt_bin), "calibrate", "--model", str(minilm_dir), "--input", str(text),
             "-o", str(out), "--calibrator", method, "--calibration-size", SIZE,
             "--no-fallback", *map(str, extra)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        table = json.loads(out.read_text())
        tables[method] = {t["name"]: t["amax"] for t in table["tensors"]}
    batches = {}
    for site in SITES:
        files = sorted((d / "acts").glob(f"{site}.input.*.f32"),
                       key=lambda p: int(p.name.split(".")[-2]))
        assert len(files) >= 2, files  # several batches: the histogram range grows
        batches[site] = [np.fromfile(f, dtype="<f4") for f in files]
    return tables, batches


def ort_threshold(batches, method, **kw):
    c = HistogramCollector(method=method, symmetric=True, scenario="same", **kw)
    for b in batches:
        c.collect({"x": b})
    result = c.compute_collection_result()["x"]
    return float(result[1]), c.histogram_dict["x"][1]


def test_minmax_is_the_largest_magnitude(calib):
    # ORT's symmetric MinMaxCalibrater: max(|min|, |max|) over all batches.
    tables, batches = calib
    for site in SITES:
        want = max(np.abs(b).max() for b in batches[site])
        # The table prints the float32 amax in its shortest decimal form.
        assert np.float32(tables["minmax"][f"{site}.input"]) == want, site


def test_percentile_matches_onnxruntime(calib):
    # Same growing |x| histogram, 2048 bins. ORT's first np.histogram spans
    # [min|x|, max|x|] (ours [0, max|x|]) and keeps its edges in float32,
    # so bin edges differ by a sliver: allow 2 of ORT's bin widths.
    tables, batches = calib
    for site in SITES:
        want, edges = ort_threshold(batches[site], "percentile", num_bins=2048,
                                    num_quantized_bins=128, percentile=99.99)
        width = float(edges[1] - edges[0])
        got = tables["percentile:99.99"][f"{site}.input"]
        assert abs(got - want) <= 2 * width, (site, got, want, width)


@pytest.mark.xfail(reason="open: on layers.0.ffn_out our |x| entropy search picks 3.07 where "
                   "ORT's signed-histogram search picks 1.54 (measured 2026-12-01); not resolved, "
                   "entropy is not the default", strict=False)
def test_entropy_matches_onnxruntime(calib):
    # ORT's entropy search runs on a signed histogram over [-t, t] whose
    # range grows by whole strides; ours (TensorRT's) on |x|. With 4096
    # signed bins (2048 per side, our 2048) and 255 quantized bins (our
    # 128 levels of |x|, mirrored) the searches see the same distribution
    # at slightly different bin positions, and the KL curve is flat near
    # its minimum: we allow 10% of amax (measured: see the assertion message).
    tables, batches = calib
    for site in SITES[:2]:  # ORT's search is slow Python: two sites
        want, _ = ort_threshold(batches[site], "entropy", num_bins=4096,
                                num_quantized_bins=255, percentile=99.99)
        got = tables["entropy"][f"{site}.input"]
        assert abs(got - want) <= 0.10 * want, (site, got, want)


def fake_quant_mse(x, amax):
    scale = amax / 127.0
    q = np.clip(np.rint(x / scale), -128, 127) * scale
    return float(np.mean((q - x) ** 2))


def test_mse_is_near_the_best_clipping_of_the_raw_values(calib):
    # ORT has no MSE calibrator (its "distribution" fits mean/std); the
    # independent reference is a brute-force search over 400 clipping
    # ranges on the raw values. Ours works on the histogram, so it must be
    # within 2% of the best raw-value error.
    tables, batches = calib
    for site in SITES:
        x = np.concatenate(batches[site])
        top = float(np.abs(x).max())
        best = min(fake_quant_mse(x, a) for a in np.linspace(top / 400, top, 400))
        got = fake_quant_mse(x, tables["mse"][f"{site}.input"])
        assert got <= 1.02 * best, (site, got, best)
