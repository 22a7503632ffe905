"""Exports for the WebUI tools: ``comfyui``, ``a1111`` (also Forge) and ``kohya``, for SD 1.x / 2.x and SDXL runs,
and ``comfyui`` and ``kohya`` for FLUX.1 LoRA runs (:func:`flux_lora_state_dict`, embeddings under ``t5xxl``).

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

import re
from pathlib import Path

import torch

from ..errors import ConfigError, RunError
from ..run_info import RunInfo
from .loading_code import base_pipeline_lines, python_literal, single_file_config, t5_handle_lines

WEBUI_FORMATS = ("comfyui", "a1111", "kohya")

# Where each kind of file goes, relative to the tool's own folder.
FOLDERS = {
    "comfyui": {"checkpoint": "models/checkpoints", "lora": "models/loras", "embedding": "models/embeddings"},
    "a1111": {"checkpoint": "models/Stable-diffusion", "lora": "models/Lora", "embedding": "embeddings"},
    "kohya": {"checkpoint": ".", "lora": ".", "embedding": "."},
}
EMBEDDING_KEY = "emb_params"
FLUX_EMBEDDING_KEY = "t5xxl"  # what ComfyUI's T5-XXL tokenizer reads from an embedding file
T5_LORA_PREFIX = "lora_te3_"  # kohya sd-scripts' name for FLUX's T5 adapters, which ComfyUI and Forge map to T5-XXL
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


def webui_lora_state_dict(run: Path, info: RunInfo, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A LoRA run's adapters under the WebUI (kohya) keys that A1111, Forge and ComfyUI read.

    A module's diffusers path with ``.`` as ``_`` after ``lora_unet_`` (UNet) or ``lora_te_text_model_`` (the
    text encoder, its transformers path); ``lora_down`` is peft's A, ``lora_up`` its B, and ``.alpha`` the
    run's alpha. (diffusers' ``convert_state_dict_to_kohya`` writes alpha = rank, which a run with another
    ``--lora-alpha`` would not survive, and ``lora_te1_``, the SDXL name.)
    """
    from safetensors.torch import load_file

    lora = info.lora
    te_prefixes = ["lora_te1_", "lora_te2_"] if info.is_sdxl else ["lora_te_"]
    out: dict[str, torch.Tensor] = {}
    for key, value in load_file(str(run / lora.weights)).items():  # unet.<module>.lora.{down,up}.weight
        module, kind = key.removeprefix("unet.").rsplit(".lora.", 1)
        _add_kohya(out, "lora_unet_" + module.replace(".", "_"), kind.startswith("up"), value, lora.alpha, dtype)
    for prefix, file in zip(te_prefixes, (lora.text_encoder, lora.text_encoder_2)):
        for key, value in load_file(str(run / file)).items() if file else ():  # peft's keys:
            module, kind = key.removeprefix("text_model.").split(".lora_", 1)  # [text_model.]<m>.lora_A.default.weight
            _add_kohya(out, prefix + "text_model_" + module.replace(".", "_"), kind.startswith("B"), value,
                       lora.alpha, dtype)
    return out


