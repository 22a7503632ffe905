"""Exports for the WebUI tools: ``comfyui``, ``a1111`` (also Forge) and ``kohya``, for SD 1.x / 2.x and SDXL runs,
and ``comfyui`` and ``kohya`` for FLUX.1 LoRA runs (embeddings under ``t5xxl``). The keys, the embedding layout and
the README are the run's family's (``models/families/<name>/exports.py``); this module lays out the folders.

All three write the same files, in the folder tree of the tool they are named after (so that the export's
contents can be copied into that tool's folder as they are; ``kohya`` is flat, like sd-scripts' output):

* the weights, ``<name>.safetensors``: for a LoRA run (``extract --lora-rank``), a LoRA with the WebUI
  (kohya) keys ``lora_unet_*`` and ``lora_te_*`` (SDXL: ``lora_te1_*``, ``lora_te2_*``), each with its
  ``.alpha``; for a full fine-tune, a single-file checkpoint in the original layout
  (:mod:`breakascene.models.ldm_layout`), with the base model's token tables (the handles are not in a stock
  tokenizer, so their rows travel as embeddings instead) and SAI modelspec metadata that says its architecture
  and prediction type;
* one embedding per handle, ``<name>_<handle>.safetensors``, float32: ``emb_params`` (1, dim), the
  textual-inversion file of kohya's scripts, or for SDXL ``clip_l`` (1, 768) and ``clip_g`` (1, 1280); A1111,
  Forge and ComfyUI read both. A WebUI's trigger word is the file's name, so the run's name keeps two runs'
  ``asset0`` apart in one embeddings folder;
* ``README.md``: which file goes where in ComfyUI and in A1111/Forge, the trigger words, and diffusers code.

diffusers loads all of it back to the run's own weights (tests/test_webui_export.py): the checkpoint with
``from_single_file`` (the base model's config), the LoRA with ``load_lora_weights``, and an embedding with
``load_textual_inversion(file, token=...)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import ConfigError, RunError
from ..run_info import RunInfo
from ..models.families.registry import family_of_run
from .loading_code import export_readme

WEBUI_FORMATS = ("comfyui", "a1111", "kohya")

# Where each kind of file goes, relative to the tool's own folder.
FOLDERS = {
    "comfyui": {"checkpoint": "models/checkpoints", "lora": "models/loras", "embedding": "models/embeddings"},
    "a1111": {"checkpoint": "models/Stable-diffusion", "lora": "models/Lora", "embedding": "embeddings"},
    "kohya": {"checkpoint": ".", "lora": ".", "embedding": "."},
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def export_name(run: Path, name: str | None) -> str:
    """The files' stem: ``name`` (checked), or the run folder's name with anything but letters, digits, ``-``
    and ``_`` replaced by ``-``."""
    if name is not None:
        if not _NAME.match(name):
            raise ConfigError(f"--name {name!r}: use letters, digits, '-' and '_' (it becomes file names and "
                              "trigger words), starting with a letter or digit")
        return name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", run.resolve().name).strip("-_")
    return stem or "break-a-scene"


def trigger_words(info: RunInfo, name: str) -> dict[str, str]:
    """Handle token (``<asset0>``) -> the WebUI trigger word (``<name>_asset0``), in handle order."""
    return {h.token: f"{name}_{h.name}" for h in info.handles}


def checkpoint_state_dict(pipe, tokens: list[str], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A full run's pipeline as one LDM-layout checkpoint, its token table cut back to the base vocabulary.

    The handles are the tokenizer's last ``len(tokens)`` ids (they were added after the base vocabulary);
    phase 2 never trains the table's other rows, so what is cut is exactly the handles.
    """
    from ..models.ldm_layout import single_file_state_dict

    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    base_size = len(pipe.tokenizer) - len(tokens)
    if sorted(ids) != list(range(base_size, len(pipe.tokenizer))):
        raise RunError("the run's handle tokens are not the last ids of its tokenizer; extract the scene again")
    state = single_file_state_dict(pipe.unet, pipe.vae, pipe.text_encoder,
                                   text_encoder_2=getattr(pipe, "text_encoder_2", None))
    for table in [key for key in state if key.endswith("token_embedding.weight")]:  # SDXL has two
        state[table] = state[table][:base_size].contiguous()
    return {key: value.to(dtype) for key, value in state.items()}


