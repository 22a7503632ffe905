"""A finished run folder as a loaded pipeline: its precision, its sampler, and the LoRA runs' merge."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import ConfigError, RunError, first_line
from ..models.loading import check_device
from ..run_folder import check_pipeline_folder
from ..run_info import RunInfo

SCHEDULERS = ("default", "ddim", "dpm")
"""``default``: the run's saved scheduler; ``ddim``: DDIM from its config (the research code);
``dpm``: DPM-Solver++ (multistep) from its config."""
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` -> torch dtype; fp16 only on a GPU (CPU half-precision kernels are missing).

    ``device`` goes through :func:`models.check_device`, so a device this machine lacks is a ConfigError here,
    before any model is loaded.
    """
    if isinstance(dtype, torch.dtype):
        torch_dtype = dtype
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise ConfigError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    kind = check_device(device).type
    if torch_dtype == torch.float16 and kind == "cpu":
        raise ConfigError("--dtype fp16 needs a GPU (cuda or mps); on CPU use fp32 (default) or bf16")
    return torch_dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``fp16`` (the ``--dtype`` name), any other dtype as torch prints it."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def make_scheduler(name: str, default):
    """The sampling scheduler for ``--scheduler NAME`` built from the run's own (``default``) scheduler config."""
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if name == "default":
        return default
    if name == "ddim":
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(default.config)
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(default.config, algorithm_type="dpmsolver++")


@contextlib.contextmanager
def sampling_scheduler(pipe, name: str):
    """``pipe`` samples with :func:`make_scheduler`'s ``name`` for a while; its own scheduler is put back after."""
    saved = pipe.scheduler
    pipe.scheduler = make_scheduler(name, saved)
    try:
        yield pipe
    finally:
        pipe.scheduler = saved


def load_pipeline(run: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                  info: RunInfo | None = None):
    """Loads a run folder as its family's pipeline (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``)
    on ``device``; returns (pipeline, its :class:`RunInfo`).

    ``info``: the run's scene.json when the caller has read it already (it is read otherwise).

    The pipeline's own progress bar is off (callers count steps themselves, see :class:`StepProgress`).

    Raises:
        ConfigError: ``device`` is not on this machine (checked before anything is loaded).
        RunError: the run folder is missing, unfinished or damaged.
    """
    target = check_device(device)
    info = info if info is not None else RunInfo.read(run)
    if info.lora is not None:
        pipe = load_lora_run(Path(run), info).to(dtype=dtype)
    else:
        check_pipeline_folder(run, "extract the scene again")
        try:
            family = run_family(Path(run))
            pipe = family.pipeline_class.from_pretrained(str(run), dtype=dtype, use_safetensors=True,
                                                         **family.pipeline_options)
        except (OSError, ValueError, RuntimeError) as error:  # a truncated or damaged weights file, a bad config
            raise RunError(f"the run folder {run} could not be loaded ({first_line(error)}); extract the scene again") from error
    pipe = pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    return pipe, info


def run_family(run: Path):
    """The model family of a full run folder, by its model_index.json."""
    from ..models.families.registry import family_of_pipeline_class
    from ..models.loading import pipeline_class_name

    class_name = pipeline_class_name(str(run))
    family = family_of_pipeline_class(class_name)
    if family is None:
        raise RunError(f"the run folder {run} holds a {class_name or 'pipeline of no known class'}; "
                       "extract the scene again")
    return family


def load_lora_run(run: Path, info: RunInfo):
    """A LoRA run (``extract --lora-rank``): the base model, plus the handles, plus the adapters (fused)."""
    from ..handles import add_learned_handles, load_handles, load_second_handles
    from ..lora import merge_text_encoder_lora
    from ..models.families.registry import family_of_run
    from ..models.loading import load_components
    from ..run_folder import HANDLES_FILE

    # a family whose prediction type is fixed (FLUX.1's flow) takes no --prediction-type
    prediction_type = info.prediction_type if family_of_run(info).prediction_type is None else None
    components = load_components(info.base_model, prediction_type=prediction_type, vae=info.vae)
    family = components.family
    tokens, vectors = load_handles(run / HANDLES_FILE)
    tables = [vectors, load_second_handles(run / HANDLES_FILE)]  # the second: SDXL's second text encoder's rows
    # each handle table into its encoder: SD one, SDXL two (the same tokens in both), FLUX T5's
    for tokenizer, encoder, table in zip(family.tokenizers(components), family.text_encoders(components), tables):
        add_learned_handles(tokenizer, encoder, tokens, table)
    pipe = family.make_pipeline(components)
    pipe.load_lora_weights(str(run), weight_name=info.lora.weights)
    pipe.fuse_lora()  # plain weights again: generation runs at the base model's speed
    pipe.unload_lora_weights()
    for name, file in (("text_encoder", info.lora.text_encoder), ("text_encoder_2", info.lora.text_encoder_2)):
        if file:
            merge_text_encoder_lora(getattr(pipe, name), run / file)
    return pipe
