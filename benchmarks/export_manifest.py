"""Every export of the tiny models' runs, hashed: for showing that a change leaves every exported byte as it was.

    python benchmarks/export_manifest.py runs RUNS            # once: 2 + 2-step runs of each family's tiny model
    python benchmarks/export_manifest.py export RUNS OUT a.json   # with the code before the change
    python benchmarks/export_manifest.py export RUNS OUT b.json   # with the code after it (the same OUT)
    diff a.json b.json

The runs are made once and exported by both versions, so only the exports are compared. READMEs name the
export's absolute path, so both exports go to the same OUT (emptied first). Each manifest maps every exported
file (format/run/path) to its SHA-256. A ``.safetensors`` file is hashed by its content (its tensors' names,
dtypes, shapes and bytes, and its metadata), not its bytes: safetensors writes the metadata's keys in the order
of a Rust hash map, which changes from one call to the next.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

# (run name, extract flags, the formats its family exports to)
ALL = ("textual-inversion", "diffusers", "comfyui", "a1111", "kohya")
RUNS = {
    "sd-full": (["--model", "builtin:tiny"], ALL),
    "sd-lora-te": (["--model", "builtin:tiny", "--lora-rank", "4", "--lora-text-encoder"], ALL),
    "sd-v-lora": (["--model", "builtin:tiny", "--prediction-type", "v_prediction", "--lora-rank", "4"], ALL),
    "sdxl-full": (["--model", "builtin:tiny-sdxl"], ALL),
    "sdxl-lora-te": (["--model", "builtin:tiny-sdxl", "--lora-rank", "4", "--lora-text-encoder"], ALL),
    "flux-lora-te": (["--model", "builtin:tiny-flux", "--lora-text-encoder"], ("textual-inversion", "diffusers",
                                                                               "comfyui", "kohya")),
    "flux-full": (["--model", "builtin:tiny-flux", "--lora-rank", "0"], ("textual-inversion", "diffusers")),
}


def make_runs(folder: Path) -> None:
    from breakascene.cli import main
    from breakascene.examples import write_shapes_example

    scene = write_shapes_example(folder / "scene")
    for name, (flags, _) in RUNS.items():
        code = main(["extract", str(scene), *flags, "--resolution", "128", "--phase1-steps", "2", "--phase2-steps",
                     "2", "--out", str(folder / name), "--quiet", "--overwrite"])
        assert code == 0, name


def export_all(runs: Path, out: Path) -> dict[str, str]:
    from breakascene.cli import main

    shutil.rmtree(out, ignore_errors=True)
    hashes = {}
    for name, (_, formats) in RUNS.items():
        for fmt in formats:
            for fp16 in ([], ["--fp16"]) if fmt != "textual-inversion" else ([],):
                target = out / f"{name}-{fmt}{'-fp16' if fp16 else ''}"
                assert main(["export", str(runs / name), "--format", fmt, *fp16, "--out", str(target)]) == 0
                for file in sorted(p for p in target.rglob("*") if p.is_file()):
                    hashes[str(file.relative_to(out))] = content_hash(file)
    return hashes


def content_hash(file: Path) -> str:
    """SHA-256 of a file's bytes, or of a safetensors file's content in a fixed order."""
    if file.suffix != ".safetensors":
        return hashlib.sha256(file.read_bytes()).hexdigest()
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(file), framework="pt") as f:
        digest.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
        for name in sorted(f.keys()):
            tensor = f.get_tensor(name)
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


if __name__ == "__main__":
    torch.set_num_threads(1)  # the runs bit for bit the same whatever the machine's load
    if sys.argv[1] == "runs":
        make_runs(Path(sys.argv[2]))
    else:
        Path(sys.argv[4]).write_text(json.dumps(export_all(Path(sys.argv[2]), Path(sys.argv[3])), indent=1,
                                                sort_keys=True) + "\n")
