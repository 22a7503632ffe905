"""The web app's logic, without gradio: everything ``ui.py`` does that is not layout, as small functions.

Read top to bottom:

* binding: :func:`launch_options` picks the address the server listens on (loopback unless asked);
* names and text: run names (:func:`sanitize_run_name`), handle names, prompts built from handle chips;
* masks: brush layers of an image editor -> ``(H, W)`` bool masks; clicks -> SAM point groups and boxes;
* the run folders the app knows: finished runs, interrupted runs it can resume (:func:`list_runs`), the
  inputs saved for resuming (:func:`save_job`/:func:`load_job`), zips for download (:func:`zip_folder`);
* messages: every text the page shows is escaped for where it goes (:func:`message_html` for gradio's toasts,
  :func:`markdown_text`/:func:`markdown_code` for Markdown), so ``<asset0>`` shows as itself, never as a tag;
* the Extract tab's defaults, which follow the model (:func:`training_defaults`, :func:`follow_model`), and the
  estimated duration of a run from measured step times (:func:`estimate_text`);
* training: :class:`TrainingWorker` runs one ``extract`` at a time in a thread, publishes a
  :class:`TrainingStatus` after every step, and stops at the next step when cancelled.

No function here imports gradio, so the tests of all this run without a browser or a server.
"""

from __future__ import annotations

import dataclasses
import html
import ipaddress
import json
import os
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .errors import ConfigError, RunError, SceneError
from .scene_folder import find_scene_files, write_scene_folder

LOOPBACK_NAMES = ("localhost",)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
JOBS_DIR = ".ui-jobs"  # inside the runs folder: the inputs of runs started here, so they can be resumed
JOB_FILE = "job.json"
RUN_NAME_LIMIT = 64


# ----------------------------------------------------------------------------------------------------------
# Binding: loopback unless the user asks


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback address (``127.0.0.0/8``, ``::1``)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def launch_options(host: str | None = None, port: int = DEFAULT_PORT, share: bool = False) -> tuple[dict, list[str]]:
    """The keyword arguments for ``Blocks.launch`` and the warnings to print before launching.

    The address is always passed explicitly, so gradio's own ``GRADIO_SERVER_NAME`` / ``GRADIO_SHARE``
    environment variables can never widen it: the server listens on 127.0.0.1 unless ``host`` (``--host``)
    or ``share`` (``--share``) says otherwise.

    Raises:
        ConfigError: a port outside 1..65535 or an empty host.
    """
    host = DEFAULT_HOST if host is None else host.strip()
    if not host:
        raise ConfigError("--host is empty; leave it out to listen on 127.0.0.1 only")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"--port {port} must be between 1 and 65535")
    warnings = []
    if not is_loopback(host):
        warnings.append(
            f"listening on {host}: anyone who can reach this machine on port {port} can use the app, read "
            "your runs and start trainings (there is no login); leave out --host to stay on 127.0.0.1"
        )
    if share:
        warnings.append(
            "--share makes a public *.gradio.live link: anyone with the link can use the app and read your runs"
        )
    return {"server_name": host, "server_port": int(port), "share": bool(share)}, warnings


# ----------------------------------------------------------------------------------------------------------
# Names and prompts


def sanitize_run_name(text: str | None) -> str:
    """A run name that is one plain folder name: letters, digits, ``-`` and ``_`` (others become ``-``).

    ``"my scene/../x"`` -> ``"my-scene-x"``. Dots are replaced too, so the result can never be ``..``, hidden,
    or end in ``.partial``.

    Raises:
        ConfigError: nothing usable is left.
    """
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", str(text or "").strip())
    name = re.sub(r"-{2,}", "-", name).strip("-_")[:RUN_NAME_LIMIT].strip("-_")
    if not name:
        raise ConfigError("give the run a name (letters, digits, '-' and '_'), e.g. my-scene")
    return name


