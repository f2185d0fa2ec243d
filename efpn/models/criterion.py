"""Training criteria: label assignment + losses for each head family.

A criterion takes the head's raw predictions, the priors, the targets and the FBSM gates (for mask supervision)
and returns ``(losses, stats)``: a dict of named scalar losses with fixed keys per family, and a
:class:`CriterionStats` with the per-level positive accounting and DCLoss statistics used by training telemetry.
Assignment runs under ``no_grad`` in :mod:`efpn.det.assign`; the loss functions are pure (:mod:`efpn.det.losses`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.config import HeadConfig, LossConfig
from efpn.det import boxes as bx
from efpn.det import losses as L
from efpn.det.accounting import LevelAccounting, account
from efpn.det.assign import Assignment, assign_atss, assign_maxiou, assign_yolov5_batch
from efpn.det.priors import Priors
from efpn.det.tal import assign_tal_batch
from efpn.layers.fbsm import box_mask_target, gate_mass_inside
from efpn.layers.internals import GateInternals
from efpn.vocab import level_stride, size_bucket

Targets = Sequence[Mapping[str, Tensor]]


@dataclass
class CriterionStats:
    """What one loss evaluation learned about the batch (all detached, for logging and the studio)."""

    accounting: LevelAccounting | None = None
    num_pos: int = 0
    dcloss: dict[str, dict[str, float]] = field(default_factory=dict)
    gate_mass: dict[str, float] = field(default_factory=dict)


def gate_target(targets: Targets, level: str, like: Tensor) -> Tensor:
    """The FBSM target at ``level``: the targets' boxes rasterised on ``like``'s (H, W) grid -> (N, 1, H, W),
    same dtype and device as ``like``."""
    boxes = [t["boxes"] for t in targets]
    return box_mask_target(boxes, tuple(like.shape[-2:]), level_stride(level)).to(like)


def _orig_sizes_bucket(gt: Tensor, scale: float) -> Tensor:
    """Size bucket of network-pixel boxes, measured in the user's original pixels (``scale`` = net / orig)."""
    return size_bucket(gt / scale)


class _Base(nn.Module):
    def __init__(self, head: HeadConfig, loss: LossConfig, num_classes: int, mask_levels: Sequence[str] = ()):
        super().__init__()
        self.head_cfg = head
        self.loss_cfg = loss
        self.num_classes = num_classes
        self.mask_levels = tuple(mask_levels)
        self.dcloss = (
            L.DCLoss(eta=loss.dcloss_eta, momentum=loss.dcloss_momentum, warmup=loss.dcloss_warmup)
            if loss.dcloss
            else None
        )

    def _dc_weights(self, cls_prob: Tensor, iou: Tensor, bucket: Tensor, num_images: int) -> Tensor:
        """Per-positive DCLoss weights (P,), ones when DCLoss is off."""
        if self.dcloss is None or cls_prob.numel() == 0:
            return torch.ones_like(iou)
        return self.dcloss.weights(cls_prob.detach(), iou.detach(), bucket, num_images)

    def _mask_losses(
        self, gates: Mapping[str, GateInternals], targets: Targets, stats: CriterionStats
    ) -> dict[str, Tensor]:
        """FBSM mask supervision: focal BCE against rasterised boxes at each gated level (SPEC §3)."""
        weight = getattr(self, "mask_weight", 0.0)
        if not self.mask_levels:
            return {}
        total: Tensor | None = None
        for lv in self.mask_levels:
            gate = gates.get(lv)
            if gate is None:
                continue
            target = gate_target(targets, lv, gate.logits)
            term = L.mask_focal_loss(gate.logits, target)
            total = term if total is None else total + term
            with torch.no_grad():
                stats.gate_mass[lv] = float(gate_mass_inside(gate.mask, target).mean())
        if total is None or weight <= 0:
            return {}
        return {"loss_mask": weight * total / len(self.mask_levels)}


