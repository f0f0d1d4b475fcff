"""The GIL is released while the engine works: a Python thread keeps
running while another thread is inside Engine.embed."""

import threading
import time

import embedrt
from conftest import FIXTURES


def test_python_keeps_running_while_embed_runs():
    engine = embedrt.Engine(model=str(FIXTURES / "tiny-bert-mean-norm"), device="cpu")
    texts = [f"sentence number {i} about " + "words " * (i % 60) for i in range(600)]
    engine.embed(texts[:10])
    calls = 2
    inside = threading.Event()
    done = threading.Event()
    call_seconds = []

    def embed_loop():
        for _ in range(calls):
            start = time.perf_counter()
            inside.set()
            engine.embed(texts)
            inside.clear()
            call_seconds.append(time.perf_counter() - start)
        done.set()

    worker = threading.Thread(target=embed_loop)
    worker.start()
    # A pure-Python loop: it only advances while it holds the GIL. It keeps
    # the longest gap between its turns while the worker is inside embed.
    turns = 0
    longest_gap = 0.0
    last = None
    while not done.is_set():
        if inside.is_set():
            now = time.perf_counter()
            if last is not None:
                longest_gap = max(longest_gap, now - last)
            last = now
            turns += 1
    worker.join()
    # Held for the whole call, the GIL would give this loop no turn while
    # embed runs (a few 5 ms switch slices per call at most, between
    # calls), so the longest gap between its turns would be about one
    # call. Released, the gaps are switch intervals and scheduler hiccups
    # of a loaded machine: far below half a call.
    shortest_call = min(call_seconds)
    assert shortest_call > 0.2, (
        f"the workload is too small to show anything ({call_seconds})"
    )
    assert turns > 1, "the Python loop never ran while embed ran"
    assert longest_gap < shortest_call / 2, (longest_gap, call_seconds, turns)


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