def parse_word_list(text: str | None, count: int, what: str, commas_only: bool = False) -> list[str] | None:
    """``"dog, red_shirt"`` or ``"dog red_shirt"`` -> ``["dog", "red_shirt"]``; empty text -> None (the default).

    With ``commas_only`` (init words, which may be phrases) only commas separate: ``"dog, red shirt"``.

    Raises:
        ConfigError: a number of words other than ``count`` (one per mask).
    """
    separators = r"\s*,\s*" if commas_only else r"[,\s]+"
    words = [w for w in re.split(separators, str(text or "").strip()) if w]
    if not words:
        return None
    if len(words) != count:
        listed = ", ".join(words)
        raise ConfigError(f"{count} masks but {len(words)} {what} ({listed}); give one per mask, in mask order")
    return words


def mask_labels(names_text: str | None, count: int) -> list[str]:
    """Labels for the preview and stats: the handle tokens, ``<asset0>``, ... unless the names parse."""
    try:
        names = parse_word_list(names_text, count, "names")
    except ConfigError:
        names = None
    return [f"<{n}>" for n in (names or [f"asset{i}" for i in range(count)])]


def insert_handle(prompt: str | None, token: str) -> str:
    """The prompt with ``token`` appended where the user is typing (at the end), separated by one space."""
    prompt = (prompt or "").rstrip()
    return f"{prompt} {token}" if prompt else token


def background_prompt(thing: str | None, tokens: Sequence[str], background_token: str = "<bg>") -> str:
    """``"a car"`` -> ``"a photo of a car at <bg>"``: something new in the learned background.

    Raises:
        ConfigError: the run has no background handle, or ``thing`` is empty.
    """
    if background_token not in tokens:
        raise ConfigError(f"this run has no {background_token} handle (it was trained with --no-background)")
    thing = (thing or "").strip()
    if not thing:
        raise ConfigError("say what to put into the background, e.g. 'a car' or '<asset0>'")
    return f"a photo of {thing} at {background_token}"


def split_prompts(text: str | None) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("write a prompt first, e.g. 'a photo of <asset0> at the beach' (click a handle to insert it)")
    return prompts


# ----------------------------------------------------------------------------------------------------------
# Masks from the page


def mask_from_layer(layer: np.ndarray) -> np.ndarray:
    """A painted editor layer -> where it was painted.

    Args:
        layer: ``(H, W, 4)`` uint8 RGBA (alpha 0 where nothing was painted, as the image editor sends it), or
            ``(H, W)`` / ``(H, W, 3)`` for a layer without alpha, where any non-black pixel counts as paint.

    Returns:
        ``(H, W)`` bool: alpha >= 128 (half-covered brush edges count, fainter anti-aliasing does not).
    """
    layer = np.asarray(layer)
    if layer.ndim == 3 and layer.shape[-1] == 4:
        return layer[..., 3] >= 128
    if layer.ndim == 3:
        return layer.max(axis=-1) >= 128
    if layer.ndim == 2:
        return layer >= 128
    raise SceneError(f"a painted layer must be (H, W, 4), got shape {layer.shape}")


def masks_from_layers(layers: Sequence[np.ndarray] | None, size: tuple[int, int]) -> list[np.ndarray]:
    """The editor's layers -> one ``(H, W)`` bool mask per painted layer, at the photo's ``size`` (w, h).

    Layers with no paint are skipped (the editor always has one, even before painting); a layer of another
    size than the photo (the editor's canvas) is resized with nearest-neighbour sampling.

    Raises:
        SceneError: no layer holds any paint.
    """
    masks = []
    for layer in layers or []:
        if layer is None:
            continue
        mask = mask_from_layer(layer)
        if not mask.any():
            continue
        if (mask.shape[1], mask.shape[0]) != tuple(size):
            mask = np.asarray(Image.fromarray(mask).resize(tuple(size), Image.NEAREST))
        masks.append(mask)
    if not masks:
        raise SceneError("nothing is painted: paint each concept on its own layer (add layers in the layer menu, "
                         "bottom right of the editor)")
    return masks


