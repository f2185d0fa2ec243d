"""Where an SGDM training step spends its time: every SGDM of a preset, stage by stage, against the conv it replaces.

``train_throughput.py`` measures the whole step of ``yolov8n_sgdm`` against ``yolov8n``; this benchmark splits the
difference. For every SGDM of the preset it takes the input that SGDM sees on a real batch (320 px, batch 8 by
default) and times forward + backward (``torch.autograd.grad`` on fixed random upstream gradients, with respect to
the stage's inputs and parameters) of:

- ``replaced conv``: the ``ConvBNAct`` (k x k, stride s, SiLU) that the static preset has in that place;
- ``SGDM``: the whole module, as a training step runs it (the fast path);
- its stages, each alone on the previous stage's output (detached, so nothing is timed twice):
  ``razor statistics`` (mean/max over channels and the global average), ``razor conv + channel logits``,
  ``kernel head`` (BatchNorm on batch statistics, softmax, static guidance), ``aggregation`` (the per-pixel
  kernels applied to x), and ``pointwise MLP + join`` (the MLP, the static branch, both BatchNorms, the sum and the
  activation; the static branch is the replaced conv's work, so its extra over that conv is what SGDM adds).

``SGDM - replaced conv`` is an SGDM's extra time; what the stages do not explain of it ("rest") is mostly autograd
adding x's three gradients (static conv, aggregation, razor) and running more, smaller operators. The two presets'
whole training steps run in the same rounds, so the table can say what the step ratio would be if a stage cost
nothing: the step ratio less ``(sum of that stage's extra over the SGDMs) / step_static``. That is an estimate (isolated
times do not add up exactly inside a step, where caches are colder), good for deciding where work can pay off.

Run from the repository root (with ``OMP_WAIT_POLICY=PASSIVE``, as ``run_all.py`` sets)::

    .venv/bin/python bench/sgdm_stages.py
    .venv/bin/python bench/sgdm_stages.py --preset yolov5n_sgdm --base yolov5n
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import harness as H
import torch
import train_throughput as T
from torch import Tensor, nn

import efpn
from efpn.layers import kernel_head
from efpn.layers.conv import ConvBNAct
from efpn.layers.rdconv import apply_dynamic_kernels, razor_stats
from efpn.layers.sgdm import SGDM, guide_kernels

STAGES = ("razor statistics", "razor conv + channel logits", "kernel head", "aggregation", "pointwise MLP + join")
TARGET = 1.15  # train_throughput.py's bound on the step ratio


def _outputs(value: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def forward_backward(fn: Callable[[], Tensor | tuple[Tensor, ...]], wrt: Sequence[Tensor]) -> Callable[[], None]:
    """A case: ``fn()`` forward, then the gradients of ``wrt`` for random upstream gradients drawn once."""
    upstream = [torch.randn_like(o) for o in _outputs(fn())]
    inputs = [t for t in wrt if t.requires_grad]

    def case() -> None:
        torch.autograd.grad(_outputs(fn()), inputs, upstream, allow_unused=True)

    return case


def _leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_()


def _kernels(m: SGDM, x: Tensor, s: Tensor, c: Tensor) -> Tensor:
    """K from the razor conv's output s (N, G*k^2, H', W') and the channel logits c (N, G*k^2), as SGDM's training
    path computes it: the native kernel head where it applies, else BatchNorm + softmax + guidance as modules."""
    k2 = m.kernel_size * m.kernel_size
    bank = m.bank() if m.bank is not None else None  # (G, k^2)
    if kernel_head.applies(m.generator.spatial_bn, x, bank, k2):
        return kernel_head.guided_kernels(s, c, m.generator.spatial_bn, bank, m.eps, m.groups)
    n = s.shape[0]
    d = (m.generator.spatial_bn(s) + c.view(n, -1, 1, 1)).view(n, m.groups, k2, *s.shape[-2:]).softmax(2)
    return d if bank is None else guide_kernels(d, bank, m.eps)


def sgdm_cases(m: SGDM, x_in: Tensor) -> dict[str, Callable[[], None]]:
    """The replaced conv, the whole SGDM and its stages on input ``x_in`` (N, c_in, H, W), as timed cases."""
    k, s = m.kernel_size, m.stride
    params = [p for p in m.parameters() if p.requires_grad]
    x = _leaf(x_in)
    replaced = ConvBNAct(m.c_in, m.c_out, k, s).train()
    cases = {"replaced conv": forward_backward(lambda: replaced(x), [x, *replaced.parameters()]),
             "SGDM": forward_backward(lambda: m(x), [x, *params])}
    r, gap = (_leaf(t) for t in razor_stats(x))  # (N, 2, H, W), (N, c_in, 1, 1)
    cases["razor statistics"] = forward_backward(lambda: razor_stats(x), [x])
    gen = m.generator
    cases["razor conv + channel logits"] = forward_backward(
        lambda: (gen.spatial(r), gen.channel_logits(gap)), [r, gap, *gen.spatial.parameters(),
                                                            *gen.channel.parameters()])
    sl, cl = _leaf(gen.spatial(r)), _leaf(gen.channel_logits(gap))  # (N, G*k^2, H', W'), (N, G*k^2)
    head_params = [*gen.spatial_bn.parameters(), *(m.bank.parameters() if m.bank is not None else [])]
    cases["kernel head"] = forward_backward(lambda: _kernels(m, x, sl, cl), [sl, cl, *head_params])
    kernels = _leaf(_kernels(m, x, sl, cl))  # (N, G, k^2, H', W')
    cases["aggregation"] = forward_backward(lambda: apply_dynamic_kernels(x, kernels, k, s, m.impl), [x, kernels])
    dyn = _leaf(apply_dynamic_kernels(x, kernels, k, s, m.impl))  # (N, c_in, H', W')
    merge_params = [*m.pw.parameters(), *m.static.parameters()]
    # the module's own training merge (MLP, static branch, joined BatchNorms, activation): what SGDM.forward runs
    cases["pointwise MLP + join"] = forward_backward(lambda: m._merge_fast(dyn, x), [dyn, x, *merge_params])
    return cases


def capture_inputs(model: nn.Module, images: Tensor, targets: list[dict[str, Tensor]]) -> list[tuple[SGDM, Tensor]]:
    """Every SGDM of ``model`` with the input it receives in a training forward pass on the batch."""
    seen: list[tuple[SGDM, Tensor]] = []
    hooks = [mod.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].detach().clone())))
             for mod in model.modules() if isinstance(mod, SGDM)]
    try:
        model(images, targets)
    finally:
        for h in hooks:
            h.remove()
    return seen


def label(i: int, m: SGDM, x: Tensor) -> str:
    return f"SGDM {i} ({m.c_in}->{m.c_out}, {x.shape[-2]}x{x.shape[-1]} in, G={m.groups})"


def analyse(times: dict[str, list[float]], labels: list[str]) -> dict[str, Any]:
    """Medians per case, each SGDM's extra and its split, totals, and the step-ratio estimates."""
    med = {name: H.Summary.of(v).to_dict() for name, v in times.items()}

    def m(name: str) -> float:
        return float(med[name]["median"])

    per_sgdm: dict[str, dict[str, float]] = {}
    for lab in labels:
        extra = m(f"{lab} | SGDM") - m(f"{lab} | replaced conv")
        split = {st: m(f"{lab} | {st}") for st in STAGES}
        split["pointwise MLP + join"] -= m(f"{lab} | replaced conv")  # its static branch is the replaced conv's work
        split["rest"] = extra - sum(split.values())
        per_sgdm[lab] = {"replaced conv": m(f"{lab} | replaced conv"), "SGDM": m(f"{lab} | SGDM"), "extra": extra,
                         **split}
    totals = {key: sum(v[key] for v in per_sgdm.values()) for key in next(iter(per_sgdm.values()))}
    base, step = m("step | base"), m("step | preset")
    ratio = H.Ratio.of(times["step | preset"], times["step | base"])
    # the paired ratio less what the stage's time is of the static step: the same estimate on the headline's scale
    free = {st: ratio.paired - totals[st] / base for st in (*STAGES, "rest")}
    return {"medians_ms": med, "per_sgdm_ms": per_sgdm, "totals_ms": totals, "step_ms": {"base": base, "preset": step},
            "step_ratio": ratio.paired, "step_ratio_of_medians": ratio.of_medians, "ratio_if_free": free}


