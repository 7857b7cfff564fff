"""Record HistoSSLscaling's Chowder, DSMIL, ABMIL and Cox loss outputs on wsikt's weights and inputs (reference.npz).

Run outside the test suite, with HistoSSLscaling's checkout (owkin/HistoSSLscaling) importable:

    PYTHONPATH=src:<dir with loguru, einops, omegaconf> python make_reference.py <HistoSSLscaling checkout> <out.npz>

Our models are built with their defaults (which are meant to be HistoSSLscaling's yaml settings);
their weights are copied into HistoSSLscaling's classes, built from its conf/slide_level_task/
cross_validation/model/{chowder,dsmil,abmil}.yaml values; both run on the same padded bags. HistoSSLscaling
reads 3 metadata columns before the features and a (B, N, 1) mask that is True on padding: we
prepend zeros and invert our validity mask. No HistoSSLscaling code is copied here.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from wsikt.mil.abmil_hssl import ABMILHSSL
from wsikt.mil.chowder import Chowder
from wsikt.mil.dsmil import DSMIL

D, LENGTHS, SEED = 12, (25, 8, 14), 0  # the 8-tile bag has fewer tiles than Chowder's 10 extremes


def padded_inputs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = max(LENGTHS)
    x = np.zeros((len(LENGTHS), n, D), np.float32)
    valid = np.zeros((len(LENGTHS), n), bool)
    for i, k in enumerate(LENGTHS):
        x[i, :k] = rng.normal(size=(k, D))
        valid[i, :k] = True
    return x, valid


def their_inputs(x: np.ndarray, valid: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    meta = np.zeros((*x.shape[:2], 3), np.float32)
    return torch.from_numpy(np.concatenate([meta, x], -1)), torch.from_numpy(~valid).unsqueeze(-1)


def mlp_map(ours: str, theirs: str, n_hidden: int, tiles: bool) -> dict[str, str]:
    """Our mlp() names → theirs: TilesMLP (hidden_layers.{2i}, last 2n) or MLP ({i}.0, last n)."""
    out = {}
    for i in range(n_hidden + 1):
        src = f"{ours}.{i}.0" if i < n_hidden else f"{ours}.{n_hidden}"
        dst = f"{theirs}.hidden_layers.{2 * i}" if tiles else (f"{theirs}.{i}.0" if i < n_hidden else f"{theirs}.{n_hidden}")
        out.update({f"{src}.weight": f"{dst}.weight", f"{src}.bias": f"{dst}.bias"})
    return out


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the fixed 512-d embedding projection (rebuilt identically, unused by the logits)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("to_embedding.")}


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module, names: dict[str, str]) -> None:
    state = theirs.state_dict()
    for src, dst in names.items():
        assert state[dst].shape == ours.state_dict()[src].shape, (src, dst)
        state[dst] = ours.state_dict()[src].clone()
    theirs.load_state_dict(state)


def main(repo: str, out: str) -> None:
    sys.path.insert(0, repo)
    from rl_benchmarks.losses.cox_loss import CoxLoss
    from rl_benchmarks.metrics.survival_metrics import compute_cindex
    from rl_benchmarks.models.slide_models.abmil import ABMIL as TheirABMIL
    from rl_benchmarks.models.slide_models.chowder import Chowder as TheirChowder
    from rl_benchmarks.models.slide_models.dsmil import DSMIL as TheirDSMIL

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    x, valid = padded_inputs(rng)
    tx, tmask = their_inputs(x, valid)
    rec: dict[str, np.ndarray] = {"x": x, "valid": valid}
    for t in (1, 3):
        ours = Chowder(D, t).eval()
        theirs = TheirChowder(in_features=D, out_features=t, n_top=10, n_bottom=10, tiles_mlp_hidden=[128],
                              mlp_hidden=[128, 64], mlp_activation=torch.nn.Sigmoid(), bias=True).eval()
        copy_weights(ours, theirs, {**mlp_map("score", "score_model", 1, True), **mlp_map("mlp", "mlp", 2, False)})
        with torch.no_grad():
            rec[f"chowder{t}__logits"] = theirs(tx, tmask).numpy().reshape(len(LENGTHS), t)
        rec.update({f"chowder{t}__state__{k}": v.numpy() for k, v in weights(ours).items()})

        ours = DSMIL(D, t).eval()
        theirs = TheirDSMIL(in_features=D, out_features=t, d_tiles_values=32, d_tiles_queries=32, passing_values=False,
                            tiles_scores_mlp_hidden=[200, 100], tiles_queries_mlp_hidden=[200, 100], mlp_hidden=[200, 100]).eval()
        copy_weights(ours, theirs, {**mlp_map("scores", "tiles_scores", 2, True), **mlp_map("queries", "tiles_queries", 2, True),
                                    **mlp_map("bag", "mlp", 2, False)})
        with torch.no_grad():
            rec[f"dsmil{t}__logits"] = theirs(tx, tmask).numpy().reshape(len(LENGTHS), t)  # theirs is (B, 1, T) when T > 1
        rec.update({f"dsmil{t}__state__{k}": v.numpy() for k, v in weights(ours).items()})

        if t != 1:  # ABMIL's channels differ only in its last layer: one output keeps the file under 1 MB
            continue
        ours = ABMILHSSL(D, t).eval()
        theirs = TheirABMIL(in_features=D, out_features=t, d_model_attention=128, temperature=1.0, mlp_hidden=[128, 64],
                            mlp_activation=torch.nn.ReLU(), bias=True).eval()
        names = {f"{a}.{p}": f"attention_layer.{a}.{p}" for a in ("att", "gate", "w") for p in ("weight", "bias")}
        names.update({"embed.weight": "tiles_emb.hidden_layers.0.weight", "embed.bias": "tiles_emb.hidden_layers.0.bias"})
        copy_weights(ours, theirs, {**names, **mlp_map("mlp", "mlp", 2, False)})
        with torch.no_grad():
            rec[f"abmil_hssl{t}__logits"] = theirs(tx, tmask).numpy().reshape(len(LENGTHS), t)
        rec.update({f"abmil_hssl{t}__state__{k}": v.numpy() for k, v in weights(ours).items()})

    # Cox loss and C-index: 16 patients (one step), distinct times, labels = time if event else −time.
    times = rng.permutation(np.arange(30, 3000, 7))[:16].astype(np.float64)
    events = (rng.random(16) < 0.5).astype(np.int64)
    eta = torch.tensor(rng.normal(size=16), dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(np.where(events == 1, times, -times), dtype=torch.float32).unsqueeze(-1)
    loss = CoxLoss()(eta.unsqueeze(-1), labels)
    loss.backward()
    rec.update(cox_times=times, cox_events=events, cox_eta=eta.detach().numpy(), cox_loss=np.array(loss.item()),
               cox_grad=eta.grad.numpy(), cindex=np.array(compute_cindex(labels.numpy()[:, 0], eta.detach().numpy())))
    np.savez_compressed(out, **rec)
    print(f"wrote {out}: " + ", ".join(f"{k} {np.round(v.ravel()[:3], 4)}" for k, v in rec.items() if "logits" in k or k.startswith("cox_loss")))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
