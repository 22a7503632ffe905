import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from breakascene.errors import ConfigError
from breakascene.handles import (
    HandleEmbedding,
    attach_handles,
    load_handles,
    make_handles,
    merge_handles,
    resolve_init_words,
    save_handles,
)
from breakascene.models.tiny import build_tiny_components


def test_default_names_init_words_and_background():
    handles = make_handles(2)
    assert [h.token for h in handles] == ["<asset0>", "<asset1>", "<bg>"]
    assert [h.init_word for h in handles] == [None, None, "background"]  # None: a rare word each, see below
    assert handles[-1].is_background
    named = make_handles(2, names=["dog", "shirt"], background=False)
    assert [h.token for h in named] == ["<dog>", "<shirt>"] and [h.init_word for h in named] == ["dog", "shirt"]
    assert [h.init_word for h in make_handles(1, ["dog"], ["puppy"])][:1] == ["puppy"]


@pytest.mark.parametrize(
    "names, phrase",
    [(["a", "a"], "duplicate"), (["my dog"], "not usable"), (["<x>"], "not usable"), (["bg"], "background"), (["a", "b"], "2 names")],
)
def test_bad_names(names, phrase):
    with pytest.raises(ConfigError, match=phrase):
        make_handles(1 if phrase != "duplicate" else 2, names=names)


def test_unnamed_handles_start_from_distinct_rare_words():
    c = build_tiny_components()
    tokenizer, text_encoder = c["tokenizer"], c["text_encoder"]
    handles = resolve_init_words(tokenizer, make_handles(3))
    words = [h.init_word for h in handles[:3]]
    assert len(set(words)) == 3 and handles[3].init_word == "background"
    # Rare: among the last whole-word entries of the BPE vocabulary (merges come most frequent first).
    whole_words = sorted((i, t[:-4]) for t, i in tokenizer.get_vocab().items() if t.endswith("</w>") and len(t) > 6)
    assert set(words) <= {w for _, w in whole_words[-6:]}
    for word in words:  # each is one token, so the run records a word that means that row
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1
    # A given init word is kept, and never handed out again as a rare word.
    mixed = resolve_init_words(tokenizer, make_handles(2, init_words=[words[0], None], background=False))
    assert mixed[0].init_word == words[0] and mixed[1].init_word == words[1]
    wrapper = attach_handles(tokenizer, text_encoder, handles)
    vectors = torch.nn.functional.normalize(wrapper.handle_vectors.detach(), dim=1)
    cosine = vectors @ vectors.T
    assert (cosine[~torch.eye(4, dtype=torch.bool)] < 0.9).all()  # the old default, "object" for all, gave 1.0
    with pytest.raises(ValueError, match="resolve_init_words"):
        attach_handles(tokenizer, text_encoder, make_handles(1, background=False))


def test_existing_token_is_rejected():
    c = build_tiny_components()
    c["tokenizer"].add_tokens(["<dog>"])
    c["text_encoder"].resize_token_embeddings(len(c["tokenizer"]))
    with pytest.raises(ConfigError, match="already a token"):
        attach_handles(c["tokenizer"], c["text_encoder"], make_handles(1, ["dog"]))


def test_multi_piece_init_word_starts_at_the_mean_of_its_pieces():
    c = build_tiny_components()
    tokenizer, text_encoder = c["tokenizer"], c["text_encoder"]
    pieces = tokenizer("dogcat", add_special_tokens=False).input_ids
    assert len(pieces) > 1
    table = text_encoder.get_input_embeddings().weight.detach().clone()
    wrapper = attach_handles(tokenizer, text_encoder, make_handles(1, ["x"], ["dogcat"], background=False))
    assert torch.allclose(wrapper.handle_vectors[0], table[pieces].mean(0))


def test_wrapper_changes_only_handle_positions_and_only_handles_get_gradient():
    c = build_tiny_components()
    tokenizer, text_encoder = c["tokenizer"], c["text_encoder"]
    plain = text_encoder.get_input_embeddings().weight.detach().clone()
    wrapper = attach_handles(tokenizer, text_encoder, resolve_init_words(tokenizer, make_handles(2)))
    assert isinstance(text_encoder.get_input_embeddings(), HandleEmbedding)
    ids = tokenizer(["a photo of <asset1> and <bg>"], return_tensors="pt").input_ids
    with torch.no_grad():
        wrapper.handle_vectors.add_(1.0)
    embeds = wrapper(ids)
    for position, token_id in enumerate(ids[0].tolist()):
        if token_id in wrapper.handle_ids.tolist():
            row = wrapper.handle_ids.tolist().index(token_id)
            assert torch.equal(embeds[0, position], wrapper.handle_vectors[row])
        else:
            assert torch.equal(embeds[0, position], plain[token_id])
    hidden = text_encoder(ids)[0]
    # A random read-out: the plain sum of a LayerNorm's output is a constant, whose gradient is zero up to rounding.
    (hidden * torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert wrapper.base.weight.grad is None
    grad = wrapper.handle_vectors.grad
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0  # <asset0> unused


def test_merge_and_stock_textual_inversion_loading(tmp_path):
    c = build_tiny_components()
    handles = resolve_init_words(c["tokenizer"], make_handles(2))
    wrapper = attach_handles(c["tokenizer"], c["text_encoder"], handles)
    with torch.no_grad():
        wrapper.handle_vectors.copy_(torch.randn_like(wrapper.handle_vectors))
    learned = wrapper.handle_vectors.detach().clone()
    ids = c["tokenizer"](["a photo of <asset0> and <bg>"], return_tensors="pt").input_ids
    before = c["text_encoder"](ids)[0]
    vectors = merge_handles(c["text_encoder"])
    assert torch.equal(vectors, learned)
    assert isinstance(c["text_encoder"].get_input_embeddings(), torch.nn.Embedding)
    assert torch.allclose(c["text_encoder"](ids)[0], before, atol=1e-6)

    path = tmp_path / "handles.safetensors"
    save_handles(path, handles, vectors)
    tokens, loaded = load_handles(path)
    assert tokens == ["<asset0>", "<asset1>", "<bg>"] and torch.equal(loaded, learned)

    # A stock pipeline (fresh, without the tokens) accepts the vectors through load_textual_inversion.
    stock = StableDiffusionPipeline(**build_tiny_components(), safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    stock.load_textual_inversion(load_file(path)["embeddings"], token=tokens)
    new_ids = stock.tokenizer.convert_tokens_to_ids(tokens)
    assert torch.equal(stock.text_encoder.get_input_embeddings().weight[new_ids].detach(), learned)