def render(payload: dict[str, Any]) -> str:
    a, res = payload["args"], payload["results"]
    per, tot = res["per_sgdm_ms"], res["totals_ms"]
    labels = list(per)
    cols = ["replaced conv", "SGDM", "extra", *STAGES, "rest"]
    rows = [[lab, *(f"{per[lab][c]:.2f}" for c in cols)] for lab in labels]
    rows.append(["**all SGDMs**", *(f"**{tot[c]:.2f}**" for c in cols)])
    steps = res["step_ms"]
    free_rows = [[st, f"{tot[st]:.1f}", f"{res['ratio_if_free'][st]:.3f}x"] for st in (*STAGES, "rest")]
    return "\n".join([
        "# SGDM training cost by stage",
        "",
        f"{a['preset']} against {a['base']}, {a['imgsz']} px, batch {a['batch']}, {a['threads']} CPU threads, training "
        f"mode; forward + backward per case, {a['rounds']} interleaved rounds after {a['warmup']} warm-up rounds; "
        "ms = median over rounds. Each stage runs alone on the previous stage's detached output; the pointwise MLP + "
        "join column is its time minus the replaced conv's (its static branch is that conv).",
        "",
        f"Machine: {H.machine_line(payload['machine'])}",
        "",
        "## Per SGDM (ms)",
        "",
        H.markdown_table(["SGDM", *cols], rows),
        "",
        "## Whole training step (same rounds)",
        "",
        f"{a['base']}: {steps['base']:.1f} ms, {a['preset']}: {steps['preset']:.1f} ms (medians), ratio "
        f"{res['step_ratio']:.3f}x (median of per-round ratios; {res['step_ratio_of_medians']:.3f}x of the medians; "
        f"target <= {TARGET}x). The SGDMs' extra measured alone: {tot['extra']:.1f} ms of the "
        f"{steps['preset'] - steps['base']:.1f} ms difference.",
        "",
        "Step ratio if a stage cost nothing (an estimate: the ratio less that stage's extra over all SGDMs, as a share "
        f"of the {a['base']} step):",
        "",
        H.markdown_table(["stage", "extra over all SGDMs (ms)", "ratio without it"], free_rows),
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="yolov8n_sgdm", help="preset with SGDMs (default yolov8n_sgdm)")
    ap.add_argument("--base", default="yolov8n", help="its static counterpart (default yolov8n)")
    ap.add_argument("--imgsz", type=int, default=320, help="image side (default 320)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="sgdm_stages", help="result name under bench/results")
    args = ap.parse_args(argv)
    # train_throughput's data and trainer helpers read these
    args.num_images, args.device, args.channels_last, args.amp = args.batch, "cpu", False, "off"
    args.sgdm_path, args.compile = "fast", False
    return args


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (also written to ``bench/results/<out>.json``)."""
    args = parse_args(argv)
    machine = H.begin(args.threads, args.seed)
    root = Path(tempfile.mkdtemp(prefix="efpn-bench-sgdm-"))
    try:
        (batch, *_), num_classes, _ = T.synthetic_batches(root / "data", args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    images, targets = batch
    device = torch.device("cpu")
    model = efpn.build_model(args.preset, num_classes=num_classes, image_size=args.imgsz).train()
    captured = capture_inputs(model, images, targets)
    if not captured:
        raise SystemExit(f"{args.preset} has no SGDM: nothing to split (try yolov8n_sgdm, yolov5n_sgdm, efpn_n)")
    cases: dict[str, Callable[[], None]] = {}
    labels = []
    for i, (m, x) in enumerate(captured):
        labels.append(label(i, m, x))
        cases.update({f"{labels[-1]} | {name}": fn for name, fn in sgdm_cases(m, x).items()})
    base = T.ours_trainer(args.base, num_classes, args, device)
    preset = T.ours_trainer(args.preset, num_classes, args, device)
    cases["step | base"] = lambda: base.step(batch)
    cases["step | preset"] = lambda: preset.step(batch)
    H.log(f"{len(captured)} SGDMs x {len(STAGES) + 2} cases + 2 training steps, {args.rounds} rounds")
    times = H.interleaved(cases, args.rounds, warmup=args.warmup, progress=H.log)
    payload: dict[str, Any] = {"benchmark": "sgdm_stages", "args": vars(args), "machine": machine,
                               "results": analyse(times, labels), "samples_ms": times}
    markdown = render(payload)
    H.write_results(args.out, payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    run()
