"""Handles: one new text token per concept, whose embedding is what phase 1 learns.

During training the text encoder's token-embedding table is wrapped by :class:`HandleEmbedding`: the
original table stays frozen and untouched, and the K handle vectors live in their own small parameter
that is spliced in wherever a handle id appears. So phase 1 cannot change any other row (they are not
even in the optimiser), and the optimiser state is K x dim instead of vocabulary x dim. In phase 2 the
text encoder's transformer layers train as well, but the vocabulary rows of ordinary words stay frozen,
which keeps every word other than the handles meaning what it meant. :func:`merge_handles` writes the
learned vectors back into a plain ``nn.Embedding`` so the saved text encoder loads in stock diffusers.

The same functions work on any (tokenizer, text encoder) pair, so a model with two text encoders (SDXL)
calls them once per pair.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError, RunError

BACKGROUND_NAME = "bg"
DEFAULT_BACKGROUND_INIT_WORD = "background"
_RARE_WORD = re.compile(r"^[a-z]{3,}$")
_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
HANDLE_PATTERN = re.compile(r"<[^<>\s]+>")
"""What a handle looks like inside a prompt: ``<asset0>``, ``<dog>``, ``<bg>``."""


@dataclass(frozen=True)
class Handle:
    """One learned concept: its name, the token that stands for it in prompts, and where it came from."""

    name: str  # "dog", "asset0" or "bg"
    init_word: str | None  # the word whose embedding the handle starts from; None: a rare word, see rare_words
    is_background: bool = False

    @property
    def token(self) -> str:
        return f"<{self.name}>"


def make_handles(
    num_concepts: int,
    names: list[str] | None = None,
    init_words: list[str] | None = None,
    background: bool = True,
) -> list[Handle]:
    """Decides names and initial words of the handles, checking the user's lists.

    Names default to ``asset0 ... assetK-1``. An init word defaults to the concept's name when the user gave
    names (``--names dog shirt`` starts from "dog" and "shirt"), else to None: :func:`resolve_init_words` then
    gives every such handle its own rare word, so no two handles start from the same vector and none starts
    with a class. The background handle ``<bg>`` starts from ``"background"`` and comes last.
    """
    if names is not None and len(names) != num_concepts:
        raise ConfigError(
            f"{num_concepts} masks but {len(names)} names ({' '.join(names)}); give exactly one --names entry per mask"
        )
    if init_words is not None and len(init_words) != num_concepts:
        raise ConfigError(
            f"{num_concepts} masks but {len(init_words)} init words; give exactly one --init-words entry per mask"
        )
    user_named = names is not None
    names = list(names) if names is not None else [f"asset{i}" for i in range(num_concepts)]
    for name in names:
        if not _NAME_PATTERN.match(name):
            raise ConfigError(
                f"handle name {name!r} is not usable: use a letter then letters, digits, '_' or '-' (max 32), "
                "without < > or spaces"
            )
    if len(set(n.lower() for n in names)) != len(names):
        raise ConfigError(f"duplicate handle names in {names}; every concept needs its own name")
    if background and BACKGROUND_NAME in (n.lower() for n in names):
        raise ConfigError(f"the name {BACKGROUND_NAME!r} is taken by the background handle; rename that concept")
    if init_words is None:
        init_words = [name if user_named else None for name in names]
    handles = [Handle(name, word) for name, word in zip(names, init_words)]
    if background:
        handles.append(Handle(BACKGROUND_NAME, DEFAULT_BACKGROUND_INIT_WORD, is_background=True))
    return handles


def rare_words(tokenizer, count: int, avoid: set[str] = frozenset()) -> list[str]:
    """``count`` distinct rare words of the tokenizer's vocabulary, the rarest first.

    BPE vocabularies (CLIP's among them) list their merges from the most to the least frequent, so the last
    whole-word entries are the rarest words: DreamBooth's "rare token" idea, and the rows the research code
    copies when it gets no init words. Only lower-case alphabetic words of 3+ letters that tokenize back to
    exactly their one token are taken, so that the word, not a fragment, is what a run records.
    """
    special = set(tokenizer.all_special_ids)
    base = sorted(
        ((i, t) for t, i in tokenizer.get_vocab().items() if i < tokenizer.vocab_size and i not in special),
        reverse=True,
    )
    words = []
    for token_id, token in base:
        word = token[: -len("</w>")] if token.endswith("</w>") else None
        if word is None or not _RARE_WORD.match(word) or word in avoid:
            continue
        if tokenizer(word, add_special_tokens=False).input_ids != [token_id]:
            continue
        words.append(word)
        if len(words) == count:
            return words
    raise ConfigError(f"the tokenizer has fewer than {count} usable rare words; give --init-words for every mask")


def resolve_init_words(tokenizer, handles: list[Handle], default: str | None = None) -> list[Handle]:
    """The handles with every missing init word replaced by ``default``, or without one by its own rare word
    (:func:`rare_words`)."""
    missing = [h for h in handles if h.init_word is None]
    if not missing:
        return list(handles)
    if default is not None:
        return [dataclasses.replace(h, init_word=default) if h.init_word is None else h for h in handles]
    given = {h.init_word for h in handles if h.init_word is not None}
    words = iter(rare_words(tokenizer, len(missing), avoid=given))
    return [dataclasses.replace(h, init_word=next(words)) if h.init_word is None else h for h in handles]


def add_handle_tokens(tokenizer, tokens: list[str]) -> list[int]:
    """Adds one token per handle (``tokens``: "<asset0>", ...) to ``tokenizer``; returns their ids, in order.

    A token takes the space before it (``lstrip``): a SentencePiece tokenizer (FLUX's T5) would otherwise turn the
    space before "<asset0>" into a token of its own. BPE tokenizers (CLIP) drop that space anyway.

    Raises:
        ConfigError: a handle's token already means something to the tokenizer, or does not stay one token.
    """
    from transformers import AddedToken

    for token in tokens:
        existing = tokenizer.convert_tokens_to_ids(token)
        if existing is not None and existing != tokenizer.unk_token_id:
            raise ConfigError(f"{token} is already a token of this model's tokenizer; choose another --names entry")
    added = tokenizer.add_tokens([AddedToken(token, lstrip=True) for token in tokens])
    if added != len(tokens):
        raise ConfigError(f"could not add all handle tokens {tokens} to the tokenizer")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    for token, token_id in zip(tokens, ids):
        pieces = tokenizer(token, add_special_tokens=False).input_ids
        if pieces != [token_id]:
            raise ConfigError(f"{token} does not tokenize to a single new token; choose a simpler name")
    return list(ids)


def grow_token_table(text_encoder, size: int) -> None:
    """Makes the encoder's token table at least ``size`` rows (the tokenizer's length, handles included), never
    smaller: T5-XXL's table (FLUX.1's) has 32128 rows for 32100 tokens, so the first handles take spare rows there,
    and cutting it to the tokenizer's length would change the checkpoint's shape for every tool that loads it."""
    if size > text_encoder.get_input_embeddings().num_embeddings:
        text_encoder.resize_token_embeddings(size, mean_resizing=False)


def add_learned_handles(tokenizer, text_encoder, tokens: list[str], vectors: torch.Tensor) -> None:
    """A finished run's handles put into a base model (a LoRA run is loaded this way): each token added as in
    training (:func:`add_handle_tokens`), the encoder's table grown, and the token's row set to its learned
    vector. ``vectors``: (K, dim), in ``tokens`` order."""
    ids = add_handle_tokens(tokenizer, tokens)
    grow_token_table(text_encoder, len(tokenizer))
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[ids] = vectors.to(table.device, table.dtype)


def init_word_embedding(tokenizer, embedding: nn.Embedding, word: str) -> torch.Tensor:
    """The embedding a handle starts from: the mean of the word's sub-token embeddings.

    A word the vocabulary splits into pieces ("teddybear" -> "teddy", "bear") starts at the mean of its
    pieces, so no piece is silently dropped. Returns a (dim,) float32 tensor.
    """
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids or tokenizer.unk_token_id in ids and word != tokenizer.unk_token:
        raise ConfigError(f"init word {word!r} is not in this model's vocabulary; choose a common English word")
    return embedding.weight.detach()[ids].float().mean(dim=0)


class HandleEmbedding(nn.Module):
    """A token-embedding table whose handle rows come from a separate, trainable parameter.

    ``forward`` returns exactly the wrapped table's rows for every other id, so everything not a handle is
    bit-identical to the base model however long the handles train.
    """

    def __init__(self, base: nn.Embedding, handle_ids: list[int], init: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("handle_ids", torch.tensor(handle_ids, dtype=torch.long), persistent=False)
        self.handle_vectors = nn.Parameter(init.to(base.weight.device, torch.float32).clone())  # (K, dim)
        # Handle id -> row of handle_vectors (or -1): a lookup table so forward needs no Python loop.
        lookup = torch.full((base.num_embeddings,), -1, dtype=torch.long)
        lookup[self.handle_ids.cpu()] = torch.arange(len(handle_ids))
        self.register_buffer("row_of_id", lookup.to(base.weight.device), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        # Some library code reads ``embeddings.weight`` (dtype/device checks); hand it the base table.
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, dim) embeddings."""
        embeds = self.base(input_ids)
        rows = self.row_of_id[input_ids]  # (B, T), -1 where not a handle
        is_handle = (rows >= 0).unsqueeze(-1)
        handle_embeds = self.handle_vectors.to(embeds.dtype)[rows.clamp(min=0)]
        return torch.where(is_handle, handle_embeds, embeds)


