"""`serve run embedrt.ray_serve:build_app model=...`: the import path the docs name.

The code lives in `embedrt.serve`; this module only re-exports it.
"""

from embedrt.serve import Embedder, app, build_app

__all__ = ["Embedder", "app", "build_app"]
