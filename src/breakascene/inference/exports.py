"""Exporting a finished run for other tools: textual-inversion embeddings, or a diffusers folder to share.

``textual-inversion`` writes, into ``out``:

* ``<name>.safetensors`` per handle: a single key, the token (``"<asset0>"``), holding a (1, dim) vector, the
  layout of diffusers' own textual-inversion training script, so ``pipe.load_textual_inversion(path)`` works;
* ``handles.safetensors`` (one (N, dim) tensor under ``"embeddings"``, tokens in the metadata) and
  ``tokens.txt`` (one token per line, in row order);
* ``README.md`` with loading code that runs as it is: the run's own base model (a Hub id, a folder, a single
  file, or ``builtin:tiny`` built with :func:`breakascene.models.tiny.build_tiny_components`) and this export's absolute
  path (:func:`.loading_code.base_pipeline_lines`).

A FLUX.1 run's files hold each handle's T5 row under ``t5`` (diffusers' FLUX scripts' key), and the README adds
them to T5 as training did (:func:`.loading_code.t5_handle_lines`).

The handles were trained jointly with the run's UNet and text encoder (phase 2), so on a stock base model they
only look roughly right: load them into the run's own pipeline for faithful results.

``diffusers`` writes a copy of the run's pipeline folder as safetensors (``--fp16``: fp16 weights saved as the
``fp16`` variant), plus ``handles.safetensors``, ``scene.json`` and a README that loads it from its absolute
path (or from the Hub repo it is pushed to).

``comfyui``, ``a1111`` and ``kohya`` write what those tools load (a single-file checkpoint or a WebUI LoRA, and
one embedding per handle): :mod:`.webui`. FLUX.1 runs: ``comfyui`` and ``kohya`` for LoRA runs (A1111 runs no FLUX,
and a full 12 B fine-tune goes as ``diffusers``).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import torch

from ..errors import ConfigError, RunError
from ..handles import load_handles
from ..run_folder import HANDLES_FILE, SCENE_FILE, check_clear_of_inputs, written_atomically
from ..run_info import RunInfo
from .loading_code import base_pipeline_lines, python_literal, t5_handle_lines
from .webui import WEBUI_FORMATS, export_name, write_webui

FORMATS = ("textual-inversion", "diffusers", "comfyui", "a1111", "kohya")
WEIGHT_FORMATS = ("diffusers", "comfyui", "a1111", "kohya")  # the ones --fp16 applies to

NOTE = (
    "The handles were trained jointly with this run's fine-tuned UNet and text encoder (phase 2 of "
    "Break-A-Scene), so they need the run's own UNet/text encoder to look right; in a stock base model they "
    "give only a rough likeness."
)


def _ti_readme(tokens: list[str], files: list[str], info: RunInfo, location: Path, run: Path) -> str:
    """The textual-inversion export's README; ``location`` is where the export ends up (absolute)."""
    if info.is_sdxl:
        return _ti_readme_sdxl(tokens, files, info, location, run)
    if info.is_flux:
        return _ti_readme_flux(tokens, files, info, location, run)
    imports, make_pipe = base_pipeline_lines(info.base_model, info.prediction_type, vae=info.vae)

    def head(*more_imports: str) -> str:  # each block runs on its own (a token can be added only once)
        return "\n".join(["from pathlib import Path", "", *imports, *more_imports, "",
                          f"export = Path({python_literal(str(location))})  # this folder; change it if you move it", "",
                          *make_pipe])

    one_by_one = "\n".join(f'    str(export / "{f}"),' for f in files)
    generate = shlex.join(["break-a-scene", "generate", str(run), f"a photo of {tokens[0]}"])
    return f"""# Break-A-Scene handles as textual-inversion embeddings

Tokens: {", ".join(f"`{t}`" for t in tokens)} (base model: `{info.base_model}`).

{NOTE} For faithful results generate with the run itself, `{generate}`
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


def _ti_readme_sdxl(tokens: list[str], files: list[str], info: RunInfo, location: Path, run: Path) -> str:
    """The README of an SDXL run's textual-inversion export: each file holds ``clip_l`` and ``clip_g``."""
    imports, make_pipe = base_pipeline_lines(info.base_model, info.prediction_type, info.pipeline, info.vae)
    code = "\n".join(["from pathlib import Path", "", *imports, "from safetensors.torch import load_file", "",
                      f"export = Path({python_literal(str(location))})  # this folder; change it if you move it", "",
                      *make_pipe,
                      f"for token, name in zip({tokens!r}, {files!r}):",
                      "    vectors = load_file(str(export / name))",
                      '    pipe.load_textual_inversion(vectors["clip_l"], token=token, text_encoder=pipe.text_encoder,',
                      "                                tokenizer=pipe.tokenizer)",
                      '    pipe.load_textual_inversion(vectors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,',
                      "                                tokenizer=pipe.tokenizer_2)",
                      f'image = pipe("a photo of {tokens[0]} at the beach").images[0]'])
    generate = shlex.join(["break-a-scene", "generate", str(run), f"a photo of {tokens[0]}"])
    return f"""# Break-A-Scene handles as SDXL textual-inversion embeddings

Tokens: {", ".join(f"`{t}`" for t in tokens)} (base model: `{info.base_model}`).

Each `<name>.safetensors` holds the handle's row in both SDXL text encoders: `clip_l` (1, 768 on SDXL) and
`clip_g` (1, 1280), the layout A1111, Forge and ComfyUI read. `handles.safetensors` holds all of them
(`embeddings`, `embeddings_2`) with the tokens in its metadata and in `tokens.txt`.

{NOTE} For faithful results generate with the run itself, `{generate}`.

```python
{code}
```
"""


