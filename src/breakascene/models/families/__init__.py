"""Model families: what a kind of text-to-image model fills in for training, generating, loading and exporting.

The package never tests which family it has: it asks the :class:`ModelFamily` that
:class:`~breakascene.models.loading.Components` carries (or :mod:`.registry` finds for a model or a run). A family
is one folder here: its seam (the subclass, in the folder's ``__init__``), its tiny model (``tiny.py``), its
export layouts and READMEs (``exports.py``) and anything else only it needs; plus one line in :mod:`.registry`.
:mod:`.sd` (SD 1.x/2.x, one text encoder) is the reference, :mod:`.sdxl` the first family with two, :mod:`.flux`
the first with a transformer, joint attention and flow matching.

Shapes: B batch, E text encoders, T tokens, C latent channels, h x w the latent grid, R the image side.
"""

from __future__ import annotations

import abc

import torch

from ...errors import ConfigError
from ...lora import LORA_TEXT_TARGETS, LORA_UNET_TARGETS


class ModelFamily(abc.ABC):
    """The interface a family fills (abstract methods must be overridden)."""

    name: str = ""  # "SD 1.x/2.x"
    pipeline_class: type = object  # the diffusers pipeline a run folder is saved as and loaded with
    inpaint_pipeline_class: type = object  # the one local editing (Blended Latent Diffusion) runs through
    pipeline_names: tuple[str, ...] = ()  # model_index.json's _class_name values this family loads
    pipeline_options: dict = {}  # keyword arguments every pipeline_class(...) / from_pretrained(...) gets
    prediction_type: str | None = None  # what the denoiser predicts when fixed by the family ("flow"); None: the scheduler's
    denoiser_name: str = "unet"  # the pipeline component ``Components.unet`` holds (FLUX: "transformer")
    attention_divisor: int | None = None  # the maps' grid is latent / this; None: the config's (4, App. B.1)
    lora_targets: list[str] = LORA_UNET_TARGETS  # the denoiser's modules that get LoRA adapters
    text_lora_targets: list[str] = LORA_TEXT_TARGETS  # the text encoders' (``--lora-text-encoder``)

    def text_encoders(self, components) -> list[torch.nn.Module]:
        """Every text encoder of ``components``, in the order of :meth:`tokenizers`; a handle is a row in each."""
        return [components.text_encoder]

    def tokenizers(self, components) -> list:
        return [components.tokenizer]

    def other_text_encoders(self, components) -> list[torch.nn.Module]:
        """Text encoders that carry no handle but run every step (FLUX's CLIP, for its pooled vector): frozen."""
        return []

    def named_text_encoders(self, components) -> list[tuple[str, torch.nn.Module]]:
        """("text_encoder", ...), ("text_encoder_2", ...): the names that parameters and checkpoints use."""
        encoders = self.text_encoders(components)
        return list(zip(["text_encoder", "text_encoder_2"][: len(encoders)], encoders))

    @abc.abstractmethod
    def tokenize(self, components, prompts: list[str]) -> torch.Tensor:
        """Prompts -> input_ids on the CPU, padded to the tokenizers' ``model_max_length``: (B, T) with one text
        encoder, (B, E, T) with several."""

    def handle_search_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The (B, T) ids in which handle positions are looked up: the first tokenizer's (every tokenizer gets
        the same handle tokens, added in the same order, so the positions are the same in each)."""
        return input_ids if input_ids.ndim == 2 else input_ids[:, 0]

    def size_conditioning(self, original_size: tuple[int, int], crop_top_left: tuple[int, int],
                          target_size: tuple[int, int]) -> torch.Tensor | None:
        """The (6,) micro-conditioning of a training image, for families that take one (SDXL); else None.
        Sizes and the crop are (height, width) and (top, left), in pixels."""
        return None

    def scene_size_conditioning(self, original_size: tuple[int, int], crop_box: tuple[int, int, int, int],
                                resolution: int) -> torch.Tensor | None:
        """(2, 6) :meth:`size_conditioning` of a scene as is and mirrored, or None for a family without it.

        ``original_size`` is the photo's (width, height) and ``crop_box`` the (left, top, right, bottom) of the
        square cut from it (:class:`~breakascene.scene.Scene`); cutting the largest centred square and resizing
        it to ``resolution`` is SDXL's resize-the-short-side-then-crop, so the crop's corner is scaled to the
        resized photo. The mirror image's crop starts where the original's ends.
        """
        width, height = original_size
        left, top, right, _ = crop_box
        scale = resolution / (right - left)
        rows = [self.size_conditioning((height, width), (round(top * scale), round(crop_left * scale)),
                                       (resolution, resolution)) for crop_left in (left, width - right)]
        return None if rows[0] is None else torch.stack(rows)

    def size_conditioning_table(self, original_size, crop_box, resolution: int, collection_images: int,
                                device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The training images' size conditioning, (1 + collection_images, 2, 6) as is and mirrored, and a
        class image's (6,), on ``device``; (None, None) for a family without it. The scene's comes from
        :meth:`scene_size_conditioning`; a collection image and a class image were made at R x R."""
        scene = self.scene_size_conditioning(original_size, crop_box, resolution)
        if scene is None:
            return None, None
        full = self.size_conditioning((resolution, resolution), (0, 0), (resolution, resolution))
        return torch.stack([scene] + [full.expand(2, 6)] * collection_images).to(device), full.to(device)

    @abc.abstractmethod
    def encode_prompt(self, components, input_ids: torch.Tensor, device: torch.device,
                      size_conditioning: torch.Tensor | None = None):
        """input_ids (:meth:`tokenize`) -> what the denoiser is conditioned on, on ``device``: the
        encoder_hidden_states (B, T, dim) for SD, more for others. ``size_conditioning``: (B, 6) or None."""

    @abc.abstractmethod
    def encode_images(self, vae, images: torch.Tensor, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, R, R) in [0, 1] -> the VAE posterior's (mean, std), each (N, C, h, w) float32."""

    @abc.abstractmethod
    def pack_latents(self, vae, sample: torch.Tensor) -> torch.Tensor:
        """A VAE posterior sample (B, C, h, w) -> the latents the denoiser is trained on (scaled/shifted)."""

    @abc.abstractmethod
    def denoise(self, unet, noisy_latents: torch.Tensor, timesteps: torch.Tensor, conditioning) -> torch.Tensor:
        """One denoiser call: (B, C, h, w), (B,), :meth:`encode_prompt`'s result -> the prediction (B, C, h, w)."""

    def training_scheduler(self, scheduler):
        """The scheduler training noises with, from the pipeline's sampling ``scheduler``: DDPM on its config."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(scheduler.config)

    def sample_timesteps(self, scheduler, batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
        """(B,) training timesteps drawn from ``generator`` (on ``device``): uniform over the training steps."""
        return torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator, device=device)

    def add_noise(self, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``latents`` (B, C, h, w) noised with ``noise`` to ``timesteps`` (the forward process)."""
        return scheduler.add_noise(latents, noise, timesteps)

    @abc.abstractmethod
    def prediction_target(self, scheduler, latents: torch.Tensor, noise: torch.Tensor,
                          timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser should predict for ``latents`` noised with ``noise`` at ``timesteps`` (B, C, h, w)."""

    @abc.abstractmethod
    def install_capture(self, unet, store) -> None:
        """Routes the cross-attention layers the attention loss reads through ``store`` (an AttentionStore)."""

    @abc.abstractmethod
    def remove_capture(self, unet) -> None:
        """Puts the stock attention back, so that a saved denoiser is the library's own."""

    def sampling_defaults(self, denoiser_config) -> tuple[int, float]:
        """(steps, guidance) that ``generate`` uses when not given, for a denoiser with ``denoiser_config`` (its
        ``config``, or a dict of it): diffusers' SD and SDXL defaults."""
        return 50, 7.5

    image_side_multiple: int = 8  # an image's sides must be multiples of this (the VAE's downscale; FLUX packs 2x2)

    def edit_scheduler(self, scheduler):
        """The sampler local editing (Blended Latent Diffusion) runs with, from the run's ``scheduler``: DDIM on its
        config, BLD's and the research code's."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(scheduler.config)

    def edit_steps_run(self, steps: int, strength: float) -> int:
        """How many of ``steps`` an inpainting call at ``strength`` runs: the family's inpainting pipeline's
        ``get_timesteps`` (SD's and SDXL's keep ``int(steps * strength)``)."""
        return min(int(steps * strength), steps)

    def native_resolution(self, unet, vae) -> int:
        """The image side the model was trained at: the UNet's latent ``sample_size`` times the VAE's downscale."""
        return int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)

    def denoiser_input_channels(self, vae) -> int:
        """The input channels a text-to-image denoiser of this family has over ``vae`` (an inpainting one has more)."""
        return vae.config.latent_channels

    @abc.abstractmethod
    def pipeline_components(self, components) -> dict:
        """``components`` as ``pipeline_class(**...)`` takes them."""

    def make_pipeline(self, components):
        """A ``pipeline_class`` over ``components``, with ``pipeline_options``."""
        return self.pipeline_class(**self.pipeline_components(components), **self.pipeline_options)

    # --- Built-in models (built in code, no weights to download: the family's tiny.py) ---

    builtin_models: dict[str, int] = {}  # --model name ("builtin:tiny") -> its native resolution

    def build_builtin(self, model: str, prediction_type: str | None) -> dict:
        """The built-in ``model``'s parts as :class:`~breakascene.models.loading.Components` takes them (the
        denoiser under ``unet``), built in code. ``prediction_type`` None: the model's own."""
        raise ConfigError(f"{model} is not a built-in {self.name} model")

    def builtin_pipeline_lines(self, model: str, pipeline: str, prediction_type: str | None) -> tuple[list[str], list[str]]:
        """Python that builds the built-in ``model`` again as a stock ``pipeline`` named ``pipe``: (imports, lines)."""
        raise ConfigError(f"{model} is not a built-in {self.name} model")

    random_models: tuple[str, ...] = ()  # ``bench``'s full-size architectures with random weights, as --help names them

    def has_random_model(self, model: str) -> bool:
        """Whether ``model`` names one of this family's :attr:`random_models`."""
        return model in self.random_models

    def build_random(self, model: str) -> dict:
        """``bench --model random:...`` (:meth:`has_random_model`): the full-size architecture with random weights (a
        step costs what the real model's does), as :meth:`build_builtin` gives parts."""
        raise ConfigError(f"{model} is not a {self.name} architecture; choose one of {', '.join(self.random_models)}")

    # --- Loading ---

    single_file_layouts: tuple[str, ...] = ()  # the single-file layouts (:mod:`..single_file`) this family loads

    def single_file_resolution(self, layout: str, prediction_type: str) -> int:
        """The image side a single file of ``layout`` predicting ``prediction_type`` was trained at."""
        return 512

    def check_prediction_type(self, requested: str | None) -> None:
        """A ``--prediction-type`` this family cannot take is a ConfigError (a family with a fixed one)."""

    # --- Training: what a run on this family gets when the user does not say ---

    training_defaults: dict = {}  # ExtractConfig fields (e.g. {"lora_rank": 16}) unless the user gives them
    training_defaults_note: str = ""  # the line that says so when they are taken

    def low_vram_plan(self, generic: tuple[dict, list[str]], device_type: str, bf16_supported: bool,
                      bitsandbytes_available: bool) -> tuple[dict, list[str]]:
        """What ``--low-vram`` sets on this family: (config overrides, one line per choice). ``generic`` is the
        12 GB plan of :func:`breakascene.training.memory.low_vram_options`; a family with another budget changes
        it or replaces it."""
        return generic

    # --- Sampling ---

    def run_sampling_defaults(self, where: str) -> tuple[int, float]:
        """(steps, guidance) for the denoiser of the pipeline folder or Hub id ``where``, read from its config
        without loading weights where the family's defaults depend on it (:meth:`sampling_defaults`)."""
        return self.sampling_defaults({})

    def check_sampling_options(self, negative: str | None, scheduler: str) -> None:
        """Sampling options that mean nothing to this family are ConfigErrors, not silently ignored."""

    # --- Exports (the family's exports.py) ---

    def check_export_format(self, format: str, lora_run: bool) -> None:
        """A ``--format`` this family's run (a LoRA run or a full fine-tune) cannot be exported to: ConfigError."""

    def textual_inversion_key(self, token: str) -> str:
        """The key of a handle's row in its textual-inversion file: the token, diffusers' own layout."""
        return token

    def textual_inversion_readme(self, readme) -> str:
        """The textual-inversion export's README, from a :class:`.readme.ExportReadme`."""
        raise ConfigError(f"--format textual-inversion is not available for {self.name} runs; use --format diffusers")

    def kohya_base_model(self, text_width: int) -> dict[str, str]:
        """kohya sd-scripts' metadata of the base model a LoRA was trained on (``ss_base_model_version``, ``ss_v2``),
        which A1111 reads to show a LoRA only with models of its kind; ``text_width``: the handles' row width."""
        return {}

    webui_embedding_key: str = "emb_params"  # a WebUI embedding file's key (kohya's textual-inversion files)

    def webui_lora_state_dict(self, run, info, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """A LoRA run's adapters under the keys the WebUI tools read (``run``: its folder, ``info``: its RunInfo)."""
        raise ConfigError(f"--format comfyui/a1111/kohya are not available for {self.name} runs; use --format diffusers")

    def checkpoint_layout(self, pipe) -> str:
        """The single-file layout (:func:`..ldm_layout.text_layout`'s name) a full run's checkpoint is written in."""
        raise ConfigError(f"a {self.name} run has no single-file checkpoint export; use --format diffusers")

    def webui_readme(self, readme) -> str:
        """A WebUI export's README, from a :class:`.readme.ExportReadme`."""
        raise ConfigError(f"--format comfyui/a1111/kohya are not available for {self.name} runs; use --format diffusers")
