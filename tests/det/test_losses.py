"""Hand-computed values and behaviour of efpn.det.losses, including the DCLoss statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from efpn.det.boxes import dfl_decode
from efpn.det.losses import (
    DCLoss,
    bce_with_logits,
    ciou_loss,
    dfl_loss,
    giou_loss,
    mask_focal_loss,
    sigmoid_focal_loss,
)
from efpn.vocab import BUCKETS

LOG2 = math.log(2.0)


# --- focal / BCE --------------------------------------------------------------------------------------------


def test_focal_loss_single_logit_by_hand() -> None:
    # logit 0 -> p = 0.5, CE = log 2, modulating (1 - p_t)^2 = 0.25; alpha_t = 0.25 (pos) / 0.75 (neg)
    logits = torch.zeros(2)
    targets = torch.tensor([1.0, 0.0])
    assert_close(sigmoid_focal_loss(logits, targets), torch.tensor([0.25 * 0.25 * LOG2, 0.75 * 0.25 * LOG2]))
    # logit 2, positive: p = sigmoid(2), loss = alpha (1 - p)^2 (-log p)
    p = 1 / (1 + math.exp(-2.0))
    expected = 0.25 * (1 - p) ** 2 * -math.log(p)
    assert_close(sigmoid_focal_loss(torch.tensor([2.0]), torch.tensor([1.0])), torch.tensor([expected]))


def test_focal_loss_reductions_and_gamma_zero_is_bce() -> None:
    logits, targets = torch.randn(3, 5), (torch.rand(3, 5) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert_close(sigmoid_focal_loss(logits, targets, alpha=None, gamma=0.0), bce)
    full = sigmoid_focal_loss(logits, targets)
    assert_close(sigmoid_focal_loss(logits, targets, reduction="sum"), full.sum())
    assert_close(sigmoid_focal_loss(logits, targets, reduction="mean"), full.mean())
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(logits, targets, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_focal_loss(logits, targets[:, :4])


def test_focal_loss_soft_target_vanishes_at_the_target() -> None:
    q = torch.tensor([0.3, 0.7])  # IoU-aware soft targets
    at_target = sigmoid_focal_loss(torch.logit(q), q)
    assert_close(at_target, torch.zeros(2))
    assert (sigmoid_focal_loss(torch.logit(q) + 1.0, q) > 0).all()


def test_bce_with_logits_weight() -> None:
    out = bce_with_logits(torch.zeros(2), torch.tensor([1.0, 0.5]), weight=torch.tensor([2.0, 0.0]))
    assert_close(out, torch.tensor([2 * LOG2, 0.0]))


# --- box losses ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [giou_loss, ciou_loss])
def test_box_losses_zero_for_perfect_and_differentiable(fn) -> None:
    target = torch.tensor([[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 12.0, 16.0]])
    assert_close(fn(target.clone(), target), torch.zeros(2))
    pred = torch.tensor([[1.0, 1.0, 5.0, 3.0], [20.0, 20.0, 22.0, 26.0]], requires_grad=True)
    loss = fn(pred, target)
    assert loss[1] > 1.0  # disjoint: 1 - GIoU/CIoU exceeds 1
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_giou_loss_hand_value() -> None:
    a, b = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert_close(giou_loss(a, b, reduction="mean"), torch.tensor(1 + 1 / 3))


# --- DFL ----------------------------------------------------------------------------------------------------


def two_bin_logits(y: float, reg_max: int) -> torch.Tensor:
    """Logits (1, 4, reg_max) whose softmax is the DFL target distribution of distance y on every side."""
    probs = torch.full((reg_max,), 1e-12)
    j = int(math.floor(y))
    probs[j], probs[j + 1] = j + 1 - y, y - j
    return probs.log().expand(1, 4, reg_max).clone()


def test_dfl_loss_hand_value_and_minimum_at_true_distance() -> None:
    reg_max, y = 16, 3.25
    target = torch.full((1, 4), y)
    ideal = dfl_loss(two_bin_logits(y, reg_max), target)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # CE of a distribution with itself
    assert_close(ideal, torch.tensor([entropy]), atol=1e-5, rtol=1e-5)
    for other in (2.25, 3.75, 4.25, 7.0):
        assert dfl_loss(two_bin_logits(other, reg_max), target) > ideal
    assert_close(dfl_decode(two_bin_logits(y, reg_max).flatten(1), reg_max), target, atol=1e-5, rtol=1e-5)


def test_dfl_loss_optimum_decodes_to_target() -> None:
    reg_max = 8
    target = torch.tensor([[0.5, 2.0, 3.3, 6.9]])
    logits = torch.zeros(1, 4 * reg_max, requires_grad=True)  # flat (P, 4*reg_max) layout
    opt = torch.optim.SGD([logits], lr=5.0)
    for _ in range(300):
        opt.zero_grad()
        dfl_loss(logits, target).sum().backward()
        opt.step()
    assert_close(dfl_decode(logits.detach(), reg_max), target, atol=0.05, rtol=0.0)


def test_dfl_loss_shapes() -> None:
    logits = torch.randn(3, 4, 16)
    target = torch.rand(3, 4) * 15
    assert_close(dfl_loss(logits, target), dfl_loss(logits.flatten(1), target))
    assert dfl_loss(logits, target).shape == (3,)
    with pytest.raises(ValueError, match="target_dist"):
        dfl_loss(logits, target[:, :3])
    with pytest.raises(ValueError, match="pred_logits"):
        dfl_loss(torch.randn(3, 5, 16), target)


# --- FBSM mask loss -----------------------------------------------------------------------------------------


def test_mask_focal_loss_hand_value() -> None:
    # equal logits -> p_fg = 0.5 on both pixels; fg pixel 0.25*0.25*log2, bg pixel 0.75*0.25*log2; 1 fg cell
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert_close(mask_focal_loss(logits, target), torch.tensor(0.25 * LOG2))
    # the same through an already-computed foreground probability
    assert_close(mask_focal_loss(torch.full((1, 1, 1, 2), 0.5), target), torch.tensor(0.25 * LOG2))


def test_mask_focal_loss_perfect_mask_is_zero_and_channel_order() -> None:
    target = (torch.rand(2, 1, 6, 6) > 0.7).float()
    fg_logit = (target * 2 - 1) * 12.0  # (N, 1, H, W): +12 on foreground, -12 on background
    logits = torch.cat((torch.zeros_like(fg_logit), fg_logit), dim=1)  # channel 1 = foreground
    assert mask_focal_loss(logits, target).item() < 1e-6
    assert mask_focal_loss(logits.flip(1), target).item() > 1.0  # wrong channel order is a bad mask
    assert mask_focal_loss(logits.flip(1), target, fg_index=0).item() < 1e-6


def test_mask_focal_loss_bad_shapes() -> None:
    with pytest.raises(ValueError, match="target"):
        mask_focal_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="logits"):
        mask_focal_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))


# --- DCLoss -------------------------------------------------------------------------------------------------


def positives(groups: list[tuple[int, int, float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bucket, count, g) groups -> (cls_prob, iou, bucket) with p = IoU = 1 - g/2, so each sample has g."""
    bucket = torch.cat([torch.full((n,), b, dtype=torch.long) for b, n, _ in groups])
    value = torch.cat([torch.full((n,), 1 - g / 2) for _, n, g in groups])
    return value, value.clone(), bucket


