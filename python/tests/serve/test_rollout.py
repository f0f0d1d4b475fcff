"""A new model version through user_config under load, then a replica killed under load."""

import concurrent.futures
import pathlib
import threading
import time

import pytest
import ray_cluster
from client import cli_embed, max_abs_diff, post_with_retry
from serve_helpers import app_status, deploy

ROOT = pathlib.Path(__file__).resolve().parents[3]
TINY = ROOT / "tests/fixtures/tiny-bert-mean-norm"
TEXTS = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome.",
]


def load(port, stop, results, lock):
    """One client posting until told to stop; records (status, version, rows, retries)."""
    i = 0
    while not stop.is_set():
        text = TEXTS[i % len(TEXTS)]
        try:
            resp, retries = post_with_retry(port, "/embed", {"inputs": [text]})
            entry = (
                resp.status,
                resp.version,
                resp.json() if resp.status == 200 else resp.body,
                retries,
                text,
            )
        except OSError as e:
            entry = (None, None, repr(e), 1, text)
        with lock:
            results.append(entry)
        i += 1


def run_under_load(port, action, clients=8, settle_s=2.0):
    stop, lock, results = threading.Event(), threading.Lock(), []
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(load, port, stop, results, lock)
        time.sleep(settle_s)
        action()
        time.sleep(settle_s)
        stop.set()
    return results


@pytest.fixture(scope="module")
def references(embedrt_bin, minilm_dir):
    return {
        "1": dict(zip(TEXTS, cli_embed(embedrt_bin, minilm_dir, TEXTS))),
        "2": dict(zip(TEXTS, cli_embed(embedrt_bin, TINY, TEXTS))),
    }


def test_new_version_under_load_drops_nothing(serve_app, cluster, references):
    config = serve_app["config"]
    config["applications"][0]["deployments"][0]["user_config"] = {
        "model": str(TINY),
        "device": "cpu",
        "version": "2",
    }

    def roll():
        deploy(cluster, config)
        ray_cluster.wait_for(
            lambda: app_status(cluster) == "RUNNING",
            120,
            "app RUNNING after the update",
        )
        port = serve_app["port"]
        ray_cluster.wait_for(
            lambda: post_with_retry(port, "/embed", {"inputs": "x"})[0].version == "2",
            120,
            "version 2 answering",
        )

    results = run_under_load(serve_app["port"], roll)
    failed = [r for r in results if r[0] != 200]
    retried = sum(r[3] for r in results)
    print(
        f"\nreconfigure under load: {len(results)} requests, {len(failed)} failed, {retried} retried"
    )
    assert not failed, failed[:3]
    assert retried == 0, "a version change must not need the retry"
    versions = {r[1] for r in results}
    assert versions == {"1", "2"}, versions
    for status, version, rows, _, text in results:
        assert max_abs_diff(rows, [references[version][text]]) <= 1e-6, (version, text)


def test_killed_replica_is_replaced(serve_app, cluster):
    import ray
    from ray.util.state import list_actors

    ray.init(address=cluster.address, ignore_reinit_error=True, log_to_driver=False)
    try:

        def replicas():
            return [
                a
                for a in list_actors(filters=[("state", "=", "ALIVE")])
                if "Embedder" in (a.class_name or "") or "Embedder" in (a.name or "")
            ]

        before = replicas()
        assert len(before) == 2, before
        victim = before[0]

        def kill():
            ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)

        results = run_under_load(serve_app["port"], kill)
        failed = [r for r in results if r[0] != 200]
        retried = sum(r[3] for r in results)
        print(
            f"\nreplica kill under load: {len(results)} requests, {len(failed)} failed after one retry, {retried} retried"
        )
        assert not failed, failed[:3]
        ray_cluster.wait_for(
            lambda: (
                len(replicas()) == 2
                and victim.actor_id not in {a.actor_id for a in replicas()}
            ),
            180,
            "a replacement replica",
        )
    finally:
        ray.shutdown()
