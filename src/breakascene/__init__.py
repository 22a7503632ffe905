"""break-a-scene: learn a text handle for every concept of one photo (Break-A-Scene, SIGGRAPH Asia 2023).

    from breakascene import ExtractConfig, load_scene_folder, extract, generate, edit

    config = ExtractConfig()                                   # the paper's defaults
    scene = load_scene_folder("examples/shapes", config.resolution)
    result = extract(scene, config, "runs/shapes")             # <asset0>, <asset1>, <bg>
    generate("runs/shapes", ["a photo of <asset0> at the beach"], num_images=4)
    edit("runs/shapes", "other.jpg", [("region.png", "a photo of <asset0>")])   # Blended Latent Diffusion

Names are imported on first use, so ``import breakascene`` stays light (no diffusers until it is needed).
"""

import importlib

from .quiet import quiet_environment

quiet_environment()  # before any library is imported: some print notices at import time

_EXPORTS = {
    "ExtractConfig": "config",
    "BreakASceneError": "errors",
    "ConfigError": "errors",
    "RunError": "errors",
    "SceneError": "errors",
    "SceneWarning": "errors",
    "generate": "inference.generation",
    "load_pipeline": "inference.pipeline",
    "variations": "inference.generation",
    "export": "inference.exports",
    "edit": "inference.editing",
    "EditOptions": "inference.options",
    "GenerationOptions": "inference.options",
    "ExtractResult": "training.recipe",
    "Progress": "training.trainer",
    "extract": "training.recipe",
    "Scene": "scene",
    "load_scene": "scene",
    "load_scene_folder": "scene",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'breakascene' has no attribute {name!r}")