def attach_handles(tokenizer, text_encoder, handles: list[Handle]) -> HandleEmbedding:
    """Adds the handle tokens, grows the text encoder's table and wraps it in a :class:`HandleEmbedding`.

    Returns the wrapper; its ``handle_vectors`` (K, dim) is the parameter that phase 1 trains.
    """
    if any(h.init_word is None for h in handles):
        raise ValueError("resolve_init_words() first: every handle needs its init word")
    ids = add_handle_tokens(tokenizer, [h.token for h in handles])
    grow_token_table(text_encoder, len(tokenizer))  # rows set below
    base = text_encoder.get_input_embeddings()
    init = torch.stack([init_word_embedding(tokenizer, base, h.init_word) for h in handles])
    # The new rows of the base table get the initial vectors too, so the table alone is a sensible model.
    with torch.no_grad():
        base.weight[ids] = init.to(base.weight.dtype)
    base.weight.requires_grad_(False)
    wrapper = HandleEmbedding(base, ids, init)
    text_encoder.set_input_embeddings(wrapper)
    return wrapper


def attach_handles_to_each(tokenizers: list, text_encoders: list, handles: list[Handle]) -> list[HandleEmbedding]:
    """:func:`attach_handles` for every (tokenizer, text encoder) pair: a row per handle in each table, each
    started from the init word in that encoder (SDXL has two). Raises if the tokenizers give the handles
    different ids, because handle positions are looked up in the first tokenizer's ids only."""
    embeddings = [attach_handles(tokenizer, encoder, handles) for tokenizer, encoder in zip(tokenizers, text_encoders)]
    ids = embeddings[0].handle_ids.tolist()
    if any(e.handle_ids.tolist() != ids for e in embeddings):
        raise RunError("the model's tokenizers gave the handles different ids; their vocabularies differ")
    return embeddings