def test_dcloss_less_gradient_gets_higher_weight_by_hand() -> None:
    # 2 images; vt (0): 4 easy positives with g = 0.5 -> G = 4*0.5/2 = 1; s (2): 4 hard with g = 2 -> G = 4.
    # mean G = 2.5 -> w_vt = sqrt(2.5) , w_s = sqrt(2.5/4); after renormalisation (sum = 8): 4/3 and 2/3.
    dc = DCLoss(warmup=0)
    w = dc.weights(*positives([(0, 4, 0.5), (2, 4, 2.0)]), num_images=2)
    assert_close(w, torch.tensor([4 / 3] * 4 + [2 / 3] * 4))
    assert_close(dc.G, torch.tensor([1.0, 0.0, 4.0, 0.0, 0.0]))
    assert_close(dc.N, torch.tensor([2.0, 0.0, 2.0, 0.0, 0.0]))
    stats = dc.stats()
    assert list(stats["w"]) == list(BUCKETS)
    assert all(isinstance(v, float) for key in ("G", "N", "w") for v in stats[key].values())
    assert stats["w"]["vt"] == pytest.approx(math.sqrt(2.5))
    assert stats["w"]["s"] == pytest.approx(math.sqrt(2.5 / 4))
    assert stats["w"]["t"] == 1.0  # never seen -> neutral
    assert stats["steps"] == 1 and stats["warmup"] is False


def test_dcloss_ema_update() -> None:
    dc = DCLoss(warmup=0, momentum=0.9)
    dc.weights(*positives([(0, 4, 0.5), (2, 4, 2.0)]), num_images=2)  # initialises G = [1, 0, 4, 0, 0]
    dc.weights(*positives([(0, 2, 1.0)]), num_images=1)  # observation G = [2, 0, 0, 0, 0], N = [2, 0, 0...]
    assert_close(dc.G, torch.tensor([0.9 * 1 + 0.1 * 2, 0.0, 0.9 * 4, 0.0, 0.0]))
    assert_close(dc.N, torch.tensor([0.9 * 2 + 0.1 * 2, 0.0, 0.9 * 2, 0.0, 0.0]))


