"""CEM: identity at alpha = 0, gradient reaches the sources once alpha != 0, switches, internals, errors."""

from __future__ import annotations

import pytest
import torch

from efpn.layers.cem import CEM
from efpn.layers.sgdm import num_params

C, MID = 8, 4


def _pyramid(n: int = 2, base: int = 16, levels: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")) -> dict:
    """Levels at strides relative to p3 = ``base`` cells (p2 twice as fine), odd-size friendly."""
    out = {}
    for lv in levels:
        size = max(1, round(base * 2 ** (3 - int(lv[1:]))))
        out[lv] = torch.randn(n, C, size, size + 1, requires_grad=True)
    return out


def _set_alpha(m: CEM, value: float) -> None:
    assert m.alpha is not None
    with torch.no_grad():
        for a in m.alpha.values():
            a.fill_(value)


def test_alpha_zero_is_identity_and_others_untouched() -> None:
    m = CEM(C, MID, ("p5", "p6"), ("p2", "p3"))
    feats = _pyramid()
    out = m(feats)
    assert set(out) == set(feats)
    for lv in ("p2", "p3"):
        torch.testing.assert_close(out[lv], feats[lv], rtol=0, atol=0)
    for lv in ("p4", "p5", "p6"):
        assert out[lv] is feats[lv]


def test_alpha_gets_gradient_at_init_and_sources_once_nonzero() -> None:
    m = CEM(C, MID, ("p5", "p6"), ("p3",))
    feats = _pyramid()
    m(feats)["p3"].square().sum().backward()
    assert m.alpha is not None and m.alpha["p3"].grad is not None and m.alpha["p3"].grad.abs() > 0
    # with alpha = 0 only p3's own path carries gradient
    assert feats["p5"].grad is None or feats["p5"].grad.abs().sum() == 0
    _set_alpha(m, 0.5)
    feats = _pyramid()
    out = m(feats)
    assert not torch.allclose(out["p3"], feats["p3"])
    out["p3"].square().sum().backward()
    for lv in ("p5", "p6"):
        assert feats[lv].grad is not None and feats[lv].grad.abs().sum() > 0, lv
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("upsample", ["bilinear", "pixelshuffle"])
def test_learned_gate_and_upsampling_options(upsample: str) -> None:
    m = CEM(C, MID, ("p5", "p6"), ("p2", "p3"), upsample=upsample, gate="learned")  # type: ignore[arg-type]
    feats = _pyramid(base=15)  # p3 15x16, p5 4x5: pixel shuffle x4 gives 16x20, resized to the target
    out, inner = m(feats, return_internals=True)
    for t in ("p2", "p3"):
        assert out[t].shape == feats[t].shape
        gate = inner[t].gate
        assert gate.shape == (2, 1, *feats[t].shape[-2:]) and 0 < gate.min() and gate.max() < 0.05
        torch.testing.assert_close(inner[t].alpha, gate.mean())
        torch.testing.assert_close(out[t], feats[t] + gate * inner[t].fused)
    out["p3"].square().sum().backward()
    assert feats["p5"].grad is not None and feats["p5"].grad.abs().sum() > 0


def test_internals_agree_with_plain_forward() -> None:
    m = CEM(C, MID, ("p5",), ("p3",)).eval()
    _set_alpha(m, 0.3)
    feats = _pyramid(n=1, levels=("p3", "p4", "p5"))
    out, inner = m(feats, return_internals=True)
    assert set(inner) == {"p3"} and inner["p3"].gate is None
    torch.testing.assert_close(m(feats)["p3"], out["p3"])
    torch.testing.assert_close(inner["p3"].after, out["p3"])
    torch.testing.assert_close(inner["p3"].before, feats["p3"])
    torch.testing.assert_close(out["p3"], feats["p3"] + 0.3 * inner["p3"].fused)
    assert inner["p3"].fused.shape == feats["p3"].shape


def test_ablation_switches_change_parameters_and_outputs() -> None:
    def build(**kw: object) -> CEM:
        torch.manual_seed(0)
        m = CEM(C, MID, **kw)  # type: ignore[arg-type]
        _set_alpha(m, 1.0)
        return m

    both = build(source_levels=("p5", "p6"))
    local = build(source_levels=("p5", "p6"), use_global=False)
    glob = build(source_levels=("p5", "p6"), use_local=False)
    p5_only = build(source_levels=("p5",))
    # fusion input: 3*MID (both), 2*MID (local), MID (global); global Linear in = S*C
    assert num_params(both) - num_params(local) == 2 * C * MID + MID + MID * C
    assert num_params(glob) < num_params(local) < num_params(both)
    assert num_params(p5_only) < num_params(both)
    feats = _pyramid()
    outs = [m(feats)["p3"] for m in (both, local, glob, p5_only)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j]), (i, j)


def test_bad_input_names_the_problem() -> None:
    m = CEM(C, MID, ("p5", "p6"), ("p3",))
    feats = _pyramid(levels=("p3", "p4", "p5"))
    with pytest.raises(ValueError, match="p6"):
        m(feats)
    feats = _pyramid(levels=("p3", "p5", "p6"))
    feats["p5"] = torch.randn(2, C + 1, 2, 3)
    with pytest.raises(ValueError, match="'p5' has 9 channels"):
        m(feats)
    feats["p5"] = torch.randn(C, 2, 3)
    with pytest.raises(ValueError, match="4-D"):
        m(feats)
    with pytest.raises(ValueError, match="branch"):
        CEM(C, MID, use_local=False, use_global=False)
    with pytest.raises(ValueError, match="coarser"):
        CEM(C, MID, ("p3",), ("p3",), upsample="pixelshuffle")
