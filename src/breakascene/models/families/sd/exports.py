"""SD 1.x / 2.x's export layouts: textual-inversion files under the token (diffusers' own layout), WebUI (kohya)
LoRA keys ``lora_unet_*`` / ``lora_te_*``, ``emb_params`` embeddings, and the READMEs that load them."""

from __future__ import annotations

from pathlib import Path

import torch

from ....run_info import RunInfo
from ..readme import NOTE, ExportReadme, python_literal

WEBUI_EMBEDDING_KEY = "emb_params"  # the textual-inversion file of kohya's scripts, which A1111/Forge/ComfyUI read
TEXT_LORA_PREFIXES = ("lora_te_",)  # the WebUI names of the text encoders' adapters, in text-encoder order


def textual_inversion_readme(ctx: ExportReadme) -> str:
    """The textual-inversion export's README: each file's only key is its token."""
    imports, make_pipe, tokens, files = ctx.base_imports, ctx.base_lines, ctx.tokens, ctx.files

    def head(*more_imports: str) -> str:  # each block runs on its own (a token can be added only once)
        return "\n".join(["from pathlib import Path", "", *imports, *more_imports, "", ctx.export_line, "",
                          *make_pipe])

    one_by_one = "\n".join(f'    str(export / "{f}"),' for f in files)
    return f"""# Break-A-Scene handles as textual-inversion embeddings

Tokens: {", ".join(f"`{t}`" for t in tokens)} (base model: `{ctx.info.base_model}`).

{NOTE} For faithful results generate with the run itself, `{ctx.generate_command}`
(or export it with `--format diffusers`: a folder that any diffusers code loads).

Load every handle from its own file into the base model:

```python
{head()}
pipe.load_textual_inversion([
{one_by_one}
])
image = pipe("a photo of {tokens[0]} at the beach").images[0]
```

(one file: `pipe.load_textual_inversion(str(export / "{files[0]}"))`; the token is the file's only key.)

Or all at once from `handles.safetensors` and `tokens.txt`:

```python
{head("from safetensors.torch import load_file")}

tokens = (export / "tokens.txt").read_text().split()
vectors = load_file(str(export / "handles.safetensors"))["embeddings"]  # (N, dim)
pipe.load_textual_inversion(list(vectors), token=tokens)
```

Do not give `handles.safetensors` itself to `load_textual_inversion`: it would read one multi-vector concept.
"""


def add_kohya(out: dict, module: str, up: bool, value: torch.Tensor, alpha: float, dtype: torch.dtype) -> None:
    """One adapter matrix under kohya's names, ``<module>.lora_up`` (peft's B) or ``.lora_down`` (A), and its alpha."""
    out[f"{module}.lora_{'up' if up else 'down'}.weight"] = value.to(dtype).contiguous()
    out[f"{module}.alpha"] = torch.tensor(float(alpha))  # one tensor each: safetensors refuses shared ones


def webui_lora_state_dict(run: Path, info: RunInfo, dtype: torch.dtype = torch.float32,
                          text_prefixes: tuple[str, ...] = TEXT_LORA_PREFIXES) -> dict[str, torch.Tensor]:
    """A LoRA run's adapters under the WebUI (kohya) keys that A1111, Forge and ComfyUI read.

    A module's diffusers path with ``.`` as ``_`` after ``lora_unet_`` (UNet) or ``lora_te_text_model_`` (the
    text encoder, its transformers path; ``text_prefixes`` name each text encoder's); ``lora_down`` is peft's
    A, ``lora_up`` its B, and ``.alpha`` the run's alpha. (diffusers' ``convert_state_dict_to_kohya`` writes
    alpha = rank, which a run with another ``--lora-alpha`` would not survive, and ``lora_te1_``, the SDXL name.)
    """
    from safetensors.torch import load_file

    lora = info.lora
    out: dict[str, torch.Tensor] = {}
    for key, value in load_file(str(run / lora.weights)).items():  # unet.<module>.lora.{down,up}.weight
        module, kind = key.removeprefix("unet.").rsplit(".lora.", 1)
        add_kohya(out, "lora_unet_" + module.replace(".", "_"), kind.startswith("up"), value, lora.alpha, dtype)
    for prefix, file in zip(text_prefixes, (lora.text_encoder, lora.text_encoder_2)):
        for key, value in load_file(str(run / file)).items() if file else ():  # peft's keys:
            module, kind = key.removeprefix("text_model.").split(".lora_", 1)  # [text_model.]<m>.lora_A.default.weight
            add_kohya(out, prefix + "text_model_" + module.replace(".", "_"), kind.startswith("B"), value,
                      lora.alpha, dtype)
    return out


