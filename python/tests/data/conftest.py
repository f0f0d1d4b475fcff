"""The data suite needs only the session's shared Ray cluster (python/tests/conftest.py)
and the fixtures there; no Serve app may hold the cluster's CPUs while it runs."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def no_serve_apps(cluster):
    # The serve and pipeline suites delete their apps when they end; this
    # makes a leftover (a suite interrupted mid-way) fail loudly instead of
    # the Ray Data job waiting forever for a CPU.
    apps = cluster.rest("GET", "/api/serve/applications/")["applications"]
    assert not apps, f"Serve apps still hold the cluster's CPUs: {sorted(apps)}"
