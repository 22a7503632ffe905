"""FLUX.1's export layouts: a handle is a T5 row (``t5`` in a textual-inversion file, ``t5xxl`` in a ComfyUI
embedding), the transformer's LoRA keeps diffusers' PEFT keys with ``.alpha``, T5's adapters get kohya's
``lora_te3_*`` names; A1111 runs no FLUX, and a full fine-tune goes as a diffusers folder only."""

from __future__ import annotations

from pathlib import Path

import torch

from ....errors import ConfigError
from ....run_info import RunInfo
from ..readme import NOTE, ExportReadme, python_literal
from ..sd.exports import add_kohya

TEXTUAL_INVERSION_KEY = "t5"  # diffusers' FLUX training scripts' key
WEBUI_EMBEDDING_KEY = "t5xxl"  # what ComfyUI's T5-XXL tokenizer reads from an embedding file
T5_LORA_PREFIX = "lora_te3_"  # kohya sd-scripts' name for FLUX's T5 adapters, which ComfyUI and Forge map to T5-XXL


def check_export_format(format: str, lora_run: bool) -> None:
    """What a FLUX.1 run exports to: diffusers, textual inversion (``t5``), and for a LoRA run (FLUX's default)
    ComfyUI's and kohya's layout; A1111 runs no FLUX, and a full fine-tune's 12 B parameters go as a diffusers
    folder."""
    if format == "a1111":
        raise ConfigError("--format a1111: A1111 does not run FLUX.1; use --format comfyui, or --format diffusers")
    if format in ("comfyui", "kohya") and not lora_run:
        raise ConfigError(f"--format {format} takes FLUX.1 LoRA runs (extract's default on FLUX); export this full "
                          "fine-tune with --format diffusers")


def t5_handle_lines(words: list[str], files: list[str], key: str) -> tuple[list[str], list[str]]:
    """Python that puts a FLUX.1 run's handles into ``pipe``'s T5 as training did: ``words[k]`` becomes one token
    taking the space before it (SentencePiece would otherwise make that space a token of its own), with the row
    under ``key`` of ``export / files[k]``; a table with spare rows (T5-XXL's 32128 for 32100 tokens) is not cut.
    Returns (imports, lines)."""
    return ["import torch", "from safetensors.torch import load_file", "from transformers import AddedToken"], [
        "# the handles are T5 tokens: each takes the space before it (lstrip), as in training",
        f"words, files = {words!r}, {files!r}",
        "pipe.tokenizer_2.add_tokens([AddedToken(word, lstrip=True) for word in words])",
        "if len(pipe.tokenizer_2) > pipe.text_encoder_2.get_input_embeddings().num_embeddings:",
        "    pipe.text_encoder_2.resize_token_embeddings(len(pipe.tokenizer_2))",
        "table = pipe.text_encoder_2.get_input_embeddings().weight",
        "with torch.no_grad():",
        "    for word, name in zip(words, files):",
        f"        table[pipe.tokenizer_2.convert_tokens_to_ids(word)] = load_file(str(export / name))[{key!r}][0]",
    ]


def textual_inversion_readme(ctx: ExportReadme) -> str:
    """The README of a FLUX.1 run's textual-inversion export: each file holds the handle's T5 row under ``t5``."""
    tokens = ctx.tokens
    handle_imports, handle_lines = t5_handle_lines(tokens, ctx.files, TEXTUAL_INVERSION_KEY)
    code = "\n".join(["from pathlib import Path", "", *ctx.base_imports, *handle_imports, "",
                      ctx.export_line, "",
                      *ctx.base_lines, *handle_lines, f'image = pipe("a photo of {tokens[0]} at the beach").images[0]'])
    return f"""# Break-A-Scene handles as FLUX.1 textual-inversion embeddings

Tokens: {", ".join(f"`{t}`" for t in tokens)} (base model: `{ctx.info.base_model}`).

Each `<name>.safetensors` holds the handle's row in FLUX.1's T5 encoder (`text_encoder_2`) under `t5`, (1, 4096)
on FLUX.1, the key diffusers' FLUX training scripts write. There is no `clip_l`: on FLUX a handle is a T5 token
only (CLIP gives just the pooled vector, which carries no per-token meaning; docs/method.md). `handles.safetensors`
holds all of them (`embeddings`) with the tokens in its metadata and in `tokens.txt`.

{NOTE.replace("UNet", "transformer")} For faithful results generate with the run itself, `{ctx.generate_command}`.

The code below adds each handle as training did: one T5 token that takes the space before it. diffusers'
`load_textual_inversion` adds a plain token instead, before which T5's SentencePiece puts a token of its own for
the space, a prompt the handles were not trained with.

```python
{code}
```
"""