def webui_readme(ctx: ExportReadme, text_keys: str, embedding_lines) -> str:
    """The README of a WebUI export: where each file goes, in ComfyUI and in A1111/Forge, and diffusers code.
    ``text_keys``: the LoRA's text-encoder keys in Markdown; ``embedding_lines(ctx, imports)``: (imports, lines)
    that load the embeddings into ``pipe``."""
    info, format, kind, name = ctx.info, ctx.format, ctx.kind, ctx.name
    lora = kind == "lora"
    first = ctx.first_word
    comfy_weights, a1111_weights = ctx.folders["comfyui"][kind], ctx.folders["a1111"][kind]
    base = f"`{info.base_model}`, the base model this run was trained on"
    comfy_use = (f"Load {base}, with **Load Checkpoint**; then add **LoraLoader** with `{name}.safetensors` at "
                 "strength 1.0 for both model and clip" if lora else f"**Load Checkpoint** `{name}.safetensors`")
    a1111_use = (f"Select {base}, as the checkpoint and add `<lora:{name}:1>` to the prompt" if lora
                 else f"Select `{name}.safetensors` as the checkpoint")
    prompt = f"a photo of {first} at the beach"
    vae_note = ""
    if info.vae:
        vae_note = (f"This run replaced the base model's VAE with `{info.vae}` (`extract --vae`). " + (
            "Use it with the LoRA: **Load VAE** in ComfyUI (the file in `models/vae/`), the *SD VAE* setting in "
            "A1111/Forge (the file in `models/VAE/`)." if lora else "The checkpoint holds that VAE.") + "\n\n")
    return f"""# Break-A-Scene run `{name}` for ComfyUI, A1111 and Forge

This folder is laid out like {"a kohya sd-scripts output (flat)" if format == "kohya" else
f"the {'ComfyUI' if format == 'comfyui' else 'A1111/Forge'} folder: copy its contents into that folder"}.

- `{ctx.weights}`: {"a LoRA (WebUI keys `lora_unet_*`, " + text_keys + ")" if lora else
"the fine-tuned model as a single-file checkpoint"}. Put it in `{comfy_weights}/` (ComfyUI) or
  `{a1111_weights}/` (A1111, Forge).
- One textual-inversion embedding per handle. Put them in `models/embeddings/` (ComfyUI) or `embeddings/`
  (A1111, Forge). The trigger word is the file's name:

| handle | trigger word | file |
|---|---|---|
{ctx.handle_table}

{vae_note}**The handles only work with the weights they were trained with:** {"this LoRA on " + base if lora else
"this checkpoint"}. Phase 2 of Break-A-Scene trains them together with the {"LoRA" if lora else "model"}; with
other weights they give at best a rough likeness.

## ComfyUI

{comfy_use}. In the prompt, write the handles as `embedding:{first}`, e.g. `a photo of embedding:{first}`.

## A1111 / Forge

{a1111_use}, and write the trigger words in the prompt as they are, e.g. `{prompt}`.

## diffusers

```python
{diffusers_code(ctx, prompt, embedding_lines)}
```
"""


def embedding_lines(ctx: ExportReadme, files: list[str], imports: list[str]) -> tuple[list[str], list[str]]:
    """(imports, lines) that load each WebUI embedding file (``files``, Python literals) into ``pipe``."""
    return imports, [f"pipe.load_textual_inversion(str(export / {f}), token={python_literal(w)})"
                     for f, w in zip(files, ctx.triggers.values())]


def diffusers_code(ctx: ExportReadme, prompt: str, embedding_lines) -> str:
    """Python that loads a WebUI export into a stock pipeline (the run's class) and prompts with a handle."""
    info = ctx.info
    lora = ctx.kind == "lora"
    weights = ctx.weights
    if lora:
        imports = ctx.base_imports
        make_pipe = [*ctx.base_lines, f"pipe.load_lora_weights(str(export / {python_literal(weights)}))"]
    else:
        imports = [f"from diffusers import {info.pipeline}"]
        make_pipe = ["# the base model's configs (its diffusers folder or Hub id): the checkpoint holds only weights",
                     f"config = {ctx.single_file_config}",
                     f"pipe = {info.pipeline}.from_single_file(str(export / {python_literal(weights)}), "
                     "config=config)",
                     "pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, "
                     f"prediction_type={python_literal(info.prediction_type or 'epsilon')})"]
    files = [python_literal(ctx.here["embedding"] + word + ".safetensors") for word in ctx.triggers.values()]
    imports, embeddings = embedding_lines(ctx, files, imports)
    return "\n".join(["from pathlib import Path", "", *imports, "", ctx.export_line, "", *make_pipe, *embeddings,
                      f"image = pipe({python_literal(prompt)}).images[0]"])
