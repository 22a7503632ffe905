"""Loading SAM and OWLv2 through transformers, from a Hub id (cached) or a local folder.

The models (``SamModel``/``SamProcessor``, ``Owlv2ForObjectDetection``/``Owlv2Processor``) and torch are imported
inside functions only, so ``import breakascene`` and ``extract`` with hand-made masks never load them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, first_line

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_SAM_MODEL", "DEFAULT_DETECTOR_MODEL", "LoadedModel", "load_sam", "load_detector"]

DEFAULT_SAM_MODEL = "facebook/sam-vit-base"
DEFAULT_DETECTOR_MODEL = "google/owlv2-base-patch16-ensemble"


@dataclass
class LoadedModel:
    """A loaded SAM or OWLv2 model and its processor (from :func:`load_sam` / :func:`load_detector`, or your own).

    Everything that takes one also takes a plain ``(model, processor)`` pair (see :meth:`of`).
    """

    model: Any
    processor: Any

    @property
    def device(self) -> torch.device:
        """Where the model's weights are, so where its inputs go."""
        return next(self.model.parameters()).device

    @classmethod
    def of(cls, loaded: LoadedModel | tuple[Any, Any]) -> LoadedModel:
        """``loaded`` itself, or a ``(model, processor)`` pair as a :class:`LoadedModel`."""
        return loaded if isinstance(loaded, LoadedModel) else cls(*loaded)


def load_sam(model: str = DEFAULT_SAM_MODEL, device=None) -> LoadedModel:
    """SAM (``SamModel``, ``SamProcessor``) in eval mode on ``device`` (default: CUDA if there, else the CPU).

    Raises:
        ConfigError: it cannot load (the message says how to download it or use a local folder).
    """
    from transformers import SamModel, SamProcessor

    return _load_pair(SamModel, SamProcessor, model, "SAM", "--sam-model", device)


def load_detector(model: str = DEFAULT_DETECTOR_MODEL, device=None) -> LoadedModel:
    """The OWLv2 detector (``Owlv2ForObjectDetection``, ``Owlv2Processor``); device and errors as :func:`load_sam`."""
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    return _load_pair(Owlv2ForObjectDetection, Owlv2Processor, model, "detector", "--detector-model", device)


def _load_pair(model_class, processor_class, model: str, what: str, flag: str, device) -> LoadedModel:
    """The model and its processor from a Hub id (cached) or a local folder, in eval mode on ``device``."""
    from ..hub import hub_options, not_downloadable

    hub = hub_options(model)
    try:
        loaded = model_class.from_pretrained(model, **hub)
        processor = processor_class.from_pretrained(model, **hub)
    except (OSError, ValueError, KeyError) as error:
        if hub.get("local_files_only"):
            raise not_downloadable(model, flag, f"{what} model") from error
        raise _load_error(what, model, flag, error) from error
    return LoadedModel(loaded.to(_device(device)).eval(), processor)


def _device(device) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_error(kind: str, model: str, flag: str, error: Exception) -> ConfigError:
    where = "folder" if Path(model).exists() else "model id"
    if Path(model).exists():
        hint = f"it is not a saved {kind} model ({type(error).__name__}: {first_line(error)})"
    else:
        hint = (
            f"not found locally; the weights must be downloaded once with network access "
            f"(e.g. `hf download {model}`), or point at a local folder with {flag} /path/to/folder"
        )
    return ConfigError(f"cannot load the {kind} {where} {model!r}: {hint}")
