"""What every family's export READMEs share: the facts an export hands a family to write its README from."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ...run_info import RunInfo

NOTE = (
    "The handles were trained jointly with this run's fine-tuned UNet and text encoder (phase 2 of "
    "Break-A-Scene), so they need the run's own UNet/text encoder to look right; in a stock base model they "
    "give only a rough likeness."
)


def python_literal(text: str) -> str:
    """``text`` as a Python string literal in double quotes (JSON's escapes are Python's too)."""
    return json.dumps(text)


@dataclass
class ExportReadme:
    """What an export's README says, gathered by the exporter (:mod:`breakascene.inference.exports` and
    ``.webui``) and written out by the run's family (``ModelFamily.textual_inversion_readme`` / ``webui_readme``).

    ``base_imports``/``base_lines``: Python that makes ``pipe``, the run's base model as a stock pipeline
    (``inference.loading_code.base_pipeline_lines``); ``single_file_config``: a Python expression for
    ``from_single_file``'s ``config``. The WebUI fields are empty for a textual-inversion export.
    """

    info: RunInfo
    run: Path  # the run folder, absolute
    location: Path  # where the export ends up, absolute
    tokens: list[str]
    files: list[str]  # the embedding files, relative to ``location``, in handle order
    base_imports: list[str]
    base_lines: list[str]
    single_file_config: str = ""
    format: str = ""  # comfyui, a1111 or kohya
    kind: str = ""  # what the weights file is: "lora" or "checkpoint"
    name: str = ""  # the files' stem
    triggers: dict[str, str] = field(default_factory=dict)  # handle token -> WebUI trigger word
    here: dict[str, str] = field(default_factory=dict)  # kind -> its folder in the export ("" for kohya's flat one)
    folders: dict[str, dict[str, str]] = field(default_factory=dict)  # tool -> kind -> its folder in that tool

    @property
    def export_line(self) -> str:
        return f"export = Path({python_literal(str(self.location))})  # this folder; change it if you move it"

    @property
    def generate_command(self) -> str:
        """The shell command that generates with the run itself."""
        return shlex.join(["break-a-scene", "generate", str(self.run), f"a photo of {self.tokens[0]}"])

    @property
    def weights(self) -> str:
        """The WebUI export's weights file, relative to ``location``."""
        return f"{self.here[self.kind]}{self.name}.safetensors"

    @property
    def first_word(self) -> str:
        """The first handle's WebUI trigger word."""
        return next(iter(self.triggers.values()))

    @property
    def handle_table(self) -> str:
        """The Markdown rows of handles, trigger words and embedding files."""
        return "\n".join(f"| `{token}` | `{word}` | `{self.here['embedding']}{word}.safetensors` |"
                         for token, word in self.triggers.items())