class RetinaCriterion(_Base):
    """Anchor head with MaxIoU or ATSS assignment: sigmoid focal loss over non-ignored anchors and GIoU on
    decoded positive boxes, both normalised by the number of positives; optional DCLoss re-weighting of positives."""

    def __init__(
        self,
        head: HeadConfig,
        loss: LossConfig,
        num_classes: int,
        mask_levels: Sequence[str] = (),
        mask_weight: float = 0.0,
    ):
        super().__init__(head, loss, num_classes, mask_levels)
        self.mask_weight = mask_weight
        if head.assigner == "maxiou":
            self.assigner: Callable[[Priors, Tensor], Assignment] = lambda p, g: assign_maxiou(
                p, g, pos_iou=head.pos_iou, neg_iou=head.neg_iou, low_quality=True
            )
        elif head.assigner == "atss":
            self.assigner = lambda p, g: assign_atss(p, g)
        else:
            raise ValueError(f"the retina head supports 'maxiou' or 'atss' assignment, got {head.assigner!r}")

    def forward(
        self, out, priors: Priors, targets: Targets, gates: Mapping[str, GateInternals]
    ) -> tuple[dict[str, Tensor], CriterionStats]:
        n, r, k = out.cls_logits.shape
        stats = CriterionStats()
        cls_target = torch.zeros_like(out.cls_logits)  # (N, R, K)
        valid = torch.ones(n, r, dtype=torch.bool, device=out.cls_logits.device)
        pos_img, pos_prior, pos_gt_boxes, pos_bucket, pos_labels = [], [], [], [], []
        for i, t in enumerate(targets):
            gt, labels = t["boxes"], t["labels"]
            a = self.assigner(priors, gt)
            acc = account(a, priors, gt, pos_iou=self.head_cfg.pos_iou if self.head_cfg.assigner == "maxiou" else None,
                          scale=float(t.get("scale", 1.0)))
            stats.accounting = acc if stats.accounting is None else stats.accounting.merge(acc)
            matched = a.matched_gt()  # (R,): -2 ignore, -1 background, >= 0 GT index
            valid[i] = matched != -2
            pos = matched >= 0
            idx = pos.nonzero().squeeze(1)
            cls_target[i, idx, labels[matched[idx]]] = 1.0
            pos_img.append(torch.full_like(idx, i))
            pos_prior.append(idx)
            pos_gt_boxes.append(gt[matched[idx]])
            pos_labels.append(labels[matched[idx]])
            pos_bucket.append(_orig_sizes_bucket(gt[matched[idx]], float(t.get("scale", 1.0))))
        img_i, prior_i = torch.cat(pos_img), torch.cat(pos_prior)
        gt_b, bucket, lab = torch.cat(pos_gt_boxes), torch.cat(pos_bucket), torch.cat(pos_labels)
        num_pos = max(1, int(prior_i.numel()))
        stats.num_pos = int(prior_i.numel())

        pred_boxes = bx.decode_deltas(priors.boxes[prior_i], out.box[img_i, prior_i])  # (P, 4)
        iou = bx.box_iou_pairwise(pred_boxes.detach(), gt_b)
        cls_prob = out.cls_logits[img_i, prior_i, lab].detach().sigmoid()
        w = self._dc_weights(cls_prob, iou, bucket, n)  # (P,)

        focal = L.sigmoid_focal_loss(
            out.cls_logits, cls_target, alpha=self.loss_cfg.focal_alpha, gamma=self.loss_cfg.focal_gamma,
            reduction="none",
        ).sum(-1)  # (N, R)
        row_w = torch.ones_like(focal)
        row_w[img_i, prior_i] = w
        loss_cls = (focal * row_w * valid).sum() / num_pos
        box_fn = L.ciou_loss if self.loss_cfg.box == "ciou" else L.giou_loss
        loss_box = (box_fn(pred_boxes, gt_b) * w).sum() / num_pos
        losses = {"loss_cls": self.loss_cfg.cls_weight * loss_cls, "loss_box": self.loss_cfg.box_weight * loss_box}
        losses.update(self._mask_losses(gates, targets, stats))
        if self.dcloss is not None:
            stats.dcloss = self.dcloss.stats()
        return losses, stats


