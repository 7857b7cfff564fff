"""Record DSCA's own outputs for tests/papers/test_dsca.py (run by hand; never at test time).

Usage: PYTHONPATH=src:<deps> python tests/reference/papers/dsca/make_reference.py <DSCA checkout> [out.npz]

<DSCA checkout>: liupei101/DSCA extracted outside this repository (commit in README.md here);
<deps>: a directory holding ``nystrom-attention`` and ``einops`` (DSCA's model_utils imports them).
Builds wsikt's DSCA with small dims and random weights, copies the weights into DSCA's
``WSIHierNet`` (config_hier.yaml's settings), feeds both the same two-slide patient, and stores
the inputs, our state_dict and DSCA's outputs: hazards, the pooled representation, the loss
(SurvMLE, α = 0.1) and the child offsets of DSCA's big-to-small patching.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from wsikt.mil.dsca import DSCA

D, H, T = 16, 32, 4
FINE_PX = 256  # level-0 footprint of a 20x patch; a 5x patch is 4 × 4 of them
SEED = 20


def paper_modules(root: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType, types.ModuleType]:
    """DSCA's HierNet, utils, loss and big-to-small patching modules (model/__init__ would import its trainer)."""
    sys.path.insert(0, str(root))
    pkg = types.ModuleType("model")
    pkg.__path__ = [str(root / "model")]
    sys.modules["model"] = pkg
    sys.path.insert(0, str(root / "tools"))
    import big_to_small_patching  # noqa: E402
    import loss  # noqa: E402
    import utils  # noqa: E402
    from model import HierNet  # noqa: E402
    return HierNet, utils, loss, big_to_small_patching


