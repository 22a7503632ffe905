"""Loading the base model's components: Hub id, local diffusers folder, single .safetensors file, or tiny.

Stable Diffusion 1.x / 2.x, SDXL and FLUX.1 (a folder by its model_index.json; a single file, SD and SDXL only, by its
keys). What differs between model families is in :mod:`.families` (``Components.family``), and how a single
file is recognised in :mod:`.single_file`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, RunError, first_line
from ..hub import hub_options, is_hub_id, not_downloadable
from ..run_folder import check_pipeline_folder
from ..quiet import quiet_libraries
from .families import ModelFamily
from .families.registry import (DEFAULT_FAMILY, FAMILIES, family_of_builtin, family_of_pipeline_class,
                                 family_of_single_file)
from .single_file import check_prediction_type, inspect_single_file, single_file_config_source
from .shapes import SHAPES_FOLDER, SHAPES_MODEL_ID
from .vae import check_vae_reference, load_vae

quiet_libraries()  # every path that loads, trains or saves a model comes through this module

# A pipeline's parts that Components holds under the same name (the denoiser goes to Components.unet)
COMPONENT_NAMES = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "vae")


@dataclass
class Components:
    """The pieces of a pipeline that training touches; passed in explicitly, never global."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module  # the denoiser: a UNet, or FLUX's transformer (family.denoiser_name says which)
    vae: torch.nn.Module
    scheduler: object  # the pipeline's sampling scheduler; training builds a DDPMScheduler from its config
    prediction_source: str | None = None  # why the scheduler has its prediction type, for telling the user
    family: ModelFamily = DEFAULT_FAMILY  # how to encode prompts, call the UNet, save the pipeline
    tokenizer_2: object = None  # SDXL's second CLIP, FLUX's T5 tokenizer and text encoder; None for SD 1.x/2.x
    text_encoder_2: torch.nn.Module | None = None

    @property
    def native_resolution(self) -> int:
        return self.family.native_resolution(self.unet, self.vae)

    @property
    def prediction_type(self) -> str:
        """"epsilon" or "v_prediction" (the scheduler's), or "flow" for a flow-matching family (FLUX)."""
        return self.family.prediction_type or self.scheduler.config.get("prediction_type", "epsilon")


def check_model_reference(model: str) -> None:
    """Fails fast (before any download) on a reference that can be nothing: a missing path or a .ckpt file."""
    if family_of_builtin(model) is not None:
        return
    if model == SHAPES_MODEL_ID:
        shapes_folder()
        return
    path = Path(model).expanduser()
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise ConfigError(
            f"--model {model}: pickled checkpoints are not loaded (they can run code); convert it to .safetensors"
        )
    if path.exists():
        if path.is_file() and path.suffix != ".safetensors":
            raise ConfigError(f"--model {model} is a file but not .safetensors; give a diffusers folder or .safetensors")
        if path.is_dir() and not (path / "model_index.json").is_file():
            raise ConfigError(f"--model {model} is a folder without model_index.json; is it a diffusers pipeline folder?")
        return
    if path.suffix == ".safetensors" or not is_hub_id(model):
        raise ConfigError(f"--model {model}: no such file or folder, and not a Hub id like 'owner/name'")


def shapes_folder() -> Path:
    """The shipped ``builtin:shapes`` pipeline folder; ConfigError if this installation lacks it."""
    if not (SHAPES_FOLDER / "model_index.json").is_file():
        raise ConfigError(
            f"builtin:shapes is not in this installation ({SHAPES_FOLDER} is missing); train it with "
            f"`break-a-scene world train --out DIR` and pass --model DIR/pipeline"
        )
    return SHAPES_FOLDER


def _with_prediction_type(scheduler, prediction_type: str):
    """A copy of ``scheduler`` that predicts ``prediction_type``; everything else in its config is kept."""
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


def load_components(
    model: str, *, torch_dtype: torch.dtype = torch.float32, prediction_type: str | None = None,
    vae: str | None = None, quantize_base: str | None = None,
) -> Components:
    """Loads the base model on the CPU. A Hub id needs network access the first time (then it is cached).

    Args:
        model: a Hub id, a diffusers folder, a single ``.safetensors`` file (SD 1.x / 2.x / SDXL),
            ``builtin:tiny``, ``builtin:tiny-sdxl`` or ``builtin:shapes`` (the shipped folder, :mod:`.shapes`).
        torch_dtype: the weights' dtype.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` to override the model's; None to keep the
            folder's own value, or for a single file to detect it (see :func:`inspect_single_file`).
        vae: ``--vae``, a VAE that replaces the model's (:func:`.vae.load_vae`); None keeps the model's.
        quantize_base: ``"nf4"``: the denoiser in 4-bit NF4 on the current GPU (:mod:`.quantization`; the caller
            has checked that there is one); not for a single file.

    Returns:
        The components; ``prediction_source`` says where the prediction type came from (None for the tiny
        model when not given). A single file is loaded with the config of :data:`SINGLE_FILE_CONFIGS` (its
        config files are downloaded from the Hub once) and its scheduler gets the detected prediction type.
    """
    check_model_reference(model)
    if vae is not None:
        check_vae_reference(vae)  # before the base model is loaded, which can take minutes
    if quantize_base and Path(model).expanduser().is_file():
        raise ConfigError("--quantize-base nf4 needs the model as a diffusers folder or Hub id, not a single file")
    components = _load_base_components(model, torch_dtype, prediction_type, quantize_base)
    if vae is not None:
        components.vae = load_vae(vae, like=components.vae).to(dtype=torch_dtype)
    return components