def _ti_readme_flux(tokens: list[str], files: list[str], info: RunInfo, location: Path, run: Path) -> str:
    """The README of a FLUX.1 run's textual-inversion export: each file holds the handle's T5 row under ``t5``."""
    imports, make_pipe = base_pipeline_lines(info.base_model, info.prediction_type, info.pipeline, info.vae)
    handle_imports, handle_lines = t5_handle_lines(tokens, files, "t5")
    code = "\n".join(["from pathlib import Path", "", *imports, *handle_imports, "",
                      f"export = Path({python_literal(str(location))})  # this folder; change it if you move it", "",
                      *make_pipe, *handle_lines, f'image = pipe("a photo of {tokens[0]} at the beach").images[0]'])
    generate = shlex.join(["break-a-scene", "generate", str(run), f"a photo of {tokens[0]}"])
    return f"""# Break-A-Scene handles as FLUX.1 textual-inversion embeddings

Tokens: {", ".join(f"`{t}`" for t in tokens)} (base model: `{info.base_model}`).

Each `<name>.safetensors` holds the handle's row in FLUX.1's T5 encoder (`text_encoder_2`) under `t5`, (1, 4096)
on FLUX.1, the key diffusers' FLUX training scripts write. There is no `clip_l`: on FLUX a handle is a T5 token
only (CLIP gives just the pooled vector, which carries no per-token meaning; docs/method.md). `handles.safetensors`
holds all of them (`embeddings`) with the tokens in its metadata and in `tokens.txt`.

{NOTE.replace("UNet", "transformer")} For faithful results generate with the run itself, `{generate}`.

The code below adds each handle as training did: one T5 token that takes the space before it. diffusers'
`load_textual_inversion` adds a plain token instead, before which T5's SentencePiece puts a token of its own for
the space, a prompt the handles were not trained with.

```python
{code}
```
"""


def _diffusers_readme(tokens: list[str], fp16: bool, location: Path, repo_id: str | None = None,
                      pipeline: str = "StableDiffusionPipeline") -> str:
    """The diffusers export's README: loads it from ``location`` (absolute), or from ``repo_id`` once pushed."""
    variant = ', variant="fp16", dtype=torch.float16' if fp16 else ""
    where = python_literal(repo_id or str(location))
    other = f"\n# or this copy on disk: from_pretrained({python_literal(str(location))}{variant})" if repo_id else ""
    generate = shlex.join(["break-a-scene", "generate", str(location), f"a photo of {tokens[0]}"])
    return f"""# Break-A-Scene run: a {pipeline} that knows {", ".join(f"`{t}`" for t in tokens)}

```python
import torch
from diffusers import {pipeline}

pipe = {pipeline}.from_pretrained({where}{variant}){other}
image = pipe("a photo of {tokens[0]} at the beach").images[0]
```

The handle tokens are already in the tokenizer(s) and text encoder(s). This folder is also a break-a-scene run
folder (`scene.json`, `handles.safetensors`): `{generate}`.
"""


def _check_flux_format(info: RunInfo, format: str) -> None:
    """What a FLUX.1 run exports to: diffusers, textual inversion (``t5``), and for a LoRA run (FLUX's default)
    ComfyUI's and kohya's layout; A1111 runs no FLUX, and a full fine-tune's 12 B parameters go as a diffusers
    folder."""
    if format == "a1111":
        raise ConfigError("--format a1111: A1111 does not run FLUX.1; use --format comfyui, or --format diffusers")
    if format in WEBUI_FORMATS and info.lora is None:
        raise ConfigError(f"--format {format} takes FLUX.1 LoRA runs (extract's default on FLUX); export this full "
                          "fine-tune with --format diffusers")