def test_dcloss_renormalises_to_num_positives() -> None:
    dc = DCLoss(warmup=0)
    for _ in range(3):
        p = 37
        w = dc.weights(torch.rand(p), torch.rand(p), torch.randint(0, 5, (p,)), num_images=4)
        assert_close(w.sum(), torch.tensor(float(p)))
        assert not w.requires_grad


def test_dcloss_clip_bounds() -> None:
    # four buckets with almost no gradient and one dominant: raw weights sqrt(40/0.001) and sqrt(40/200)
    dc = DCLoss(warmup=0)
    dc.weights(*positives([(0, 1, 0.001), (1, 1, 0.001), (2, 1, 0.001), (3, 1, 0.001), (4, 100, 2.0)]), 1)
    w = dc.stats()["w"]
    assert [w[b] for b in BUCKETS] == pytest.approx([4.0, 4.0, 4.0, 4.0, 0.5])


def test_dcloss_warmup_gives_ones_while_stats_update() -> None:
    dc = DCLoss(warmup=2)
    batch = positives([(0, 4, 0.5), (2, 4, 2.0)])
    assert_close(dc.weights(*batch, num_images=2), torch.ones(8))
    assert dc.stats()["w"]["vt"] == 1.0 and dc.stats()["warmup"] is True  # the next call is still warm-up
    assert_close(dc.weights(*batch, num_images=2), torch.ones(8))
    assert int(dc.steps) == 2 and dc.G[0] > 0  # statistics kept updating
    assert dc.stats()["warmup"] is False  # the 3rd call is weighted
    assert_close(dc.weights(*batch, num_images=2), torch.tensor([4 / 3] * 4 + [2 / 3] * 4))


def test_dcloss_eval_mode_does_not_update() -> None:
    dc = DCLoss(warmup=0)
    batch = positives([(0, 4, 0.5), (2, 4, 2.0)])
    dc.weights(*batch, num_images=2)
    before = {k: v.clone() for k, v in dc.state_dict().items()}
    dc.eval()
    w = dc.weights(*positives([(1, 10, 2.0)]), num_images=1)
    assert_close(w, torch.ones(10))  # bucket t has no statistics -> neutral
    for k, v in dc.state_dict().items():
        assert_close(v, before[k])
    assert set(before) == {"G", "N", "steps"}  # saved with checkpoints


def test_dcloss_focusing_gamma() -> None:
    dc = DCLoss(warmup=0)
    assert_close(dc.focusing_gamma(torch.tensor([0, 2])), torch.tensor([2.0, 2.0]))  # no stats yet
    dc.weights(*positives([(0, 4, 0.5), (2, 4, 2.0)]), num_images=2)  # G = [1, 0, 4, 0, 0]
    gamma = dc.focusing_gamma(torch.tensor([0, 1, 2]))
    assert_close(gamma, torch.tensor([2 + 2 * (1 - 1 / 4), 2.0, 2.0]))


def test_dcloss_empty_batch_and_bad_input() -> None:
    dc = DCLoss(warmup=0)
    w = dc.weights(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), num_images=2)
    assert w.shape == (0,)
    with pytest.raises(ValueError, match="bucket indices"):
        dc.weights(torch.ones(2), torch.ones(2), torch.tensor([0, 5]), num_images=1)
    with pytest.raises(ValueError, match=r"\(P,\)"):
        dc.weights(torch.ones(2), torch.ones(3), torch.tensor([0, 1]), num_images=1)
    with pytest.raises(ValueError, match="num_images"):
        dc.weights(torch.ones(2), torch.ones(2), torch.tensor([0, 1]), num_images=0)


def test_focal_loss_equals_torchvision_on_hard_targets_and_differs_on_soft() -> None:
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    torch.manual_seed(0)
    logits = torch.randn(64, 3)
    hard = (torch.rand(64, 3) > 0.7).float()
    torch.testing.assert_close(sigmoid_focal_loss(logits, hard), tv_focal(logits, hard, reduction="none"))
    soft = torch.sigmoid(logits)  # predicted exactly: our QFL factor is 0, torchvision's is not
    assert float(sigmoid_focal_loss(logits, soft).abs().max()) < 1e-6
    assert float(tv_focal(logits, soft, reduction="none").min()) > 1e-4
