import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "serve"))

from conftest import cluster, embedrt_bin, minilm_dir  # noqa: F401  (the serve suite's session fixtures)
