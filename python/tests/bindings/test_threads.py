"""The GIL is released while the engine works: a Python thread keeps
running while another thread is inside Engine.embed."""

import threading
import time

from conftest import FIXTURES

import embedrt


def test_python_keeps_running_while_embed_runs(minilm=None):
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-bert-mean-norm"), device="cpu")
    texts = [f"sentence number {i} about " + "words " * (i % 60) for i in range(4000)]
    engine.embed(texts[:10])
    calls = 3
    inside = threading.Event()
    done = threading.Event()
    ticks_inside = []

    def embed_loop():
        for _ in range(calls):
            inside.set()
            engine.embed(texts)
        done.set()

    # A pure-Python counter: it only advances while it holds the GIL.
    def count():
        n = 0
        while not done.is_set():
            n += 1
            if inside.is_set():
                ticks_inside.append(n)
        return n

    worker = threading.Thread(target=embed_loop)
    start = time.perf_counter()
    worker.start()
    inside.wait()
    count()
    worker.join()
    elapsed = time.perf_counter() - start
    # With the GIL held for the whole embed, the counter would get no turn
    # until embed returned (one switch per call at most); released, it
    # counts all along. Many thousands of increments, not a handful.
    assert elapsed > 0.05, f"the workload is too small to show anything ({elapsed:.3f}s)"
    assert len(ticks_inside) > 10_000, (len(ticks_inside), elapsed)


def test_two_threads_embed_at_once_with_the_same_results():
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-bert-mean-norm"), device="cpu")
    texts = [f"text {i} " + "more " * (i % 30) for i in range(500)]
    want = engine.embed(texts)
    results = [None, None]

    def run(k):
        results[k] = engine.embed(texts)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert (r == want).all()
