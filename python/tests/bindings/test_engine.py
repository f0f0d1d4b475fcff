"""embedrt.Engine against the embedrt CLI and the tokenizers package."""

import doctest

import embedrt
import numpy as np
import pytest
from conftest import FIXTURES, SENTENCES, TINY, cli_embed, cli_error
from tokenizers import Tokenizer


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("normalize", [None, False])
def test_embed_matches_the_cli_on_fixtures(embedrt_bin, name, normalize):
    # None follows the model, as the CLI does; False is --no-normalize.
    engine = embedrt.Engine(model=str(FIXTURES / name), device="cpu")
    got = engine.embed(SENTENCES, normalize=normalize)
    want = cli_embed(
        embedrt_bin, FIXTURES / name, SENTENCES, normalize=normalize is None
    )
    assert got.dtype == np.float32
    assert got.shape == (len(SENTENCES), engine.dimension)
    assert got.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_embed_matches_the_cli_on_minilm(embedrt_bin, minilm):
    engine = embedrt.Engine(model=str(minilm), device="cpu")
    got = engine.embed(SENTENCES)
    want = cli_embed(embedrt_bin, minilm, SENTENCES)
    assert got.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    info = engine.info()
    assert info["dimension"] == 384 and info["normalize"] is True
    assert info["max_seq_length"] == engine.max_seq_length == 256
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["pooling"] == "mean"


def test_normalize_none_follows_the_model():
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-bert-max"), device="cpu")
    raw = engine.embed(SENTENCES, normalize=False)
    unit = engine.embed(SENTENCES, normalize=True)
    default = engine.embed(SENTENCES)
    np.testing.assert_allclose(
        unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6
    )
    want = unit if engine.info()["normalize"] else raw
    np.testing.assert_array_equal(default, want)


def test_tokenize_matches_the_tokenizers_package(minilm):
    engine = embedrt.Engine(model=str(minilm), device="cpu")
    tok = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tok.enable_truncation(engine.max_seq_length)
    tok.no_padding()
    long = "word " * 1000
    texts = SENTENCES + [long]
    want = [e.ids for e in tok.encode_batch(texts)]
    got = engine.tokenize(texts)
    assert got == want
    assert len(got[-1]) == engine.max_seq_length


def test_truncate_false_names_the_long_text():
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-bert-mean-norm"), device="cpu")
    texts = ["short", "word " * (engine.max_seq_length + 10)]
    with pytest.raises(ValueError, match="text 1 is longer than the model's"):
        engine.embed(texts, truncate=False)
    assert engine.embed(texts).shape == (2, engine.dimension)
    assert engine.embed(["short"], truncate=False).shape == (1, engine.dimension)


def test_batch_size_does_not_change_results():
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-mpnet-mean-norm"), device="cpu")
    texts = [f"sentence {i} " + "w " * (i % 40) for i in range(100)]
    whole = engine.embed(texts)
    for batch_size in (1, 7, 32):
        np.testing.assert_allclose(
            engine.embed(texts, batch_size=batch_size), whole, atol=1e-6
        )
    with pytest.raises(ValueError, match="batch_size"):
        engine.embed(texts, batch_size=0)


def test_empty_list_gives_an_empty_array():
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-bert-mean-norm"), device="cpu")
    out = engine.embed([])
    assert out.shape == (0, engine.dimension) and out.dtype == np.float32
    assert engine.tokenize([]) == []


def test_missing_model_raises_with_the_cli_message(embedrt_bin, tmp_path):
    missing = tmp_path / "no-such-model"
    want = cli_error(embedrt_bin, "--model", str(missing), "--device", "cpu")
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        embedrt.Engine(model=str(missing), device="cpu")
    assert str(err.value) == want


@pytest.mark.parametrize(
    "kwargs, cli_args",
    [
        ({"device": "tpu"}, ["--device", "tpu"]),
        ({"device": "cuda:all"}, ["--device", "cuda:all"]),
        ({"pooling": "median"}, ["--pooling", "median"]),
        (
            {"precision": "fp16", "device": "cpu"},
            ["--precision", "fp16", "--device", "cpu"],
        ),
        ({"plan": "x.plan", "device": "cpu"}, ["--plan", "x.plan", "--device", "cpu"]),
    ],
)
def test_bad_options_raise_value_error_with_the_cli_message(
    embedrt_bin, kwargs, cli_args
):
    kwargs = dict(kwargs)
    model_args = (
        [] if "plan" in kwargs else ["--model", str(FIXTURES / "tiny-bert-mean-norm")]
    )
    if "plan" not in kwargs:
        kwargs["model"] = str(FIXTURES / "tiny-bert-mean-norm")
    want = cli_error(embedrt_bin, *model_args, *cli_args)
    with pytest.raises(ValueError) as err:
        embedrt.Engine(**kwargs)
    assert str(err.value) == want


def test_no_model_nor_plan_is_a_value_error():
    with pytest.raises(ValueError, match="give --model or --plan"):
        embedrt.Engine()


def test_non_str_elements_are_type_errors():
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-bert-mean-norm"), device="cpu")
    with pytest.raises(TypeError):
        engine.embed(["ok", 3])
    with pytest.raises(TypeError):
        engine.embed("a bare string is not a list of texts")
    with pytest.raises(TypeError):
        engine.tokenize([None])


def test_health_and_exception_hierarchy():
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-bert-mean-norm"), device="cpu")
    assert engine.health() is None
    assert issubclass(embedrt.EngineError, RuntimeError)
    assert issubclass(embedrt.OutOfMemoryError, embedrt.EngineError)
    assert issubclass(embedrt.DeviceLostError, embedrt.EngineError)
    assert isinstance(embedrt.__version__, str) and embedrt.__version__


def test_docstring_examples_run(monkeypatch):
    # The examples use repository paths.
    monkeypatch.chdir(FIXTURES.parent.parent)
    for obj in (embedrt, embedrt.Engine):
        finder = doctest.DocTestFinder(recurse=False)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        tests = finder.find(obj, obj.__name__, globs={})
        assert sum(len(t.examples) for t in tests) > 0, f"{obj} has no example"
        for t in tests:
            runner.run(t)
        assert runner.failures == 0, f"a docstring example of {obj.__name__} failed"


def _gpu_usable():
    try:
        embedrt.Engine(
            model=str(FIXTURES / "tiny-bert-mean-norm"), device="cuda", plan_cache="off"
        )
        return True
    except embedrt.EngineError:
        return False


def test_plan_cache_is_accepted_and_the_cpu_never_touches_it(tmp_path):
    cache = tmp_path / "plans"
    model = str(FIXTURES / "tiny-bert-mean-norm")
    for plan_cache in (None, "off", cache, str(cache)):
        engine = embedrt.Engine(model=model, device="cpu", plan_cache=plan_cache)
        assert engine.info()["notes"] == []
        assert engine.embed(["x"]).shape == (1, engine.dimension)
    assert not cache.exists()


def test_cuda_without_a_gpu_raises_the_cli_message_and_caches_nothing(
    embedrt_bin, tmp_path
):
    if _gpu_usable():
        pytest.skip("this machine has a usable GPU")
    cache = tmp_path / "plans"
    model = str(FIXTURES / "tiny-bert-mean-norm")
    want = cli_error(embedrt_bin, "--model", model, "--device", "cuda")
    with pytest.raises(embedrt.EngineError) as err:
        embedrt.Engine(model=model, device="cuda", plan_cache=cache)
    assert str(err.value) == want
    assert not cache.exists()
