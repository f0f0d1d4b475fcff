"""Ray Serve application of embedrt (`embedrt.ray_serve:build_app`)."""

from embedrt.serve.app import Embedder, app
from embedrt.serve.builder import build_app

__all__ = ["Embedder", "app", "build_app"]