def _load_base_components(model: str, torch_dtype: torch.dtype, prediction_type: str | None,
                          quantize_base: str | None = None) -> Components:
    requested = check_prediction_type(prediction_type)
    source = "from --prediction-type" if requested is not None else None
    builtin = family_of_builtin(model)
    if builtin is not None:
        components = Components(**builtin.build_builtin(model, requested), prediction_source=source, family=builtin)
        if quantize_base:
            from .quantization import quantized_copy

            components.unet = quantized_copy(components.unet)
        return components

    from diffusers.loaders.single_file_utils import SingleFileComponentError

    path = shapes_folder() if model == SHAPES_MODEL_ID else Path(model).expanduser()
    if path.is_dir():  # before diffusers reads it: a pickle where the weights should be is refused by name
        _check_model_folder(model, path)
    info = inspect_single_file(path, requested) if path.is_file() else None  # its ConfigError stays as it is
    config = single_file_config_source(info.family, info.prediction_type) if info is not None else None
    hub_id = config if info is not None else model  # what comes from the Hub, if anything
    hub = hub_options(hub_id)
    family = family_of_single_file(info.family) if info is not None else DEFAULT_FAMILY
    try:
        if info is not None:
            pipe = family.pipeline_class.from_single_file(
                str(path), config=config, dtype=torch_dtype, **family.pipeline_options, **hub
            )
        else:
            where = str(path) if path.exists() else model
            family = _folder_family(model, where, hub)
            denoiser = _quantized_denoiser(family, where, hub) if quantize_base else None
            pipe = family.pipeline_class.from_pretrained(
                where, dtype=torch_dtype, use_safetensors=True, **family.pipeline_options, **hub,
                **({family.denoiser_name: denoiser} if denoiser is not None else {})
            )
    except ConfigError:  # _folder_family's own message
        raise
    except NotImplementedError as error:
        if info is None or "meta tensor" not in str(error):
            raise
        # diffusers leaves the weights that the file lacks on the meta device and fails when it moves them.
        raise ConfigError(
            f"could not load --model {model}: it lacks weights that the {config} config needs "
            f"(a pruned or non-standard {info.family_name} checkpoint?)"
        ) from error
    except (OSError, ValueError, SingleFileComponentError) as error:  # missing repo, no network, bad file
        if hub.get("local_files_only"):
            raise not_downloadable(hub_id, "--model", "model" if info is None else "config") from error
        if info is not None:
            raise ConfigError(
                f"could not load --model {model} as an {info.family_name} file with the {config} config: "
                f"{first_line(error)} (that config is downloaded once and needs network access then)"
            ) from error
        raise ConfigError(
            f"could not load --model {model}: {first_line(error)} (a Hub id is downloaded once and needs network "
            "access then; or pass a local diffusers folder or a .safetensors file)"
        ) from error
    family.check_prediction_type(requested)
    denoiser = pipe.components[family.denoiser_name]
    if denoiser.config.in_channels != family.denoiser_input_channels(pipe.vae):
        raise ConfigError(f"--model {model} has a {denoiser.config.in_channels}-channel {type(denoiser).__name__} (an "
                          "inpainting or other conditioned model?); use a text-to-image model")
    scheduler = pipe.scheduler
    if info is not None:
        # Never what the config's scheduler says: that belongs to the config repo, not to this file.
        scheduler, source = _with_prediction_type(scheduler, info.prediction_type), info.prediction_source
    elif requested is not None:
        scheduler = _with_prediction_type(scheduler, requested)
    else:
        source = "from the model's scheduler config"
    parts = {name: pipe.components[name] for name in COMPONENT_NAMES if pipe.components.get(name) is not None}
    return Components(**parts, unet=denoiser, scheduler=scheduler, prediction_source=source, family=family)


