"""SDXL's export layouts: each embedding file holds a handle's row in both text encoders (``clip_l``, ``clip_g``),
the LoRA's text adapters are ``lora_te1_*`` / ``lora_te2_*``; the rest is SD's (:mod:`..sd.exports`)."""

from __future__ import annotations

from ..readme import NOTE, ExportReadme

TEXT_LORA_PREFIXES = ("lora_te1_", "lora_te2_")


def textual_inversion_readme(ctx: ExportReadme) -> str:
    """The README of an SDXL run's textual-inversion export: each file holds ``clip_l`` and ``clip_g``."""
    tokens, files = ctx.tokens, ctx.files
    code = "\n".join(["from pathlib import Path", "", *ctx.base_imports, "from safetensors.torch import load_file", "",
                      ctx.export_line, "",
                      *ctx.base_lines,
                      f"for token, name in zip({tokens!r}, {files!r}):",
                      "    vectors = load_file(str(export / name))",
                      '    pipe.load_textual_inversion(vectors["clip_l"], token=token, text_encoder=pipe.text_encoder,',
                      "                                tokenizer=pipe.tokenizer)",
                      '    pipe.load_textual_inversion(vectors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,',
                      "                                tokenizer=pipe.tokenizer_2)",
                      f'image = pipe("a photo of {tokens[0]} at the beach").images[0]'])
    return f"""# Break-A-Scene handles as SDXL textual-inversion embeddings

Tokens: {", ".join(f"`{t}`" for t in tokens)} (base model: `{ctx.info.base_model}`).

Each `<name>.safetensors` holds the handle's row in both SDXL text encoders: `clip_l` (1, 768 on SDXL) and
`clip_g` (1, 1280), the layout A1111, Forge and ComfyUI read. `handles.safetensors` holds all of them
(`embeddings`, `embeddings_2`) with the tokens in its metadata and in `tokens.txt`.

{NOTE} For faithful results generate with the run itself, `{ctx.generate_command}`.

```python
{code}
```
"""


def embedding_lines(ctx: ExportReadme, files: list[str], imports: list[str]) -> tuple[list[str], list[str]]:
    """(imports, lines) that load each WebUI embedding file (``files``, Python literals) into both encoders."""
    return [*imports, "from safetensors.torch import load_file"], [
        f"for word, name in zip({list(ctx.triggers.values())!r}, [{', '.join(files)}]):",
        "    rows = load_file(str(export / name))",
        '    pipe.load_textual_inversion(rows["clip_l"], token=word, text_encoder=pipe.text_encoder, '
        "tokenizer=pipe.tokenizer)",
        '    pipe.load_textual_inversion(rows["clip_g"], token=word, text_encoder=pipe.text_encoder_2, '
        "tokenizer=pipe.tokenizer_2)"]
