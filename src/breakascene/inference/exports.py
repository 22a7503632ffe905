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
from ..models.families.readme import python_literal
from ..models.families.registry import family_of_run
from .loading_code import export_readme
from .webui import WEBUI_FORMATS, export_name, write_webui

FORMATS = ("textual-inversion", "diffusers", "comfyui", "a1111", "kohya")
WEIGHT_FORMATS = ("diffusers", "comfyui", "a1111", "kohya")  # the ones --fp16 applies to

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
    family_of_run(info).check_export_format(format, info.lora is not None)
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

    family = family_of_run(info)
    tensors = embedding_files(vectors, load_second_handles(run / HANDLES_FILE),
                              lambda k: family.textual_inversion_key(tokens[k]))
    files = [token.strip("<>") + ".safetensors" for token in tokens]
    for name, file_tensors in zip(files, tensors):
        save_file(file_tensors, str(folder / name))
    shutil.copyfile(run / HANDLES_FILE, folder / HANDLES_FILE)
    (folder / "tokens.txt").write_text("\n".join(tokens) + "\n")
    facts = export_readme(info, Path(os.path.abspath(run)), location, tokens, files)
    (folder / "README.md").write_text(family.textual_inversion_readme(facts))


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