def layer_parameters(text_encoder) -> list[tuple[str, nn.Parameter]]:
    """Every named parameter of a text encoder but its token table's (with the handle vectors, when attached):
    what a full phase 2 trains, so that ordinary words keep their meaning. Found by module, not by name, since
    each encoder names its table its own way (CLIP ``token_embedding``, T5 ``shared``, tied to its encoder's)."""
    table = {id(p) for p in text_encoder.get_input_embeddings().parameters()}
    return [(name, p) for name, p in text_encoder.named_parameters() if id(p) not in table]


def merge_handles(text_encoder) -> torch.Tensor:
    """Writes the learned handle vectors into the plain table and unwraps it. Returns them, (K, dim) float32."""
    wrapper = text_encoder.get_input_embeddings()
    if not isinstance(wrapper, HandleEmbedding):
        raise TypeError("the text encoder carries no handles to merge")
    vectors = wrapper.handle_vectors.detach().float().clone()
    with torch.no_grad():
        wrapper.base.weight[wrapper.handle_ids] = vectors.to(wrapper.base.weight.dtype)
    text_encoder.set_input_embeddings(wrapper.base)
    return vectors


def handle_table_names(count: int) -> list[str]:
    """The names of the handle vectors of ``count`` text encoders in checkpoints: "handles", "handles_2", ..."""
    return ["handles"] + [f"handles_{k + 1}" for k in range(1, count)]