def patient(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Two slides (6 and 4 coarse patches on a sparse grid), all 16 children per coarse patch, rows shuffled."""
    coarse_xy, slide = [], []
    for s, n in enumerate((6, 4)):
        cells = rng.choice(49, size=n, replace=False)
        coarse_xy.append(np.stack([cells % 7 * 3, cells // 7 * 2], 1) * 4 * FINE_PX)  # gaps between cells
        slide.append(np.full(n, s))
    coarse_xy, slide = np.concatenate(coarse_xy).astype(np.int64), np.concatenate(slide)
    nc = len(coarse_xy)
    parents = np.repeat(np.arange(nc), 16)
    slots = np.tile(np.arange(16), nc)
    fine_xy = coarse_xy[parents] + np.stack([slots % 4, slots // 4], 1) * FINE_PX
    order = rng.permutation(len(parents))  # our bag's fine rows in any order: links say where they go
    return dict(
        fine=rng.normal(size=(16 * nc, D)).astype(np.float32)[order], coarse=rng.normal(size=(nc, D)).astype(np.float32),
        parents=parents[order], slots=slots[order], fine_xy=fine_xy[order], coarse_xy=coarse_xy, slide=slide,
    )


def to_paper(ours: DSCA, theirs: torch.nn.Module) -> None:
    """Copy wsikt's DSCA weights into DSCA's WSIHierNet (post join, fusion by sum, GAPool)."""
    s = ours.state_dict()
    emb = "patchx20_embedding_layer."
    m = {
        emb + "conv.weight": s["fine_conv.weight"], emb + "conv.bias": s["fine_conv.bias"],
        emb + "norm.weight": s["fine_norm.weight"], emb + "norm.bias": s["fine_norm.bias"],
        emb + "conv_patch_x5.conv.weight": s["guide.weight"].unsqueeze(-1), emb + "conv_patch_x5.conv.bias": s["guide.bias"],
        "patchx5_embedding_layer.conv.weight": s["coarse_conv.weight"], "patchx5_embedding_layer.conv.bias": s["coarse_conv.bias"],
        "patchx5_embedding_layer.norm.weight": s["coarse_norm.weight"], "patchx5_embedding_layer.norm.bias": s["coarse_norm.bias"],
        "pool.fc1.0.weight": s["attention.v.0.weight"], "pool.fc1.0.bias": s["attention.v.0.bias"],
        "pool.score.0.weight": s["attention.u.0.weight"], "pool.score.0.bias": s["attention.u.0.bias"],
        "pool.fc2.weight": s["attention.w.weight"], "pool.fc2.bias": s["attention.w.bias"],
        "out_layer.0.weight": s["classifier.weight"][:, :H], "out_layer.0.bias": s["classifier.bias"],
    }
    for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
        m[emb + "cross_att_pool." + k] = s["square_pool." + k]
    for k, v in s.items():
        if k.startswith("fine_encoder."):
            m["patch_encoder_layer_parallel." + k[len("fine_encoder."):]] = v  # the 20x stream's encoder
        elif k.startswith("coarse_encoder."):
            m["patch_encoder_layer." + k[len("coarse_encoder."):]] = v
    missing, unexpected = theirs.load_state_dict(m, strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys, (missing, unexpected)


def main(root: Path, out: Path) -> None:
    hiernet, utils, loss, b2s = paper_modules(root)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    ours = DSCA(D, T, hidden=H).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    x20 = SimpleNamespace(backbone="capool", in_dim=D, out_dim=H, scale=4, dropout=0.6, dw_conv=False, ksize=3)
    x5 = SimpleNamespace(backbone="conv1d", in_dim=D, out_dim=H, scale=1, dropout=0.6, dw_conv=False, ksize=5)
    tra = SimpleNamespace(backbone="Transformer", ksize=3, dw_conv=False, d_model=H, d_out=H, nhead=8, dropout=0.6,
                          num_layers=1, epsilon=0.8)
    theirs = hiernet.WSIHierNet([D, H, H, T], x20, x5, tra, dropout=0.6, pool="gap", join="post", fusion="fusion").eval()
    to_paper(ours, theirs)

    p = patient(rng)
    # DSCA's inputs: 5x rows in CLAM's grid order (slide, then x, then y; our bag's rows are in any
    # order), 20x rows grouped 16 per 5x patch in that order (cell order j·4 + i), discretised 5x coords
    clam = np.lexsort((p["coarse_xy"][:, 1], p["coarse_xy"][:, 0], p["slide"]))
    place = np.empty_like(clam)
    place[clam] = np.arange(len(clam))
    by_cell = np.lexsort((p["slots"], place[p["parents"]]))
    fx20 = torch.from_numpy(p["fine"][by_cell]).unsqueeze(0)
    fx5 = torch.from_numpy(p["coarse"][clam]).unsqueeze(0)
    per_slide = [torch.from_numpy(p["coarse_xy"][clam][p["slide"][clam] == s]) for s in (0, 1)]
    cx5 = torch.cat(utils.rearrange_coord(per_slide, discretization=True)).to(torch.int32).unsqueeze(0)
    rep = {}
    theirs.out_layer.register_forward_hook(lambda mod, inp, out: rep.update(rep=inp[0].detach()))  # returns None: output kept
    with torch.no_grad():
        hazards = theirs(fx20, fx5, cx5)

    # SurvMLE (config_hier.yaml: alpha 0.1) on a batch of hazards, with events and censoring
    h = torch.rand(8, T) * 0.9 + 0.05
    bins = torch.tensor([0, 1, 2, 3, 3, 1, 0, 2])
    censored = torch.tensor([0, 1, 0, 1, 0, 0, 1, 1]).float()
    loss_value = loss.SurvMLE(alpha=0.1)(torch.stack([bins.float(), censored], 1), h)

    with torch.no_grad():
        ours_out = ours(ours.collate([_bag(p)], torch.device("cpu")))
    err = (torch.sigmoid(ours_out["logits"]) - hazards).abs().max().item()
    print(f"max |hazards ours − DSCA| = {err:.2e}")

    arrays = {f"state/{k}": v.numpy() for k, v in ours.state_dict().items()}
    arrays.update({f"input/{k}": v for k, v in p.items()})
    arrays.update({
        "paper/hazards": hazards.numpy(), "paper/rep": rep["rep"].numpy(),
        "paper/positions": cx5[0].numpy()[place],  # back in our bag's row order
        "loss/hazards": h.numpy(), "loss/bins": bins.numpy(), "loss/events": (1 - censored).numpy(),
        "loss/alpha": np.float32(0.1), "loss/value": np.float32(loss_value.item()),
        "patching/offsets_as_written": b2s.get_scaled_matrix(256, 256, 4),  # DSCA's children of a 256-px level-2 patch
    })
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def _bag(p: dict[str, np.ndarray]):
    from wsikt.cohort.bags import PatientBag

    pair = ("20x", "5x")
    return PatientBag(
        features={"20x": p["fine"], "5x": p["coarse"]}, primary="20x", parents={pair: p["parents"]}, slots={pair: p["slots"]},
        ratios={pair: 4}, coords={"20x": p["fine_xy"], "5x": p["coarse_xy"]},
        slide_index={"20x": p["slide"][p["parents"]], "5x": p["slide"]},
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("reference.npz"))