def lora_metadata(info: RunInfo, base_model: dict[str, str]) -> dict[str, str]:
    """The ``ss_*`` metadata kohya sd-scripts writes into a LoRA that a run's facts give: the network, the base
    model (``base_model``: the family's ``ss_base_model_version`` and ``ss_v2``, which A1111 reads to list the LoRA
    with models of its kind), resolution, steps and v-prediction."""
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(info.lora.rank),
            "ss_network_alpha": str(info.lora.alpha), **base_model,
            "ss_resolution": f"({info.resolution}, {info.resolution})", "ss_steps": str(info.total_steps),
            "ss_v_parameterization": str(info.prediction_type == "v_prediction")}


def modelspec(info: RunInfo, name: str, layout: str) -> dict[str, str]:
    """SAI ModelSpec metadata (Stability-AI/ModelSpec) for a checkpoint: its architecture and prediction type,
    which WebUI tools and :func:`breakascene.models.single_file.inspect_single_file` read."""
    v = info.prediction_type == "v_prediction"
    architecture = {"clip": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}.get(
        layout, "stable-diffusion-v2-768-v" if v else "stable-diffusion-v2-512")
    return {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
            "modelspec.implementation": "diffusers", "modelspec.title": name,
            "modelspec.prediction_type": "v" if v else "epsilon",
            "modelspec.resolution": f"{info.resolution}x{info.resolution}"}


def write_webui(run: Path, info: RunInfo, folder: Path, tokens: list[str], vectors: torch.Tensor, format: str,
                fp16: bool, location: Path, name: str | None = None) -> None:
    """Writes a ``comfyui``, ``a1111`` or ``kohya`` export of ``run`` into ``folder`` (see the module docstring).

    ``location``: where the export ends up (absolute), for the README.
    """
    from safetensors.torch import save_file

    from ..handles import embedding_files, load_second_handles
    from ..run_folder import HANDLES_FILE
    from .pipeline import load_pipeline

    name = export_name(run, name)
    dtype = torch.float16 if fp16 else torch.float32
    places = {kind: folder / sub for kind, sub in FOLDERS[format].items()}
    for place in places.values():
        place.mkdir(parents=True, exist_ok=True)
    family = family_of_run(info)
    if info.lora is not None:
        weights, kind = family.webui_lora_state_dict(run, info, dtype), "lora"
        metadata = lora_metadata(info, family.kohya_base_model(vectors.shape[1]))
    else:
        pipe = load_pipeline(run, "cpu", info=info)[0]
        weights, kind = checkpoint_state_dict(pipe, tokens, dtype), "checkpoint"
        metadata = modelspec(info, name, family.checkpoint_layout(pipe))
        if info.prediction_type == "v_prediction":
            weights["v_pred"] = torch.tensor([])  # ComfyUI's own marker of a v-prediction checkpoint
    save_file(weights, str(places[kind] / f"{name}.safetensors"), metadata=metadata)
    triggers = trigger_words(info, name)
    tensors = embedding_files(vectors, load_second_handles(run / HANDLES_FILE), lambda k: family.webui_embedding_key)
    for token, file_tensors in zip(tokens, tensors):
        save_file(file_tensors, str(places["embedding"] / f"{triggers[token]}.safetensors"))
    here = {k: ("" if sub == "." else f"{sub}/") for k, sub in FOLDERS[format].items()}
    facts = export_readme(info, Path(os.path.abspath(run)), location, tokens,
                          [f"{here['embedding']}{word}.safetensors" for word in triggers.values()],
                          format=format, kind=kind, name=name, triggers=triggers, here=here, folders=FOLDERS)
    (folder / "README.md").write_text(family.webui_readme(facts))
