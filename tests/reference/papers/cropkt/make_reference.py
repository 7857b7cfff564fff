"""Record CROPKT's outputs for tests/papers/test_cropkt.py (run by hand, outside the test suite).

    PYTHONPATH=src:<deps> python tests/reference/papers/cropkt/make_reference.py <CROPKT checkout> [out.npz]

<CROPKT checkout> is an extracted liupei101/CROPKT tree (never committed here); <deps> must give
transformers, einops and nystrom_attention, which CROPKT's modules import. This script holds no
CROPKT code: it builds OUR models, copies their weights into CROPKT's classes, runs both on the same
inputs and stores the inputs, our state_dicts and CROPKT's outputs. The learning-rate schedule and
the steps of an epoch come from CROPKT's own runner (BaseHandler.func_load_lrs, SAHandler._train_each_epoch)
driven over a stand-in data loader.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

from wsikt.mil import ABMIL
from wsikt.transfer.roupkt import ROUPKT

# small widths keep the file small; CROPKT's classes take them as arguments
IN_DIM, EMB, ATTN, N_BINS, N_EXPERTS, TOPK = 12, 16, 8, 5, 4, 2
BAG_SIZES = (7, 3, 11, 5, 9)
LR, EPOCHS, PER_STEP = 1e-4, 20, 16
SCHEDULE_N = (15, 16, 37, 100)  # training-set sizes whose steps and learning rates are recorded


def _load(root: Path, name: str, rel: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, root / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def abmil_mapping() -> dict[str, str]:
    """Our ABMIL state_dict names → CROPKT DeepMIL's."""
    return {"fc.0": "feat_proj.0", "attention.v.0": "attention_net.attention_a.0", "attention.u.0": "attention_net.attention_b.0",
            "attention.w": "attention_net.attention_c", "classifier": "pred_head"}


def roupkt_mapping(n_experts: int) -> dict[str, str]:
    """Our ROUPKT state_dict names → CROPKT DeepMIL_TFL_MoE's."""
    m = {f"router.abmil.{k}": v for k, v in abmil_mapping().items() if k != "classifier"}
    m.update({"router.gate": "router", "head": "pred_head"})
    m.update({f"adapters.{e}.0": f"experts.{e}.0" for e in range(n_experts)})
    return m


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module, mapping: dict[str, str]) -> None:
    sd, target = ours.state_dict(), {}
    for k, v in sd.items():
        prefix, leaf = k.rsplit(".", 1)
        if prefix in mapping:
            target[f"{mapping[prefix]}.{leaf}"] = v.clone()
    missing, unexpected = theirs.load_state_dict(target, strict=False)
    assert not unexpected and all(not k.endswith(("weight", "bias")) for k in missing), (missing, unexpected)


def module_types(seq: torch.nn.Module) -> list[str]:
    """Layer types of a projection, Dropout(p=0) and Identity left out (they compute nothing)."""
    return [type(m).__name__ for m in seq if not (isinstance(m, torch.nn.Identity) or (isinstance(m, torch.nn.Dropout) and m.p == 0))]


def schedule_from_runner(root: Path, n: int) -> tuple[list[int], list[float]]:
    """Patients per optimiser step and the lr of each step over EPOCHS epochs, from CROPKT's runner."""
    base = sys.modules["runner.base_handler"]
    sa = sys.modules["runner.sa_handler"]
    cfg = {"lrs": True, "lrs_name": "cosine", "lrs_warmup_steps": -1, "lrs_warmup_epochs": 1, "epochs": EPOCHS,
           "batch_size": 1, "bp_every_batch": PER_STEP}
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=LR)
    sched = base.BaseHandler.func_load_lrs(opt, cfg, n)
    sizes, lrs = [], []

    def update(xs, ys):  # stands in for the network update: records the step, then steps as CROPKT does
        sizes.append(len(xs))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        return 0.0, torch.zeros(len(xs), 1)

    handler = types.SimpleNamespace(net=torch.nn.Identity(), cfg=cfg, optimizer=opt, _update_network=update,
                                    output_converter=lambda x: x, _get_unique_id=lambda s, i: list(range(len(i))))
    loader = [(torch.tensor([[i]]), (torch.zeros(1, 1, 1), torch.zeros(1)), torch.zeros(1, 2)) for i in range(n)]
    for epoch in range(EPOCHS):
        if n >= PER_STEP:
            sa.SAHandler._train_each_epoch(handler, epoch + 1, loader, "train")
    return sizes, lrs