def lora_state_dict(run: Path, info: RunInfo, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
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
        add_kohya(out, T5_LORA_PREFIX + module.replace(".", "_"), kind.startswith("B"), value, lora.alpha, dtype)
    return out


def webui_readme(ctx: ExportReadme, guidance: float) -> str:
    """The README of a FLUX.1 LoRA run's ``comfyui`` or ``kohya`` export: where each file goes, and diffusers code.
    ``guidance``: the model's distilled guidance as ``generate`` samples it (0 for schnell, which has none)."""
    info, first = ctx.info, ctx.first_word
    t5 = " and T5's (`lora_te3_*`, kohya's names)" if info.lora.text_encoder_2 else ""
    clip = " and clip" if info.lora.text_encoder_2 else " (its clip strength does nothing: T5 has no adapters)"
    guidance = (f"**FluxGuidance** {guidance} (FLUX.1-dev's distilled guidance, as `generate` samples it), "
                if guidance else "")
    return f"""# Break-A-Scene run `{ctx.name}` for ComfyUI (FLUX.1)

This folder is laid out like {"a kohya sd-scripts output (flat)" if ctx.format == "kohya" else
"ComfyUI's folder: copy its contents into it"}.

- `{ctx.weights}`: a FLUX.1 LoRA, the transformer's adapters in diffusers' keys (`transformer.*.lora_A`/`lora_B`, with
  `.alpha`){t5}. Put it in `models/loras/`.
- One embedding per handle, its row in T5-XXL under `t5xxl`. Put them in `models/embeddings/`:

| handle | trigger word | file |
|---|---|---|
{ctx.handle_table}

**The handles only work with the weights they were trained with:** this LoRA on `{info.base_model}`, the base
model this run was trained on. Phase 2 of Break-A-Scene trains them together with the LoRA.

## ComfyUI

Load the base model's transformer with **Load Diffusion Model** and its text encoders with **DualCLIPLoader**
(`clip_l` and `t5xxl`, type `flux`); add **LoraLoader** with `{ctx.name}.safetensors` at strength 1.0 for model{clip};
{guidance}and write the handles as `embedding:{first}`, e.g. `a photo of embedding:{first}`.

On FLUX a handle is a T5 token only (docs/method.md): ComfyUI's CLIP-L pass logs "shape mismatch when trying to
apply embedding, embedding will be ignored 4096 != 768" for it, which is expected.

A1111 does not run FLUX.1, so there is no `--format a1111` for FLUX runs.

## diffusers

```python
{diffusers_code(ctx, f"a photo of {first} at the beach")}
```
"""


def diffusers_code(ctx: ExportReadme, prompt: str) -> str:
    """Python that loads a FLUX.1 LoRA export into a stock ``FluxPipeline`` and prompts with a handle."""
    files = [ctx.here["embedding"] + word + ".safetensors" for word in ctx.triggers.values()]
    handle_imports, handle_lines = t5_handle_lines(list(ctx.triggers.values()), files, WEBUI_EMBEDDING_KEY)
    lora = [f"lora = load_file(str(export / {python_literal(ctx.weights)}))",
            'pipe.load_lora_weights({k: v for k, v in lora.items() if k.startswith("transformer.")})']
    if ctx.info.lora.text_encoder_2:
        lora += ["# T5's adapters (kohya's lora_te3_ names) merged into its weights: W += alpha / rank * up @ down",
                 'modules = {n.replace(".", "_"): m for n, m in pipe.text_encoder_2.named_modules()}',
                 f'for key in [k for k in lora if k.startswith("{T5_LORA_PREFIX}") and k.endswith(".lora_down.weight")]:',
                 "    module = key.removesuffix(\".lora_down.weight\")",
                 '    down, up = lora[key], lora[module + ".lora_up.weight"]',
                 "    with torch.no_grad():",
                 f'        modules[module.removeprefix("{T5_LORA_PREFIX}")].weight += '
                 'lora[module + ".alpha"] / down.shape[0] * up @ down']
    return "\n".join(["from pathlib import Path", "", *ctx.base_imports, *handle_imports, "", ctx.export_line, "",
                      *ctx.base_lines, *lora, *handle_lines, f"image = pipe({python_literal(prompt)}).images[0]"])