def save_handles(path: str | Path, handles: list[Handle], vectors: torch.Tensor,
                 second: torch.Tensor | None = None) -> None:
    """Writes ``handles.safetensors``: one (K, dim) tensor under the key ``"embeddings"`` (for SDXL also the
    second text encoder's (K, dim_2) under ``"embeddings_2"``).

    The token list, in row order, is in the file's metadata under ``"tokens"``. Stock diffusers takes the
    tensor with its tokens: ``pipe.load_textual_inversion(load_file(path)["embeddings"], token=tokens)`` (given
    the file itself, it would read one multi-vector concept instead).
    """
    metadata = {
        "tokens": ",".join(h.token for h in handles),
        "init_words": ",".join(h.init_word for h in handles),
        "background": BACKGROUND_NAME if any(h.is_background for h in handles) else "",
    }
    tables = {"embeddings": vectors}
    if second is not None:
        tables["embeddings_2"] = second
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tables.items()}, str(path), metadata=metadata)


def load_handles(path: str | Path) -> tuple[list[str], torch.Tensor]:
    """Reads ``handles.safetensors``: returns (tokens, (K, dim) float32 tensor)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist; is this a finished break-a-scene run folder?")
    with safe_open(str(path), framework="pt") as f:
        tokens = (f.metadata() or {}).get("tokens", "")
    return [t for t in tokens.split(",") if t], load_file(str(path))["embeddings"]


def load_second_handles(path: str | Path) -> torch.Tensor | None:
    """The second text encoder's (K, dim_2) handle vectors in ``handles.safetensors`` (SDXL), or None."""
    return load_file(str(path)).get("embeddings_2")


def embedding_files(vectors: torch.Tensor, second: torch.Tensor | None, key: Callable[[int], str]) -> list[dict]:
    """One textual-inversion file's tensors per handle, each (1, dim) float32: with ``second`` (SDXL) the rows of
    both text encoders under ``clip_l`` and ``clip_g`` (what A1111, Forge and ComfyUI read), else the one row
    under ``key(k)``."""
    files = []
    for k, vector in enumerate(vectors):
        tables = {"clip_l": vector, "clip_g": second[k]} if second is not None else {key(k): vector}
        files.append({name: v.detach().float().reshape(1, -1).contiguous() for name, v in tables.items()})
    return files


def handles_meant(prompt: str, tokens: list[str]) -> list[str]:
    """The handles whose bare name a prompt uses as a word ("a photo of asset0" -> ["<asset0>"]): likely meant."""
    words = {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9_-]*", HANDLE_PATTERN.sub(" ", prompt))}
    return [t for t in tokens if t[1:-1].lower() in words]


def find_handle_positions(input_ids: torch.Tensor, handle_ids: list[int]) -> list[int]:
    """Index of each handle id in a (T,) prompt; raises if a handle is missing or repeated."""
    positions = []
    for token_id in handle_ids:
        where = (input_ids == token_id).nonzero().flatten()
        if len(where) != 1:
            raise ValueError(f"token id {token_id} appears {len(where)} times in the prompt, expected once")
        positions.append(int(where[0]))
    return positions