def masks_from_files(paths: Sequence[str] | None, size: tuple[int, int]) -> list[np.ndarray]:
    """Uploaded mask files (in upload order) -> ``(H, W)`` bool masks (coverage >= 0.5), the photo's ``size``.

    The files are only read: their names are never used to write anything.

    Raises:
        SceneError: no file, an unreadable file, a mask of another size than the photo, or an empty mask.
    """
    from .scene import read_mask

    if not paths:
        raise SceneError("no mask files uploaded: add one black-and-white mask per concept (white = concept)")
    masks = []
    for i, path in enumerate(paths):
        mask = read_mask(path) >= 0.5
        if (mask.shape[1], mask.shape[0]) != tuple(size):
            raise SceneError(
                f"mask file {i + 1} is {mask.shape[1]}x{mask.shape[0]} but the photo is {size[0]}x{size[1]}; "
                "masks must have the photo's size"
            )
        if not mask.any():
            raise SceneError(f"mask file {i + 1} is empty (all black); white marks the concept")
        masks.append(mask)
    return masks


CLICK_MODES = ("new concept", "add to last concept (+)", "exclude from last concept (-)", "box corner")


def add_click(points: str | None, boxes: str | None, x: int, y: int, mode: str) -> tuple[str, str]:
    """A click on the photo -> the SAM prompts, as the text the ``masks`` command takes (one mask per line).

    ``new concept`` starts a point group ``x,y``; ``add to last`` / ``exclude from last`` append ``+x,y`` /
    ``-x,y`` to the last group; ``box corner`` starts a box ``x,y`` and the next corner click completes it as
    ``x0,y0,x1,y1`` (corners in any order).

    Returns:
        ``(points, boxes)``: the updated texts.
    """
    point_lines = [line for line in str(points or "").splitlines() if line.strip()]
    box_lines = [line for line in str(boxes or "").splitlines() if line.strip()]
    x, y = int(x), int(y)
    if mode == "box corner":
        if box_lines and box_lines[-1].count(",") == 1:  # a first corner waits for the second
            x0, y0 = (int(v) for v in box_lines[-1].split(","))
            box_lines[-1] = f"{min(x0, x)},{min(y0, y)},{max(x0, x)},{max(y0, y)}"
        else:
            box_lines.append(f"{x},{y}")
    elif mode in CLICK_MODES[1:3] and point_lines:
        sign = "+" if mode == CLICK_MODES[1] else "-"
        point_lines[-1] = f"{point_lines[-1]}{sign}{x},{y}"
    else:  # a new concept (also the first click, whatever the mode)
        point_lines.append(f"{x},{y}")
    return "\n".join(point_lines), "\n".join(box_lines)