class YOLOv5Criterion(_Base):
    """YOLOv5 ratio assignment; CIoU box loss on positives, BCE objectness against the detached CIoU with
    per-level balance (4.0, 1.0, 0.4 for p3, p4, p5), BCE classification on positives."""

    balance = {"p3": 4.0, "p4": 1.0, "p5": 0.4}

    def __init__(self, head: HeadConfig, loss: LossConfig, num_classes: int, image_size: int = 640):
        super().__init__(head, loss, num_classes)

    def forward(
        self, out, priors: Priors, targets: Targets, gates: Mapping[str, GateInternals]
    ) -> tuple[dict[str, Tensor], CriterionStats]:
        n, r, k = out.cls_logits.shape
        stats = CriterionStats()
        img_l, prior_l, gt_l, lab_l, bucket_l = [], [], [], [], []
        # the whole batch assigned at once (each image exactly as assign_yolov5 alone would)
        assignments = assign_yolov5_batch(priors, [t["boxes"] for t in targets])
        for i, (t, a) in enumerate(zip(targets, assignments)):
            gt, labels = t["boxes"], t["labels"]
            acc = account(a, priors, gt, scale=float(t.get("scale", 1.0)))
            stats.accounting = acc if stats.accounting is None else stats.accounting.merge(acc)
            img_l.append(torch.full_like(a.prior_idx, i))
            prior_l.append(a.prior_idx)
            gt_l.append(gt[a.gt_idx])
            lab_l.append(labels[a.gt_idx])
            bucket_l.append(_orig_sizes_bucket(gt[a.gt_idx], float(t.get("scale", 1.0))))
        img_i, prior_i = torch.cat(img_l), torch.cat(prior_l)
        gt_b, lab, bucket = torch.cat(gt_l), torch.cat(lab_l), torch.cat(bucket_l)
        stats.num_pos = int(prior_i.numel())
        device = out.cls_logits.device

        pbox = bx.decode_yolov5(priors.boxes[prior_i], priors.strides[prior_i], out.box[img_i, prior_i])  # (P, 4)
        ciou = bx.ciou_pairwise(pbox, gt_b)  # (P,)
        cls_prob = out.cls_logits[img_i, prior_i, lab].detach().sigmoid()
        w = self._dc_weights(cls_prob, ciou.detach().clamp(0, 1), bucket, n)
        loss_box = ((1.0 - ciou) * w).sum() / max(1, ciou.numel())

        # objectness target: detached CIoU at positive priors (the best match wins for a repeated prior)
        flat = img_i * r + prior_i
        obj_t = torch.zeros(n * r, device=device, dtype=out.obj_logits.dtype)
        if flat.numel():
            obj_t = obj_t.scatter_reduce(0, flat, ciou.detach().clamp(0).to(obj_t.dtype), reduce="amax")
        obj_t = obj_t.view(n, r)
        bce = F.binary_cross_entropy_with_logits(out.obj_logits, obj_t, reduction="none")  # (N, R)
        loss_obj = bce.new_zeros(())
        for li, lv in enumerate(priors.levels):
            sel = priors.level == li
            loss_obj = loss_obj + self.balance.get(lv, 1.0) * bce[:, sel].mean()

        if k > 1 and prior_i.numel():
            onehot = F.one_hot(lab, k).to(out.cls_logits.dtype)
            cls_bce = F.binary_cross_entropy_with_logits(out.cls_logits[img_i, prior_i], onehot, reduction="none")
            loss_cls = (cls_bce.mean(-1) * w).sum() / prior_i.numel()
        else:
            loss_cls = out.cls_logits.sum() * 0.0
        c = self.loss_cfg
        losses = {"loss_box": c.box_weight * loss_box, "loss_obj": c.obj_weight * loss_obj,
                  "loss_cls": c.cls_weight * loss_cls}
        if self.dcloss is not None:
            stats.dcloss = self.dcloss.stats()
        return losses, stats