def _quantized_denoiser(family: ModelFamily, where: str, hub: dict):
    """The folder's denoiser (its class as model_index.json names it) loaded in NF4 (computing in bf16, or fp16
    on a GPU without it)."""
    import diffusers
    from diffusers import DiffusionPipeline

    from .quantization import compute_dtype, load_quantized

    _, class_name = DiffusionPipeline.load_config(where, **hub)[family.denoiser_name]
    return load_quantized(getattr(diffusers, class_name), where, family.denoiser_name, compute_dtype(),
                          use_safetensors=True, **hub)


def _check_model_folder(model: str, path: Path) -> None:
    try:
        check_pipeline_folder(path, "give a diffusers folder with .safetensors weights")
    except RunError as error:
        raise ConfigError(f"--model {model}: {error}") from None


def pipeline_class_name(where: str, hub: dict | None = None) -> str:
    """The pipeline class a diffusers folder or Hub repo names in its model_index.json (for a Hub id only that
    file is downloaded); "" when it names none."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.load_config(where, **(hub or {})).get("_class_name", "")


def _folder_family(model: str, where: str, hub: dict) -> ModelFamily:
    """The family of a diffusers folder or Hub repo, by :func:`pipeline_class_name`."""
    class_name = pipeline_class_name(where, hub)
    family = family_of_pipeline_class(class_name)
    if family is None:
        supported = ", ".join(name for f in FAMILIES for name in f.pipeline_names)
        raise ConfigError(f"--model {model} is a {class_name or 'pipeline without a _class_name'}; "
                          f"Break-A-Scene trains {supported}")
    return family


PAPER_RESOLUTION = 512  # SD 2.1-base, the paper's model


def native_resolution(model: str) -> int | None:
    """The image size ``model`` was trained at, found without loading weights; None when only loading can tell
    (a Hub id that is not in the local cache).

    builtin:tiny: its :data:`~breakascene.models.tiny.TINY_RESOLUTION`; a diffusers folder (or a cached Hub id): the
    UNet's ``sample_size`` times the VAE's scale, or for FLUX the VAE's ``sample_size`` (1024); a single file: 768
    for SD 2.x v-prediction, else 512.
    """
    import json

    builtin = family_of_builtin(model)
    if builtin is not None:
        return builtin.builtin_models[model]
    if model == SHAPES_MODEL_ID:
        from .shapes import SHAPES_RESOLUTION

        return SHAPES_RESOLUTION
    path = Path(model).expanduser()
    if path.is_file():
        info = inspect_single_file(path)
        return family_of_single_file(info.family).single_file_resolution(info.family, info.prediction_type)
    def config_of(part: str) -> dict | None:  # a component's config.json, from the folder or the Hub cache
        if path.is_dir():
            file = path / part / "config.json"
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, f"{part}/config.json")
            file = Path(cached) if isinstance(cached, str) else None
        return json.loads(file.read_text()) if file is not None and file.is_file() else None

    try:
        vae, transformer = config_of("vae"), config_of("transformer")
        if transformer is not None:  # FLUX: its transformer has no sample size, its VAE has the image's
            return int(vae["sample_size"])
        sample_size = config_of("unet")["sample_size"]
        levels = len(vae["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: a config that is missing (None)
        return None  # loading the model will say what is wrong with it (or a Hub id is not cached)
    return int(sample_size if isinstance(sample_size, int) else sample_size[0]) * 2 ** (levels - 1)


def model_family(model: str) -> ModelFamily | None:
    """The family of ``model``, told without loading weights: a built-in model by its name, a single file by its
    keys, a folder (or a Hub id) by its model_index.json (a Hub id's is downloaded if not cached). None when it
    cannot be told (no such model, offline and not cached, damaged): loading it will say what is wrong."""
    if model == SHAPES_MODEL_ID:
        return DEFAULT_FAMILY
    builtin = family_of_builtin(model)
    if builtin is not None:
        return builtin
    path = Path(model).expanduser()
    try:
        if path.is_file():
            return family_of_single_file(inspect_single_file(path).family)
        class_name = pipeline_class_name(str(path), {}) if path.is_dir() else pipeline_class_name(model, hub_options(model))
    except (OSError, ValueError, ConfigError):
        return None
    return family_of_pipeline_class(class_name)


def default_resolution(model: str) -> int:
    """``--resolution`` when it is not given: the model's native size where it is known, else the paper's 512."""
    return native_resolution(model) or PAPER_RESOLUTION


def check_device(device: str | torch.device | None) -> torch.device:
    """``--device`` for every command: None gives the default device; a device this machine lacks is a ConfigError."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"--device {device!r} is not a device; use cuda, cuda:1, mps or cpu") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {device} asked for, but PyTorch sees no Apple GPU (MPS) here; use --device cpu")
    return resolved


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