def draw_prompts(photo: Image.Image, points: str | None, boxes: str | None) -> Image.Image:
    """The photo with the clicked points (green on, red off, numbered by concept) and boxes drawn on it."""
    from .segment import parse_box, parse_point_group

    image = photo.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    r = max(3, min(image.size) // 100)
    for k, line in enumerate(line for line in str(points or "").splitlines() if line.strip()):
        try:
            group = parse_point_group(line)
        except SceneError:
            continue  # half-typed text: draw what parses
        for x, y, label in group:
            colour = (60, 220, 60) if label else (230, 40, 40)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline="white")
            draw.text((x + r + 2, y - r), str(k), fill="white")
    for line in (line for line in str(boxes or "").splitlines() if line.strip()):
        try:
            draw.rectangle(parse_box(line), outline=(0, 130, 200), width=max(2, r // 2))
        except SceneError:
            continue
    return image


def mask_image(mask: np.ndarray) -> Image.Image:
    """``(H, W)`` bool -> 8-bit ``L`` image, 0 / 255 (what ``load_scene`` and ``edit`` take)."""
    return Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")


# ----------------------------------------------------------------------------------------------------------
# Run folders


@dataclass
class RunList:
    finished: list[str]  # folders holding a finished run (scene.json and model_index.json)
    resumable: list[str]  # interrupted runs started from this app: NAME.partial with a checkpoint + saved inputs
    interrupted_elsewhere: list[str]  # NAME.partial with a checkpoint but no saved inputs (resume with the CLI)


def list_runs(runs_dir: Path) -> RunList:
    """The runs under ``runs_dir``, by name, sorted."""
    from .run_folder import CHECKPOINT_DIR, SCENE_FILE

    runs_dir = Path(runs_dir)
    finished, resumable, elsewhere = [], [], []
    if runs_dir.is_dir():
        for path in sorted(runs_dir.iterdir()):
            if not path.is_dir():
                continue
            if path.name.endswith(".partial"):
                name = path.name[: -len(".partial")]
                if (path / CHECKPOINT_DIR / "state.json").is_file():
                    (resumable if (job_dir(runs_dir, name) / JOB_FILE).is_file() else elsewhere).append(name)
            elif (path / SCENE_FILE).is_file() and (path / "model_index.json").is_file():
                finished.append(path.name)
    return RunList(finished, resumable, elsewhere)


def finished_run(runs_dir: Path, name: str | None) -> Path:
    """The folder of the finished run called ``name`` under ``runs_dir``.

    Raises:
        RunError: no run chosen, or no finished run of that name.
    """
    if not name:
        raise RunError("choose a finished run first (train one in the Extract tab, or press refresh)")
    run = Path(runs_dir) / sanitize_run_name(name)
    if sanitize_run_name(name) != name or name not in list_runs(runs_dir).finished:
        raise RunError(f"{name!r} is not a finished run in {runs_dir}; press refresh and choose one")
    return run


def job_dir(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / JOBS_DIR / name


def save_job(folder: Path, photo: Image.Image, masks: Sequence[np.ndarray], config: dict) -> None:
    """Saves what a run was started from (``img.png``, ``mask0.png``, ... and ``job.json``) under server-chosen
    names, so the run can be resumed from the app later with exactly the same scene and settings."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    write_scene_folder(folder, photo, [mask_image(mask) for mask in masks])
    (folder / JOB_FILE).write_text(json.dumps({"config": config, "masks": len(masks)}, indent=2) + "\n")


def load_job(folder: Path) -> tuple[Image.Image, list[Image.Image], dict]:
    """``(photo, mask images, config dict)`` saved by :func:`save_job`.

    Raises:
        RunError: the folder is missing or damaged.
    """
    folder = Path(folder)
    try:
        job = json.loads((folder / JOB_FILE).read_text())
        files = find_scene_files(folder)
        if len(files.masks) != int(job["masks"]):
            raise ValueError(f"{len(files.masks)} masks, {job['masks']} expected")
        photo, masks = Image.open(files.photo), [Image.open(path) for path in files.masks]
        for image in (photo, *masks):
            image.load()
        return photo, masks, dict(job["config"])
    except (OSError, ValueError, KeyError) as error:  # SceneError is a ValueError
        raise RunError(f"the saved inputs of this run ({folder}) are missing or damaged; start it again") from error


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """Zips ``folder`` into ``zip_path`` with the folder's name as the top entry; returns ``zip_path``.

    Weights (``.safetensors``, ``.bin``) are stored uncompressed: they do not compress and deflating gigabytes
    of them would only cost time. Resumable-checkpoint folders are left out.
    """
    folder, zip_path = Path(folder), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or "checkpoint" in relative.parts:
                continue
            stored = path.suffix in (".safetensors", ".bin")
            archive.write(path, Path(folder.name) / relative,
                          compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    return zip_path


def stamp() -> str:
    """A folder name for one button press: time to the second plus 4 random hex digits (never reused)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()


# ----------------------------------------------------------------------------------------------------------
# Messages: what the page shows is text, never markup


def message_html(text: object) -> str:
    """``text`` for gradio's toasts (``gr.Error``, ``gr.Warning``, ``gr.Info``), HTML-escaped.

    Gradio renders a toast's message as HTML (sanitised): a handle such as ``<aset0>`` is an unknown element to the
    browser, which the sanitiser drops together with the rest of the message, so "unknown handle <aset0> in ..."
    showed as "unknown handle". Escaped, every character shows as it is.
    """
    return html.escape(str(text), quote=False)


# Every ASCII punctuation character: CommonMark lets a backslash make any of them literal, and one of them starts
# each piece of Markdown syntax (<tag>, *emphasis*, [link], `code`, # heading, - list, 1. list, | table, ...).
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def markdown_text(text: object) -> str:
    """``text`` as Markdown that shows it verbatim: each ASCII punctuation character backslash-escaped.

    For user and library text in a ``gr.Markdown`` (status lines): ``<asset0>`` must not become an HTML tag nor
    ``a_b_c`` emphasis. Whitespace is left alone (a newline stays a soft break).
    """
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text))


def markdown_code(text: object) -> str:
    """``text`` as a Markdown code span, verbatim (code spans take no escapes, and gradio escapes their HTML).

    The fence is one backtick longer than the longest run of backticks inside, and padded with spaces when the
    text starts or ends with a backtick, as CommonMark asks; so no text can close the span early. A newline
    becomes a space (a code span is inline: Markdown would do the same).
    """
    text = str(text).replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# ----------------------------------------------------------------------------------------------------------
# The Extract tab's defaults, which follow the model, and the time a run will take

PAPER_STEPS = 400  # each phase, the paper's (ExtractConfig's defaults)
DEMO_STEPS = 30  # each phase, `make demo`'s for builtin:tiny: enough to see the pieces work, seconds on a CPU


@dataclass(frozen=True)
class TrainingDefaults:
    """What the Extract tab proposes for a model: its resolution and the steps of the two phases."""

    resolution: int
    phase1_steps: int
    phase2_steps: int


def training_defaults(model: str) -> TrainingDefaults:
    """builtin:tiny: the demo's 30 + 30 steps at its native 128 px; any other model: the paper's 400 + 400 steps
    at the model's native size where it is known without loading weights (``models.default_resolution``), else
    512.

    Never raises: while the user types, the model box holds half a name (``sd2-``), which is no valid Hub id; it
    gets 512 here, and *Start* says what is wrong with it.
    """
    from .models import PAPER_RESOLUTION, default_resolution
    from .tiny import TINY_MODEL_ID, TINY_RESOLUTION

    model = (model or "").strip()
    if model == TINY_MODEL_ID:
        return TrainingDefaults(TINY_RESOLUTION, DEMO_STEPS, DEMO_STEPS)
    try:
        resolution = default_resolution(model) if model else PAPER_RESOLUTION
    except (ValueError, OSError):  # a half-typed Hub id (HFValidationError), a file that is no checkpoint, ...
        resolution = PAPER_RESOLUTION
    return TrainingDefaults(resolution, PAPER_STEPS, PAPER_STEPS)


def follow_model(previous: TrainingDefaults, new: TrainingDefaults, resolution, phase1_steps,
                 phase2_steps) -> tuple:
    """The Extract tab's ``(resolution, phase 1 steps, phase 2 steps)`` after the model changed.

    A field still holding the previous model's default takes the new model's; a field the user has changed keeps
    its value, so typing a model name never throws away settings chosen on purpose.
    """
    fields = zip((resolution, phase1_steps, phase2_steps), dataclasses.astuple(previous), dataclasses.astuple(new))
    return tuple(new_default if _same_number(value, old_default) else value
                 for value, old_default, new_default in fields)


def _same_number(value, default: int) -> bool:
    """True if a number box's ``value`` (int, float, or None when cleared) equals ``default``."""
    try:
        return value is not None and float(value) == default
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds per training step of one model on one kind of device, at one resolution."""

    resolution: int  # px, the size the steps were measured at
    phase1: float  # s/step, handles only
    phase2: float  # s/step, handles + UNet + text encoder
    fixed: float | None  # s of a run outside its steps (build/load, VAE, attention maps, save); None: not measured
    measured: str  # what was measured where, for the page


# Measured step times, only on a CPU: no GPU was available to measure (there the page says so, no number).
#
# builtin:tiny at 128 px: measured 2026-12-01 on this project's 2-core machine (AMD EPYC, 23 GiB, no GPU;
# torch 2.13.0+cpu, diffusers 0.42.1) by running breakascene.recipe.extract on the shapes scene, 30 + 30 steps,
# checkpoint_every=0, timing each step from the Progress callback's `elapsed` (the first step of each phase left
# out), median of 29 steps per phase. With torch's default 2 threads (what the app uses) and the machine quiet:
# phase 1 0.036 s, 0.027 s, 0.036 s, 0.037 s; phase 2 0.056 s, 0.040 s, 0.058 s, 0.054 s (four runs); with 1
# thread 0.027-0.031 s and 0.041-0.046 s. The rest of a run (build the model, encode the scene, attention maps,
# save) took 0.41-0.53 s. With other jobs on the 2 cores, 2 threads were up to 10x slower (0.28-0.32 s/step).
# At 256 px the steps took 0.070 s / 0.098 s (1 thread), less than the 4x area scaling says: the estimate errs
# long for this model above 128 px.
#
# SD 2.1-base architecture (865 M UNet; SD 1.x is the same size) at 512 px, fp32: docs/performance.md, measured
# 2026-11-26 on the same kind of 2-core machine with `break-a-scene bench --threads 2`: phase 1 14.26 s, phase 2
# 26.78 s (with gradient checkpointing and before the fused-Adam change; the app's phase 2 runs without
# checkpointing and with fused Adam, so this errs long too). Loading and saving 5 GB of weights: not measured.
CPU_STEP_TIMES = {
    "tiny": StepTimes(128, phase1=0.036, phase2=0.055, fixed=0.5, measured="builtin:tiny on a 2-core CPU"),
    "sd": StepTimes(512, phase1=14.3, phase2=26.8, fixed=None, measured="SD 2.1-base (fp32) on a 2-core CPU"),
}


def step_times(model: str, device: str) -> StepTimes | None:
    """The measured step times that fit ``model`` on ``device`` (``cpu``, ``cuda``, ``mps``); None where nothing
    was measured. Every model but builtin:tiny is a full-size SD 1.x/2.x UNet, so it gets SD 2.1-base's."""
    from .tiny import TINY_MODEL_ID

    if str(device).split(":")[0] != "cpu":
        return None
    return CPU_STEP_TIMES["tiny" if (model or "").strip() == TINY_MODEL_ID else "sd"]


def estimate_seconds(times: StepTimes, resolution: int, phase1_steps: int, phase2_steps: int) -> float:
    """A run's wall time from measured step times: steps x s/step, scaled by image area (pixels), plus the fixed
    part where it was measured. The step's work (convolutions, attention) grows with the number of pixels."""
    area = (int(resolution) / times.resolution) ** 2
    steps = int(phase1_steps) * times.phase1 + int(phase2_steps) * times.phase2
    return steps * area + (times.fixed or 0.0)


def rough_duration(seconds: float) -> str:
    """An estimate's duration without false precision: ``4 s``, ``12 min``, ``4.6 hours``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} hours"


def estimate_text(model: str, resolution, phase1_steps, phase2_steps, device: str, preset: str = "paper") -> str:
    """The line next to *Start*: how long the run will take, as Markdown; says when there is no measured basis.

    Args:
        model: the model box (``builtin:tiny`` or anything else, taken for a full-size SD model).
        resolution, phase1_steps, phase2_steps: the number boxes (None when cleared).
        device: where training will run (``cpu``, ``cuda``, ...; the server's default device).
        preset: ``official`` adds prior preservation, which was not measured.
    """
    try:
        resolution, phase1_steps, phase2_steps = int(resolution), int(phase1_steps), int(phase2_steps)
    except (TypeError, ValueError):
        return "*Estimated time:* set the resolution and the steps of both phases."
    if resolution <= 0 or phase1_steps < 0 or phase2_steps < 0:
        return "*Estimated time:* set the resolution and the steps of both phases."
    times = step_times(model, device)
    if times is None:
        return (f"*Estimated time:* none on {markdown_text(device)}: step times were only measured on a CPU. "
                "Once training runs, the progress line shows the ETA from its own speed.")
    seconds = estimate_seconds(times, resolution, phase1_steps, phase2_steps)
    scaled = f", scaled by area to {resolution} px" if resolution != times.resolution else ""
    text = (f"*Estimated time:* about **{rough_duration(seconds)}** for {phase1_steps} + {phase2_steps} steps (an "
            f"estimate from the step times of {markdown_text(times.measured)} at {times.resolution} px{scaled}).")
    if times.fixed is None:
        text += " Loading and saving the model come on top (not measured)."
    if preset == "official":
        text += (" The official preset's prior preservation (100 class images generated first, batches of 2) "
                 "makes it slower: not measured, not counted.")
    return text


# ----------------------------------------------------------------------------------------------------------
# Training in a worker thread


class Cancelled(Exception):
    """Raised inside extract's progress callback to stop the run at the end of a step."""


class Busy(RunError):
    """A training is already running; the app trains one at a time."""


@dataclass
class TrainingStatus:
    """What the page shows about the current (or last) training. A copy is handed out, never the live one."""

    run: str = ""
    state: str = "idle"  # idle, loading, training, finished, cancelled, failed
    phase: str = ""
    step: int = 0  # steps done in this phase
    phase_steps: int = 0
    global_step: int = 0
    total_steps: int = 0
    losses: dict[str, float] = field(default_factory=dict)  # the last ones reported
    elapsed: float = 0.0
    eta: float | None = None  # seconds left, from this process's speed
    message: str = ""
    attention_dir: str = ""  # where the end-of-phase attention maps of this run appear
    first_step: int | None = None  # global step this process started from (resume), for the speed

    @property
    def active(self) -> bool:
        return self.state in ("loading", "training")

    @property
    def fraction(self) -> float:
        if self.state == "finished":
            return 1.0
        return self.global_step / self.total_steps if self.total_steps else 0.0


def eta_seconds(elapsed: float, steps_here: int, remaining: int) -> float | None:
    """Seconds left at this process's average speed; None before the first step."""
    if steps_here <= 0:
        return None
    return elapsed / steps_here * remaining


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(status: TrainingStatus) -> str:
    """One line for the page: ``phase2 · step 3/3 · 6/6 steps · 100 % · rec 0.0123 attention 0.456 · ETA 0:00``."""
    if status.state == "idle":
        return "no training yet"
    percent = int(round(100 * status.fraction))
    parts = [f"{status.run}: {status.state}"]
    if status.phase:
        parts.append(f"{status.phase} step {status.step}/{status.phase_steps}")
    parts.append(f"{status.global_step}/{status.total_steps} steps")
    parts.append(f"{percent} %")
    if status.losses:
        parts.append("losses " + ", ".join(f"{k} {v:.4g}" for k, v in status.losses.items()))
    if status.active:
        parts.append(f"ETA {format_duration(status.eta)}")
    else:
        parts.append(f"took {format_duration(status.elapsed)}")
    line = " · ".join(parts)
    return f"{line} — {status.message}" if status.message else line


class TrainingWorker:
    """Runs one :func:`breakascene.recipe.extract` at a time in a background thread.

    ``start`` refuses (:class:`Busy`) while a training runs; ``cancel`` makes the progress callback raise
    :class:`Cancelled` after the current step, so ``extract`` stops cleanly and, if the run has reached a
    checkpoint, leaves ``OUT.partial`` resumable. ``status`` returns a snapshot, safe to read from any thread.
    """

    def __init__(self, extract_fn: Callable | None = None):
        self._extract = extract_fn  # for tests; default: breakascene.recipe.extract, imported when first used
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._status = TrainingStatus()
        self._thread: threading.Thread | None = None

    def status(self) -> TrainingStatus:
        with self._lock:
            return dataclasses.replace(self._status, losses=dict(self._status.losses))

    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self, scene, config, out: Path, *, resume: bool = False, overwrite: bool = False,
              on_finished: Callable[[], None] | None = None) -> None:
        """Starts training ``scene`` with ``config`` into ``out`` in a new thread and returns at once.

        Raises:
            Busy: a training is running.
        """
        out = Path(out)
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                s = self._status
                raise Busy(
                    f"busy: the run {s.run!r} is training (step {s.global_step}/{s.total_steps}); one training "
                    "runs at a time, so wait for it to finish or cancel it"
                )
            self._cancel.clear()
            self._status = TrainingStatus(
                run=out.name, state="loading", total_steps=config.total_steps, message="loading the model",
                attention_dir=str(Path(str(out) + ".partial") / "attention"),
            )
            self._thread = threading.Thread(
                target=self._run, args=(scene, config, out, resume, overwrite, on_finished),
                name=f"extract-{out.name}", daemon=True,
            )
            self._thread.start()

    def cancel(self) -> bool:
        """Asks the running training to stop after its current step; False if none runs."""
        if not self.busy():
            return False
        self._cancel.set()
        with self._lock:
            self._status.message = "cancelling after this step"
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the training thread (tests, shutdown); True if none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy()

    # -- the thread -------------------------------------------------------------------------------------
    def _callback(self, progress) -> None:
        with self._lock:
            s = self._status
            if s.first_step is None:
                s.first_step = progress.global_step - 1
            s.state, s.message = "training", ("cancelling after this step" if self._cancel.is_set() else "")
            s.phase, s.step, s.phase_steps = progress.phase, progress.step, progress.phase_steps
            s.global_step, s.total_steps, s.elapsed = progress.global_step, progress.total_steps, progress.elapsed
            if progress.losses:
                s.losses = dict(progress.losses)
            s.eta = eta_seconds(progress.elapsed, progress.global_step - s.first_step, s.total_steps - s.global_step)
        if self._cancel.is_set():
            raise Cancelled()

    def _run(self, scene, config, out: Path, resume: bool, overwrite: bool, on_finished) -> None:
        from .errors import BreakASceneError

        extract = self._extract
        if extract is None:
            from .recipe import extract
        started = time.time()
        state, message = "finished", f"saved to {out}"
        try:
            extract(scene, config, out, overwrite=overwrite, resume=resume, callback=self._callback, progress=False)
            if on_finished is not None:
                on_finished()
        except Cancelled:
            state, message = "cancelled", _cancel_message(out)
        except BreakASceneError as error:
            state, message = "failed", str(error)
        except Exception as error:  # noqa: BLE001 - the page shows one line; the server log has the traceback
            import traceback

            from .failures import describe_failure

            traceback.print_exc()
            state, message = "failed", describe_failure(error, resumable=True, traceback_hint="")[0]
        with self._lock:
            s = self._status
            s.state, s.message, s.eta = state, message, None
            s.elapsed = s.elapsed or time.time() - started
            if state == "finished":
                s.global_step = s.total_steps
                s.attention_dir = str(out / "attention")


def _cancel_message(out: Path) -> str:
    """What a cancel left behind: the last checkpoint (resumable) or nothing."""
    from .run_folder import CHECKPOINT_DIR, partial_path

    state_file = partial_path(out) / CHECKPOINT_DIR / "state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        return (f"cancelled; the checkpoint at step {state.get('step')} of phase {state.get('phase_index', 0) + 1} "
                "is kept: resume it from 'Interrupted runs'")
    return "cancelled before the first checkpoint, so nothing was kept (set 'checkpoint every' to keep one)"


def attention_files(folder: str | Path) -> list[Path]:
    """The end-of-phase attention figures present in ``folder`` (``phase1.png``, ``phase2.png``), in order."""
    folder = Path(folder)
    return sorted(folder.glob("phase*.png")) if folder.is_dir() else []


def describe_masks(masks: Sequence[np.ndarray], labels: Sequence[str]) -> str:
    """Area and overlaps of the masks as lines (``mask_tools.describe_stats``), for the page."""
    from .mask_tools import describe_stats, mask_stats

    stats, overlap = mask_stats(list(masks), list(labels))
    return "\n".join(describe_stats(stats, overlap))