def _check_push(repo_id: str | None) -> None:
    if repo_id is None:
        return
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError(
            f"--push-to-hub {repo_id} needs a Hugging Face token: run `hf auth login` (or `huggingface-cli login`) "
            "or set HF_TOKEN, then try again"
        )


def export(
    run: str | Path,
    out: str | Path,
    format: str = "textual-inversion",
    fp16: bool = False,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    name: str | None = None,
) -> Path:
    """Exports ``run`` to ``out`` in ``format`` (one of :data:`FORMATS`); returns ``out``.

    ``comfyui``, ``a1111`` and ``kohya`` are written by :func:`breakascene.inference.webui.write_webui`; ``name``
    is their file stem and trigger-word prefix (default: the run folder's name).

    Everything is written into ``<out>.partial`` and renamed at the end, so ``out`` appears only complete.
    ``push_to_hub``: also upload ``out`` to that Hub repo (needs a configured token; checked before any work).

    Raises:
        RunError: ``run`` is not a finished run folder; ``out`` exists without ``overwrite``.
        ConfigError: unknown format, ``fp16`` with textual-inversion, ``name`` not for a WebUI format or not a
            valid file stem, no Hub token for ``push_to_hub``.
    """
    info = RunInfo.read(run)
    run, out = Path(run), Path(out)
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if info.is_flux:
        _check_flux_format(info, format)
    if fp16 and format not in WEIGHT_FORMATS:
        raise ConfigError(f"--fp16 is for --format {', '.join(WEIGHT_FORMATS)}; textual-inversion vectors are kept "
                          "exactly (fp32)")
    if name is not None:
        if format not in WEBUI_FORMATS:
            raise ConfigError(f"--name is for --format {', '.join(WEBUI_FORMATS)} (their file names and trigger words)")
        export_name(run, name)  # a bad name fails before any work
    check_clear_of_inputs(out, [("run folder", run)])  # replacing out must never touch the run
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    _check_push(push_to_hub)
    tokens, vectors = load_handles(run / HANDLES_FILE)
    if not tokens or len(tokens) != vectors.shape[0]:
        raise RunError(f"{run / HANDLES_FILE} is damaged (tokens do not match the vectors); extract the scene again")

    location = Path(os.path.abspath(out))  # the READMEs name where the export ends up, not <out>.partial
    with written_atomically(out) as partial:
        if format == "textual-inversion":
            _write_textual_inversion(run, partial, tokens, vectors, info, location)
        elif format in WEBUI_FORMATS:
            write_webui(run, info, partial, tokens, vectors, format, fp16, location, name)
        else:
            _write_diffusers(run, info, partial, tokens, fp16, location, push_to_hub)
    if push_to_hub is not None:
        from huggingface_hub import create_repo, upload_folder

        create_repo(push_to_hub, private=private, exist_ok=True)
        upload_folder(repo_id=push_to_hub, folder_path=str(out), commit_message="Break-A-Scene export")
    return out


def _write_textual_inversion(
    run: Path, folder: Path, tokens: list[str], vectors: torch.Tensor, info: RunInfo, location: Path
) -> None:
    from safetensors.torch import save_file

    from ..handles import embedding_files, load_second_handles

    # SD: the token as the one key, diffusers' own layout (load_textual_inversion(file) finds the token); FLUX: "t5"
    tensors = embedding_files(vectors, load_second_handles(run / HANDLES_FILE),
                              (lambda k: "t5") if info.is_flux else (lambda k: tokens[k]))
    files = [token.strip("<>") + ".safetensors" for token in tokens]
    for name, file_tensors in zip(files, tensors):
        save_file(file_tensors, str(folder / name))
    shutil.copyfile(run / HANDLES_FILE, folder / HANDLES_FILE)
    (folder / "tokens.txt").write_text("\n".join(tokens) + "\n")
    (folder / "README.md").write_text(_ti_readme(tokens, files, info, location, Path(os.path.abspath(run))))


def _write_diffusers(
    run: Path, info: RunInfo, folder: Path, tokens: list[str], fp16: bool, location: Path, repo_id: str | None = None
) -> None:
    from .pipeline import load_pipeline

    dtype = torch.float16 if fp16 else torch.float32
    pipe = load_pipeline(run, "cpu", dtype, info=info)[0]  # a LoRA run comes out as a full pipeline, adapters fused
    pipe.save_pretrained(str(folder), safe_serialization=True, variant="fp16" if fp16 else None)
    shutil.copyfile(run / HANDLES_FILE, folder / HANDLES_FILE)
    shutil.copyfile(run / SCENE_FILE, folder / SCENE_FILE)
    (folder / "README.md").write_text(_diffusers_readme(tokens, fp16, location, repo_id, info.pipeline))