def main(root: Path, out: Path) -> None:
    sys.path.insert(0, str(root))
    sys.modules.setdefault("wandb", types.SimpleNamespace(log=lambda *a, **k: None, init=lambda *a, **k: None))
    torch.Tensor.cuda = lambda self, *a, **k: self  # CROPKT moves every tensor to CUDA; here all stays on the CPU
    for pkg in ("runner", "model"):
        sys.modules[pkg] = types.ModuleType(pkg)
        sys.modules[pkg].__path__ = [str(root / pkg)]
    deepmil = _load(root, "model.deepmil", "model/deepmil.py")
    tfl = _load(root, "model.deepmil_tfl", "model/deepmil_tfl.py")
    _load(root, "runner.utils", "runner/utils.py")
    _load(root, "runner.base_handler", "runner/base_handler.py")
    _load(root, "runner.sa_handler", "runner/sa_handler.py")
    commit = subprocess.run(["git", "-C", "/work/.mirror/liupei101+CROPKT/repo", "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"

    g = torch.Generator().manual_seed(20)
    bags = [torch.randn(n, IN_DIM, generator=g) for n in BAG_SIZES]
    tfl_emb = torch.relu(torch.randn(len(BAG_SIZES), N_EXPERTS, EMB, generator=g))
    rec: dict[str, np.ndarray] = {f"bag{i}": b.numpy() for i, b in enumerate(bags)}
    rec["tfl_emb"] = tfl_emb.numpy()

    # ABMIL (CROPKT's expert): our weights into DeepMIL(num_feat_proj_layers=0), eval mode
    torch.manual_seed(1)
    ours = ABMIL(IN_DIM, N_BINS, hidden=EMB, attn_hidden=ATTN).eval()
    theirs = deepmil.DeepMIL(dim_in=IN_DIM, dim_emb=EMB, num_cls=N_BINS, dim_attn=ATTN, num_feat_proj_layers=0,
                             drop_rate=0.25, pooling="gated_attention").eval()
    copy_weights(ours, theirs, abmil_mapping())
    with torch.no_grad():
        for i, b in enumerate(bags):
            logit, emb = theirs(b[None], ret_bag_feat=True)
            _, attn = theirs(b[None], ret_with_attn=True)
            rec[f"abmil_logits{i}"], rec[f"abmil_emb{i}"], rec[f"abmil_attn{i}"] = logit.numpy(), emb.numpy(), attn.numpy()
    rec.update({f"abmil_w/{k}": v.numpy() for k, v in ours.state_dict().items()})

    # ROUPKT (CROPKT's DeepMIL_TFL_MoE with MLP experts): eval outputs, and train-mode aux losses (dropout 0)
    torch.manual_seed(2)
    ours_r = ROUPKT(IN_DIM, N_EXPERTS, N_BINS, TOPK, EMB, dropout=0.0, attn_hidden=ATTN)
    moe = tfl.DeepMIL_TFL_MoE(dim_in=IN_DIM, dim_emb=EMB, num_cls=N_BINS, dim_attn=ATTN, num_feat_proj_layers=0,
                              drop_rate=0.0, pooling="gated_attention", expert_size=N_EXPERTS, expert_network="MLP",
                              expert_topk=TOPK, noise_gates=False)
    copy_weights(ours_r, moe, roupkt_mapping(N_EXPERTS))
    moe.eval()
    with torch.no_grad():
        for i, b in enumerate(bags):
            logit, mixed = moe(tfl_emb[i:i + 1], b[None], ret_bag_feat=True)
            _, probs = moe(tfl_emb[i:i + 1], b[None], ret_with_attn=True)
            rec[f"moe_logits{i}"], rec[f"moe_mixed{i}"], rec[f"moe_probs{i}"] = logit.numpy(), mixed.numpy(), probs.numpy()
    moe.train()
    balance, zloss = [], []
    with torch.no_grad():
        for i, b in enumerate(bags):  # one patient per forward; the handler averages over the step
            _, _, bal, z = moe(tfl_emb[i:i + 1], b[None])
            balance.append(float(bal)), zloss.append(float(z))
    rec["moe_balance_step"] = np.array(sum(balance) / len(balance))
    rec["moe_z_step"] = np.array(sum(zloss) / len(zloss))
    rec.update({f"roupkt_w/{k}": v.numpy() for k, v in ours_r.state_dict().items()})

    meta = {"commit": commit, "abmil_feat_proj_types": module_types(theirs.feat_proj),
            "moe_feat_proj_types": module_types(moe.feat_proj), "moe_expert_types": module_types(moe.experts[0]),
            "lr": LR, "epochs": EPOCHS, "patients_per_step": PER_STEP, "schedule": {}}
    for n in SCHEDULE_N:
        sizes, lrs = schedule_from_runner(root, n)
        meta["schedule"][str(n)] = {"steps_per_epoch": len(sizes) // EPOCHS, "patients_per_step": sizes[:max(1, len(sizes) // EPOCHS)],
                                    "lr_per_step": lrs}
    rec["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(out, **rec)
    print(f"wrote {out} ({out.stat().st_size} bytes), CROPKT {commit}; steps per epoch",
          {n: meta["schedule"][str(n)]["steps_per_epoch"] for n in SCHEDULE_N}, "; first lrs", meta["schedule"]["37"]["lr_per_step"][:3],
          "; math check", math.isclose(meta["schedule"]["100"]["lr_per_step"][6], LR))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("reference.npz"))
