"""Python source for export READMEs: code that rebuilds a run's base model as a stock diffusers pipeline."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..models.families.readme import ExportReadme, python_literal
from ..run_info import RunInfo


def base_pipeline_lines(base_model: str, prediction_type: str | None = None,
                        pipeline: str = "StableDiffusionPipeline", vae: str | None = None) -> tuple[list[str], list[str]]:
    """Python that makes ``pipe``, the run's base model as a stock ``pipeline`` (the run's diffusers pipeline
    class, ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``) with the run's ``--vae`` if it had one:
    (imports, lines).

    A family's built-in model (``builtin:tiny``, ``builtin:tiny-sdxl``, ``builtin:tiny-flux``) is not a Hub id: it
    is built in code (with the run's prediction type, ``ModelFamily.builtin_pipeline_lines``); ``builtin:shapes`` is the package's own folder. A ``.safetensors`` file is loaded with
    ``from_single_file`` and the config breakascene used for it, with the run's prediction type set on the
    scheduler (the config's may differ); a folder that exists here by its absolute path; anything else as a
    Hub id.

    Raises nothing for a base model that is gone or damaged: the lines then name it as scene.json does.
    """
    imports, lines = _base_model_lines(base_model, prediction_type, pipeline)
    if vae is None:
        return imports, lines
    return imports + ["from diffusers import AutoencoderKL"], lines + vae_lines(vae, base_model, prediction_type)


def vae_lines(vae: str, base_model: str, prediction_type: str | None = None) -> list[str]:
    """Python that puts the run's ``--vae`` into ``pipe`` (a single file takes the base model's VAE config)."""
    path = Path(vae).expanduser()
    where = python_literal(os.path.abspath(path)) if path.exists() else python_literal(vae)
    if path.suffix == ".safetensors":
        return ["# the VAE this run used (extract --vae); a single file takes the base model's VAE config",
                f"vae_config = {single_file_config(base_model, prediction_type)}",
                f"pipe.vae = AutoencoderKL.from_single_file({where}, config=vae_config, subfolder=\"vae\")"]
    subfolder = ', subfolder="vae"' if path.is_dir() and not (path / "config.json").is_file() else ""
    return ["# the VAE this run used (extract --vae)",
            f"pipe.vae = AutoencoderKL.from_pretrained({where}{subfolder})"]


def _base_model_lines(base_model: str, prediction_type: str | None, pipeline: str) -> tuple[list[str], list[str]]:
    from ..models.families.registry import family_of_builtin
    from ..models.shapes import SHAPES_MODEL_ID
    from ..models.single_file import inspect_single_file, single_file_config_source

    imports = [f"from diffusers import {pipeline}"]
    family = family_of_builtin(base_model)
    if family is not None:
        return family.builtin_pipeline_lines(base_model, pipeline, prediction_type)
    if base_model == SHAPES_MODEL_ID:
        return imports + ["from breakascene.models.shapes import SHAPES_FOLDER"], [
            "# builtin:shapes ships inside the breakascene package as a diffusers folder",
            f"pipe = {pipeline}.from_pretrained(SHAPES_FOLDER)",
        ]
    path = Path(base_model).expanduser()
    where = python_literal(os.path.abspath(path)) if path.exists() else python_literal(base_model)
    if path.suffix == ".safetensors":
        lines = [f"pipe = {pipeline}.from_single_file({where})"]
        try:
            info = inspect_single_file(path, prediction_type) if path.is_file() else None
        except ConfigError:  # moved or damaged since the run: the README still says where the file was
            info = None
        if info is not None:
            config = python_literal(single_file_config_source(info.family, info.prediction_type))
            lines = [f"pipe = {pipeline}.from_single_file({where}, config={config})"]
        if prediction_type:
            lines.append(f"pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, "
                         f"prediction_type={python_literal(prediction_type)})")
        return imports, lines
    return imports, [f"pipe = {pipeline}.from_pretrained({where})"]


def single_file_config(base_model: str, prediction_type: str | None = None) -> str:
    """A Python expression for ``from_single_file``'s ``config``: the base model's diffusers folder or Hub id
    (for a single-file base model, the config breakascene loaded it with)."""
    from ..models.families.registry import family_of_builtin
    from ..models.shapes import SHAPES_FOLDER, SHAPES_MODEL_ID
    from ..models.single_file import inspect_single_file, single_file_config_source

    if family_of_builtin(base_model) is not None:
        return f'"DIFFUSERS_FOLDER"  # {base_model} is built in code: save_pretrained() it and name that folder'
    if base_model == SHAPES_MODEL_ID:
        return python_literal(str(SHAPES_FOLDER))
    path = Path(base_model).expanduser()
    if path.suffix == ".safetensors" and path.is_file():
        try:
            info = inspect_single_file(path, prediction_type)
            return python_literal(single_file_config_source(info.family, info.prediction_type))
        except ConfigError:
            pass
    return python_literal(str(path.resolve()) if path.exists() else base_model)


def export_readme(info: RunInfo, run: Path, location: Path, tokens: list[str], files: list[str],
                  **webui) -> ExportReadme:
    """What the run's family writes an export's README from: the base model's loading code for ``info``, with
    ``run`` and ``location`` (absolute) and, for a WebUI export, ``webui``'s fields of :class:`ExportReadme`."""
    imports, lines = base_pipeline_lines(info.base_model, info.prediction_type, info.pipeline, info.vae)
    return ExportReadme(info=info, run=run, location=location, tokens=tokens, files=files, base_imports=imports,
                        base_lines=lines, single_file_config=single_file_config(info.base_model, info.prediction_type),
                        **webui)