def flux_lora_state_dict(run: Path, info: RunInfo, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A FLUX.1 LoRA run's adapters in one file that ComfyUI and diffusers read.

    The transformer's keep diffusers' PEFT keys, ``transformer.<module>.lora_A.weight`` / ``lora_B``, which ComfyUI
    maps onto FLUX's fused layers itself (diffusers' FLUX script writes them so), each with a ``.alpha`` (the run's);
    T5's (``--lora-text-encoder``) get kohya sd-scripts' FLUX names, ``lora_te3_<module>`` with
    ``lora_down``/``lora_up``, which ComfyUI maps to its T5-XXL.
    """
    from safetensors.torch import load_file

    lora = info.lora
    out: dict[str, torch.Tensor] = {}
    for key, value in load_file(str(run / lora.weights)).items():  # transformer.<module>.lora_{A,B}.weight
        out[key] = value.to(dtype).contiguous()
        out[key.rsplit(".lora_", 1)[0] + ".alpha"] = torch.tensor(float(lora.alpha))
    for key, value in load_file(str(run / lora.text_encoder_2)).items() if lora.text_encoder_2 else ():
        module, kind = key.split(".lora_", 1)  # peft's keys: <module>.lora_A.default.weight
        _add_kohya(out, T5_LORA_PREFIX + module.replace(".", "_"), kind.startswith("B"), value, lora.alpha, dtype)
    return out


def _add_kohya(out: dict, module: str, up: bool, value: torch.Tensor, alpha: float, dtype: torch.dtype) -> None:
    """One adapter matrix under kohya's names, ``<module>.lora_up`` (peft's B) or ``.lora_down`` (A), and its alpha."""
    out[f"{module}.lora_{'up' if up else 'down'}.weight"] = value.to(dtype).contiguous()
    out[f"{module}.alpha"] = torch.tensor(float(alpha))  # one tensor each: safetensors refuses shared ones


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
    from ..models.ldm_layout import text_layout
    from ..run_folder import HANDLES_FILE
    from .pipeline import load_pipeline

    name = export_name(run, name)
    dtype = torch.float16 if fp16 else torch.float32
    places = {kind: folder / sub for kind, sub in FOLDERS[format].items()}
    for place in places.values():
        place.mkdir(parents=True, exist_ok=True)
    if info.lora is not None:
        lora_state_dict = flux_lora_state_dict if info.is_flux else webui_lora_state_dict
        weights, kind = lora_state_dict(run, info, dtype), "lora"
        metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(info.lora.rank),
                    "ss_network_alpha": str(info.lora.alpha)}
    else:
        pipe = load_pipeline(run, "cpu", info=info)[0]
        weights, kind = checkpoint_state_dict(pipe, tokens, dtype), "checkpoint"
        metadata = modelspec(info, name, "sdxl" if info.is_sdxl else text_layout(pipe.text_encoder))
        if info.prediction_type == "v_prediction":
            weights["v_pred"] = torch.tensor([])  # ComfyUI's own marker of a v-prediction checkpoint
    save_file(weights, str(places[kind] / f"{name}.safetensors"), metadata=metadata)
    triggers = trigger_words(info, name)
    key = FLUX_EMBEDDING_KEY if info.is_flux else EMBEDDING_KEY
    tensors = embedding_files(vectors, load_second_handles(run / HANDLES_FILE), lambda k: key)
    for token, file_tensors in zip(tokens, tensors):
        save_file(file_tensors, str(places["embedding"] / f"{triggers[token]}.safetensors"))
    if info.is_flux:
        from .generation import run_sampling_defaults

        readme = _flux_readme(info, format, name, triggers, location, run_sampling_defaults(run, info)[1])
    else:
        readme = _readme(info, format, kind, name, triggers, location)
    (folder / "README.md").write_text(readme)


def _layout(format: str, kind: str, name: str, triggers: dict[str, str]) -> tuple[dict[str, str], str, str, str]:
    """What both READMEs name: the folder of each kind of file (``"models/loras/"``, ``""`` for kohya's flat one),
    the weights' path, the first trigger word, and the table of handles, trigger words and embedding files."""
    here = {k: ("" if sub == "." else f"{sub}/") for k, sub in FOLDERS[format].items()}
    table = "\n".join(f"| `{token}` | `{word}` | `{here['embedding']}{word}.safetensors` |"
                      for token, word in triggers.items())
    return here, f"{here[kind]}{name}.safetensors", next(iter(triggers.values())), table


def _readme(info: RunInfo, format: str, kind: str, name: str, triggers: dict[str, str], location: Path) -> str:
    """The README of a WebUI export: where each file goes, in ComfyUI and in A1111/Forge, and diffusers code."""
    lora = kind == "lora"
    here, weights, first, table = _layout(format, kind, name, triggers)
    comfy_weights, a1111_weights = FOLDERS["comfyui"][kind], FOLDERS["a1111"][kind]
    base = f"`{info.base_model}`, the base model this run was trained on"
    comfy_use = (f"Load {base}, with **Load Checkpoint**; then add **LoraLoader** with `{name}.safetensors` at "
                 "strength 1.0 for both model and clip" if lora else f"**Load Checkpoint** `{name}.safetensors`")
    a1111_use = (f"Select {base}, as the checkpoint and add `<lora:{name}:1>` to the prompt" if lora
                 else f"Select `{name}.safetensors` as the checkpoint")
    prompt = f"a photo of {first} at the beach"
    te_keys = "`lora_te1_*`, `lora_te2_*`" if info.is_sdxl else "`lora_te_*`"
    vae_note = ""
    if info.vae:
        vae_note = (f"This run replaced the base model's VAE with `{info.vae}` (`extract --vae`). " + (
            "Use it with the LoRA: **Load VAE** in ComfyUI (the file in `models/vae/`), the *SD VAE* setting in "
            "A1111/Forge (the file in `models/VAE/`)." if lora else "The checkpoint holds that VAE.") + "\n\n")
    return f"""# Break-A-Scene run `{name}` for ComfyUI, A1111 and Forge

This folder is laid out like {"a kohya sd-scripts output (flat)" if format == "kohya" else
f"the {'ComfyUI' if format == 'comfyui' else 'A1111/Forge'} folder: copy its contents into that folder"}.

- `{weights}`: {"a LoRA (WebUI keys `lora_unet_*`, " + te_keys + ")" if lora else
"the fine-tuned model as a single-file checkpoint"}. Put it in `{comfy_weights}/` (ComfyUI) or
  `{a1111_weights}/` (A1111, Forge).
- One textual-inversion embedding per handle. Put them in `models/embeddings/` (ComfyUI) or `embeddings/`
  (A1111, Forge). The trigger word is the file's name:

| handle | trigger word | file |
|---|---|---|
{table}

{vae_note}**The handles only work with the weights they were trained with:** {"this LoRA on " + base if lora else
"this checkpoint"}. Phase 2 of Break-A-Scene trains them together with the {"LoRA" if lora else "model"}; with
other weights they give at best a rough likeness.

## ComfyUI

{comfy_use}. In the prompt, write the handles as `embedding:{first}`, e.g. `a photo of embedding:{first}`.

## A1111 / Forge

{a1111_use}, and write the trigger words in the prompt as they are, e.g. `{prompt}`.

## diffusers

```python
{_diffusers_code(info, lora, here, name, triggers, location, prompt)}
```
"""


def _flux_readme(info: RunInfo, format: str, name: str, triggers: dict[str, str], location: Path,
                 guidance: float) -> str:
    """The README of a FLUX.1 LoRA run's ``comfyui`` or ``kohya`` export: where each file goes, and diffusers code.
    ``guidance``: the model's distilled guidance as ``generate`` samples it (0 for schnell, which has none)."""
    here, weights, first, table = _layout(format, "lora", name, triggers)
    t5 = " and T5's (`lora_te3_*`, kohya's names)" if info.lora.text_encoder_2 else ""
    clip = " and clip" if info.lora.text_encoder_2 else " (its clip strength does nothing: T5 has no adapters)"
    guidance = (f"**FluxGuidance** {guidance} (FLUX.1-dev's distilled guidance, as `generate` samples it), "
                if guidance else "")
    return f"""# Break-A-Scene run `{name}` for ComfyUI (FLUX.1)

This folder is laid out like {"a kohya sd-scripts output (flat)" if format == "kohya" else
"ComfyUI's folder: copy its contents into it"}.

- `{weights}`: a FLUX.1 LoRA, the transformer's adapters in diffusers' keys (`transformer.*.lora_A`/`lora_B`, with
  `.alpha`){t5}. Put it in `models/loras/`.
- One embedding per handle, its row in T5-XXL under `t5xxl`. Put them in `models/embeddings/`:

| handle | trigger word | file |
|---|---|---|
{table}

**The handles only work with the weights they were trained with:** this LoRA on `{info.base_model}`, the base
model this run was trained on. Phase 2 of Break-A-Scene trains them together with the LoRA.

## ComfyUI

Load the base model's transformer with **Load Diffusion Model** and its text encoders with **DualCLIPLoader**
(`clip_l` and `t5xxl`, type `flux`); add **LoraLoader** with `{name}.safetensors` at strength 1.0 for model{clip};
{guidance}and write the handles as `embedding:{first}`, e.g. `a photo of embedding:{first}`.

On FLUX a handle is a T5 token only (docs/method.md): ComfyUI's CLIP-L pass logs "shape mismatch when trying to
apply embedding, embedding will be ignored 4096 != 768" for it, which is expected.

A1111 does not run FLUX.1, so there is no `--format a1111` for FLUX runs.

## diffusers

```python
{_flux_diffusers_code(info, here, name, triggers, location, f"a photo of {first} at the beach")}
```
"""


def _flux_diffusers_code(info: RunInfo, here: dict[str, str], name: str, triggers: dict[str, str], location: Path,
                         prompt: str) -> str:
    """Python that loads a FLUX.1 LoRA export into a stock ``FluxPipeline`` and prompts with a handle."""
    imports, make_pipe = base_pipeline_lines(info.base_model, None, info.pipeline, info.vae)
    files = [here["embedding"] + word + ".safetensors" for word in triggers.values()]
    handle_imports, handle_lines = t5_handle_lines(list(triggers.values()), files, FLUX_EMBEDDING_KEY)
    lora = [f"lora = load_file(str(export / {python_literal(here['lora'] + name + '.safetensors')}))",
            'pipe.load_lora_weights({k: v for k, v in lora.items() if k.startswith("transformer.")})']
    if info.lora.text_encoder_2:
        lora += ["# T5's adapters (kohya's lora_te3_ names) merged into its weights: W += alpha / rank * up @ down",
                 'modules = {n.replace(".", "_"): m for n, m in pipe.text_encoder_2.named_modules()}',
                 f'for key in [k for k in lora if k.startswith("{T5_LORA_PREFIX}") and k.endswith(".lora_down.weight")]:',
                 "    module = key.removesuffix(\".lora_down.weight\")",
                 '    down, up = lora[key], lora[module + ".lora_up.weight"]',
                 "    with torch.no_grad():",
                 f'        modules[module.removeprefix("{T5_LORA_PREFIX}")].weight += '
                 'lora[module + ".alpha"] / down.shape[0] * up @ down']
    export = f"export = Path({python_literal(str(location))})  # this folder; change it if you move it"
    return "\n".join(["from pathlib import Path", "", *imports, *handle_imports, "", export, "", *make_pipe, *lora,
                      *handle_lines, f"image = pipe({python_literal(prompt)}).images[0]"])


def _diffusers_code(info: RunInfo, lora: bool, here: dict[str, str], name: str, triggers: dict[str, str],
                    location: Path, prompt: str) -> str:
    """Python that loads this export into a stock ``StableDiffusionPipeline`` and prompts with a handle."""
    weights = f"{here['lora' if lora else 'checkpoint']}{name}.safetensors"
    export = f"export = Path({python_literal(str(location))})  # this folder; change it if you move it"
    if lora:
        imports, make_pipe = base_pipeline_lines(info.base_model, info.prediction_type, info.pipeline, info.vae)
        make_pipe = [*make_pipe, f"pipe.load_lora_weights(str(export / {python_literal(weights)}))"]
    else:
        imports = [f"from diffusers import {info.pipeline}"]
        make_pipe = ["# the base model's configs (its diffusers folder or Hub id): the checkpoint holds only weights",
                     f"config = {single_file_config(info.base_model, info.prediction_type)}",
                     f"pipe = {info.pipeline}.from_single_file(str(export / {python_literal(weights)}), "
                     "config=config)",
                     "pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, "
                     f"prediction_type={python_literal(info.prediction_type or 'epsilon')})"]
    files = [python_literal(here["embedding"] + word + ".safetensors") for word in triggers.values()]
    if info.is_sdxl:  # each file holds both encoders' rows
        imports = [*imports, "from safetensors.torch import load_file"]
        embeddings = [f"for word, name in zip({list(triggers.values())!r}, [{', '.join(files)}]):",
                      "    rows = load_file(str(export / name))",
                      '    pipe.load_textual_inversion(rows["clip_l"], token=word, text_encoder=pipe.text_encoder, '
                      "tokenizer=pipe.tokenizer)",
                      '    pipe.load_textual_inversion(rows["clip_g"], token=word, text_encoder=pipe.text_encoder_2, '
                      "tokenizer=pipe.tokenizer_2)"]
    else:
        embeddings = [f"pipe.load_textual_inversion(str(export / {f}), token={python_literal(w)})"
                      for f, w in zip(files, triggers.values())]
    return "\n".join(["from pathlib import Path", "", *imports, "", export, "", *make_pipe, *embeddings,
                      f"image = pipe({python_literal(prompt)}).images[0]"])