class YOLOv8Criterion(_Base):
    """YOLOv8 task-aligned assignment; BCE classification against alignment-quality soft targets (normalised by
    their sum), CIoU and DFL on positives weighted by the same quality."""

    def __init__(self, head: HeadConfig, loss: LossConfig, num_classes: int):
        super().__init__(head, loss, num_classes)
        self.reg_max = head.reg_max

    def forward(
        self, out, priors: Priors, targets: Targets, gates: Mapping[str, GateInternals]
    ) -> tuple[dict[str, Tensor], CriterionStats]:
        n, r, k = out.cls_logits.shape
        stats = CriterionStats()
        stride = priors.strides[:, None]  # (R, 1)
        ltrb = bx.dfl_decode(out.box, self.reg_max) * stride  # (N, R, 4) in pixels
        pboxes = bx.dist2bbox(priors.points.expand(n, -1, -1), ltrb)  # (N, R, 4)
        scores = out.cls_logits.detach().sigmoid()
        target_scores = torch.zeros_like(out.cls_logits)  # (N, R, K)
        img_l, prior_l, gt_l, q_l, bucket_l, lab_l = [], [], [], [], [], []
        # the whole batch assigned at once (each image exactly as assign_tal alone would: efpn.det.tal)
        assignments = assign_tal_batch(priors, [t["boxes"] for t in targets], [t["labels"] for t in targets],
                                       scores, pboxes.detach())
        for i, (t, a) in enumerate(zip(targets, assignments)):
            gt, labels = t["boxes"], t["labels"]
            acc = account(a, priors, gt, scale=float(t.get("scale", 1.0)))
            stats.accounting = acc if stats.accounting is None else stats.accounting.merge(acc)
            q = a.quality if a.quality is not None else torch.ones_like(a.prior_idx, dtype=scores.dtype)
            target_scores[i, a.prior_idx, labels[a.gt_idx]] = q.to(target_scores.dtype)
            img_l.append(torch.full_like(a.prior_idx, i))
            prior_l.append(a.prior_idx)
            gt_l.append(gt[a.gt_idx])
            q_l.append(q.to(scores.dtype))
            lab_l.append(labels[a.gt_idx])
            bucket_l.append(_orig_sizes_bucket(gt[a.gt_idx], float(t.get("scale", 1.0))))
        img_i, prior_i = torch.cat(img_l), torch.cat(prior_l)
        gt_b, q, bucket, lab = torch.cat(gt_l), torch.cat(q_l), torch.cat(bucket_l), torch.cat(lab_l)
        stats.num_pos = int(prior_i.numel())
        tss = target_scores.sum().clamp(min=1.0)

        pb = pboxes[img_i, prior_i]
        ciou = bx.ciou_pairwise(pb, gt_b)
        w = self._dc_weights(scores[img_i, prior_i, lab], ciou.detach().clamp(0, 1), bucket, n) * q
        loss_box = ((1.0 - ciou) * w).sum() / tss
        s = priors.strides[prior_i][:, None]
        target_dist = bx.bbox2dist(priors.points[prior_i] / s, gt_b / s, self.reg_max)  # (P, 4) stride units
        loss_dfl = (L.dfl_loss(out.box[img_i, prior_i], target_dist) * w).sum() / tss
        loss_cls = F.binary_cross_entropy_with_logits(out.cls_logits, target_scores, reduction="sum") / tss
        c = self.loss_cfg
        losses = {"loss_box": c.box_weight * loss_box, "loss_cls": c.cls_weight * loss_cls,
                  "loss_dfl": c.dfl_weight * loss_dfl}
        if self.dcloss is not None:
            stats.dcloss = self.dcloss.stats()
        return losses, stats
