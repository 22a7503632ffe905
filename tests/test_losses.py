import pytest
import torch

from breakascene.losses import cross_attention_loss, masked_diffusion_loss


def test_masked_loss_matches_a_hand_computation():
    pred, target = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:5, 1:7] = 1
    expected = sum(
        float((pred[0, c, y, x] - target[0, c, y, x]) ** 2) for c in range(4) for y in range(2, 5) for x in range(1, 7)
    )
    assert masked_diffusion_loss(pred, target, mask).item() == pytest.approx(expected / (4 * 8 * 8), rel=1e-5)
    assert masked_diffusion_loss(pred, target, mask, normalize_by_area=True).item() == pytest.approx(
        expected / (4 * 3 * 6), rel=1e-5
    )


def test_no_gradient_from_latents_outside_the_mask():
    pred = torch.randn(1, 4, 8, 8, requires_grad=True)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    masked_diffusion_loss(pred, torch.randn(1, 4, 8, 8), mask).backward()
    assert pred.grad[..., 4:, :].abs().max() == 0
    assert pred.grad[..., :4, :].abs().min() > 0


def test_soft_mask_weights_the_error():
    pred, target = torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    mask = torch.tensor([[[[1.0, 0.5]]]])
    # (1*1)^2 + (0.5*1)^2 over 2 elements
    assert masked_diffusion_loss(pred, target, mask).item() == pytest.approx((1 + 0.25) / 2)


def test_empty_mask_gives_zero_not_nan():
    zero = torch.zeros(1, 8, 8)
    for normalize in (False, True):
        loss = masked_diffusion_loss(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), zero, normalize)
        assert loss.item() == 0


def test_attention_loss_matches_an_independent_computation():
    maps = torch.rand(3, 4, 4)
    masks = (torch.rand(3, 4, 4) > 0.5).float()
    expected = 0.0
    for k in range(3):
        normalized = maps[k] / maps[k].max()
        expected += float(((normalized - masks[k]) ** 2).mean())
    # The default is the research code's sum over the sampled handles (lambda = 0.01 was chosen for it).
    assert cross_attention_loss(maps, masks).item() == pytest.approx(expected, rel=1e-5)
    assert cross_attention_loss(maps, masks, "sum").item() == pytest.approx(expected, rel=1e-5)
    assert cross_attention_loss(maps, masks, "mean").item() == pytest.approx(expected / 3, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        cross_attention_loss(maps, masks, "max")


def test_attention_loss_is_zero_for_a_map_equal_to_its_mask_up_to_scale():
    masks = torch.zeros(2, 4, 4)
    masks[0, :2] = 1
    masks[1, 2:] = 1
    assert cross_attention_loss(masks * 0.02, masks).item() == pytest.approx(0, abs=1e-6)


def test_attention_loss_gradient_pushes_mass_into_the_mask():
    logits = torch.zeros(1, 4, 4, requires_grad=True)
    mask = torch.zeros(1, 4, 4)
    mask[0, :2] = 1
    maps = torch.softmax(logits.flatten(1), dim=1).view(1, 4, 4)
    maps = maps + torch.linspace(0, 1e-3, 16).view(1, 4, 4)  # break the tie of the maximum
    cross_attention_loss(maps, mask).backward()
    # Descending the gradient raises the logits inside the mask relative to those outside.
    assert (-logits.grad[0, :2]).mean() > (-logits.grad[0, 2:]).mean()


def test_shapes_must_match():
    with pytest.raises(ValueError):
        cross_attention_loss(torch.rand(2, 4, 4), torch.rand(2, 8, 8))
