"""The Download tab: the chosen run's folder as a zip, or an export of it (textual inversion, ComfyUI, A1111/Forge,
kohya) as a zip."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from ..runs import finished_run, zip_folder
from .toasts import guarded

DOWNLOAD_KEEP_SECONDS = 3600
EXPORT_CHOICES = {  # label -> --format; the folder's README says where each file goes
    "diffusers (textual-inversion embeddings)": "textual-inversion",
    "ComfyUI": "comfyui",
    "A1111 / Forge": "a1111",
    "kohya (flat)": "kohya",
}


class DownloadHandlers:
    """The Download tab's handlers, part of :class:`breakascene.ui.app.App`: they use its ``runs_dir`` and
    ``downloads`` (the folder zips are made in and served from)."""

    def _download_folder(self) -> Path:
        """A new folder for one zip. Gradio copies a returned file into its own cache, so our copies of earlier
        downloads are dropped after an hour rather than piling up (a run's zip is as large as the run)."""
        for old in self.downloads.iterdir():
            if time.time() - old.stat().st_mtime > DOWNLOAD_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.downloads))

    @guarded
    def on_zip(self, name):
        run = finished_run(self.runs_dir, name)
        folder = self._download_folder()
        return str(zip_folder(run, folder / f"{run.name}.zip"))

    @guarded
    def on_export(self, name, format: str = "textual-inversion"):
        from ...inference.exports import export

        run = finished_run(self.runs_dir, name)
        folder = self._download_folder()
        out = export(run, folder / f"{run.name}-{format}", format=format)
        return str(zip_folder(out, folder / f"{out.name}.zip"))


def build_download_tab(app, run_choice: gr.Dropdown) -> None:
    """The Download tab, wired to ``app``'s handlers for the run chosen in ``run_choice``."""
    with gr.Tab("Download", id="download"):
        with gr.Row():
            zip_button = gr.Button("Run folder as .zip", elem_id="zip")
            export_format = gr.Dropdown(list(EXPORT_CHOICES.items()), value="textual-inversion", label="Export for",
                                        elem_id="export-format")
            export_button = gr.Button("Export as .zip", elem_id="export")
        download = gr.File(label="Download", interactive=False, elem_id="download")

    zip_button.click(app.on_zip, run_choice, download)
    export_button.click(app.on_export, [run_choice, export_format], download)
