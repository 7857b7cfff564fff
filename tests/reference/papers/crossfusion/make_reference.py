"""Record RustinS/CrossFusion's outputs for tests/papers/test_crossfusion.py (reference.npz beside this file).

Usage (from the worktree, with the paper's repo extracted outside it and einops importable):
    PYTHONPATH=src:/tmp/papers/deps-crossfusion python tests/reference/papers/crossfusion/make_reference.py /tmp/papers/crossfusion/code

The paper's code is imported from the path given, never copied here. For each case, our model is
built with a fixed seed, its weights are copied into the paper's ``models.CrossFusion.CrossFusion``
(a one-to-one name map, all keys required), and both see the same patients; the file keeps our
weights, the inputs and the paper's logits and embeddings (its final LayerNorm's class token).
It also records the paper's NLL survival loss (value and gradient) and its 4 quantile bins
(``datasets.dataset_survival``) on synthetic times.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from wsikt.mil import build_model

OUT = Path(__file__).with_name("reference.npz")
SCALES = ("20x", "10x", "5x")
CASES = {  # small dims: the paper's class takes them as arguments
    "a": dict(in_dim=8, hidden=16, heads=4, layers=1, n_bins=4, sizes=[(9, 5, 3), (27, 7, 2), (4, 1, 1)]),
    "b": dict(in_dim=16, hidden=16, heads=2, layers=2, n_bins=4, sizes=[(40, 10, 3), (12, 3, 2)]),  # Identity input layers
}

# our parameter name → the paper's (first match wins; \1, \2 keep layer indices)
NAME_MAP = [
    (r"inputs\.0\.(.*)", r"f_lin_proj.\1"),
    (r"inputs\.1\.(.*)", r"s_lin_proj.\1"),
    (r"inputs\.2\.(.*)", r"c_lin_proj.\1"),
    (r"to_(coarse|fine)\.scale_embedding", r"{x}_cross_attn.scale_embeddings"),
    (r"to_(coarse|fine)\.attn\.(q|k|v|out)\.(.*)", r"{x}_cross_attn.\2_proj.\3"),
    (r"to_(coarse|fine)\.norm\.(.*)", r"{x}_cross_attn_ln.\2"),
    (r"to_(coarse|fine)\.ffn\.(.*)", r"{x}_cross_attn_ffn.net.\2"),
    (r"(middle|fine|coarse)_stream\.norm\.(.*)", r"{s}_transformer_ln.\2"),
    (r"readout\.norm\.(.*)", r"final_ln.\1"),
    (r"(middle|fine|coarse)_stream\.(.*)", r"{s}_transformer.\2"),
    (r"readout\.(.*)", r"final_transformer.\1"),
    (r"fusion\.mix\.(.*)", r"conv_processor.conv3d.\1"),
    (r"fusion\.convs\.0\.(.*)", r"conv_processor.conv_block.0.proj.\1"),
    (r"fusion\.convs\.1\.(.*)", r"conv_processor.conv_block.0.proj1.\1"),
    (r"fusion\.convs\.2\.(.*)", r"conv_processor.conv_block.0.proj2.\1"),
    (r"fusion\.skip\.(.*)", r"conv_processor.conv_block.0.x_proj.\1"),
    (r"fusion\.out\.(.*)", r"conv_processor.linear.\1"),
    (r"cls_token", r"cls_token"),
    (r"classifier\.(.*)", r"mlp_head.0.\1"),
]
INNER_MAP = [  # inside a stream
    (r"(pre|post)\.(\d+)\.norm1\.(.*)", r"\1_layers.layers.\2.0.\3"),
    (r"(pre|post)\.(\d+)\.attn\.(q|k|v|out)\.(.*)", r"\1_layers.layers.\2.1.\3_proj.\4"),
    (r"(pre|post)\.(\d+)\.norm2\.(.*)", r"\1_layers.layers.\2.2.\3"),
    (r"(pre|post)\.(\d+)\.ffn\.(.*)", r"\1_layers.layers.\2.3.net.\3"),
    (r"ppeg\.convs\.0\.(.*)", r"ppeg.proj.\1"),
    (r"ppeg\.convs\.1\.(.*)", r"ppeg.proj1.\1"),
    (r"ppeg\.convs\.2\.(.*)", r"ppeg.proj2.\1"),
]
STREAM = {"middle": "s", "fine": "f", "coarse": "c"}


def paper_name(ours: str) -> str:
    for pattern, repl in NAME_MAP:
        m = re.fullmatch(pattern, ours)
        if m:
            name = m.expand(repl)
            if "{x}" in name:
                name = name.replace("{x}", m.group(1)[0])
            if "{s}" in name:
                name = name.replace("{s}", STREAM[m.group(1)])
            head, _, rest = name.partition("_transformer.")
            if rest:
                for ip, irepl in INNER_MAP:
                    im = re.fullmatch(ip, rest)
                    if im:
                        return f"{head}_transformer.{im.expand(irepl)}"
                raise KeyError(f"no paper name for stream parameter {ours}")
            return name
    raise KeyError(f"no paper name for {ours}")


def run_case(module, key: str, spec: dict, store: dict) -> None:
    torch.manual_seed(1000 + ord(key))
    ours = build_model("crossfusion", spec["in_dim"], spec["n_bins"], dropout=0.3, hidden=spec["hidden"],
                       heads=spec["heads"], layers=spec["layers"]).aggregator.eval()
    theirs = module.CrossFusion(embed_dim=spec["hidden"], num_heads=spec["heads"], num_layers=spec["layers"],
                                backbone_dim=spec["in_dim"], n_classes=spec["n_bins"]).eval()
    for m in theirs.modules():  # their attention dropout acts at evaluation too (dropout_p); compare without it
        if type(m).__name__ == "MultiHeadAttention":
            m.attn_dropout.p = 0.0
    target = theirs.state_dict()
    mapped = {}
    for name, value in ours.state_dict().items():
        pname = paper_name(name)
        mapped[pname] = value.reshape(target[pname].shape).clone()
        store[f"{key}/w/{name}"] = value.numpy()
    theirs.load_state_dict(mapped, strict=True)  # every paper key filled
    captured = {}
    theirs.final_ln.register_forward_hook(lambda mod, inp, out: captured.__setitem__("emb", out[:, 0].detach()))
    g = np.random.default_rng(ord(key))
    logits, embs = [], []
    for p, (n20, n10, n5) in enumerate(spec["sizes"]):
        xs = {s: g.normal(size=(n, spec["in_dim"])).astype(np.float32) for s, n in zip(SCALES, (n20, n10, n5))}
        for s, x in xs.items():
            store[f"{key}/x/{p}/{s}"] = x
        with torch.no_grad():
            _, _, _, lg, _ = theirs(torch.from_numpy(xs["5x"])[None], torch.from_numpy(xs["10x"])[None], torch.from_numpy(xs["20x"])[None])
        logits.append(lg[0].numpy())
        embs.append(captured["emb"][0].numpy())
    store[f"{key}/logits"], store[f"{key}/embedding"] = np.stack(logits), np.stack(embs)
    store[f"{key}/spec"] = np.array([spec["in_dim"], spec["hidden"], spec["heads"], spec["layers"], spec["n_bins"], len(spec["sizes"])])


def run_loss(train_utils, store: dict) -> None:
    g = np.random.default_rng(5)
    hazards = torch.from_numpy(g.uniform(0.02, 0.98, size=(12, 4))).requires_grad_(True)
    bins = torch.from_numpy(g.integers(0, 4, size=12))
    censorship = torch.from_numpy((g.uniform(size=12) < 0.5).astype(np.float64))
    s = torch.cumprod(1 - hazards, dim=1)
    loss = train_utils.NLLSurvLoss(alpha=0.2)(hazards=hazards, S=s, Y=bins, c=censorship)
    loss.backward()
    store.update({"loss/hazards": hazards.detach().numpy(), "loss/bins": bins.numpy(), "loss/censorship": censorship.numpy(),
                  "loss/value": loss.detach().numpy(), "loss/grad": hazards.grad.numpy(), "loss/alpha": np.array(0.2)})


def run_bins(dataset_module, store: dict) -> None:
    g = np.random.default_rng(9)
    n = 60
    months = np.round(g.exponential(30.0, size=n), 1)  # rounding makes ties, some on the edges
    censorship = (g.uniform(size=n) < 0.4).astype(int)
    df = pd.DataFrame({"case_id": [f"P{i}" for i in range(n)], "slide_id": [f"S{i}" for i in range(n)],
                       "survival_months": months, "censorship": censorship})
    cls = dataset_module.GenericWSISurvivalDataset
    cls.prep_slide_data = lambda self, clinical_path, args: df.copy()  # the clinical table, without files on disk
    args = SimpleNamespace(pt_dir="/nonexistent", magnifications=["5", "10", "20"], backbone="x")
    ds = cls(args=args, print_info=False, n_bins=4)
    store.update({"bins/months": months, "bins/censorship": censorship, "bins/edges": np.asarray(ds.bins, float),
                  "bins/labels": ds.slide_data["disc_label"].to_numpy().astype(int)})


def main(paper_dir: str) -> None:
    sys.path.insert(0, paper_dir)
    from models import CrossFusion as module  # the paper's code, from paper_dir

    init = module.CrossAttention.__init__
    init.__defaults__ = tuple("cpu" if d == "cuda" else d for d in init.__defaults__)  # their default device is cuda
    mha = module.MultiHeadAttention.__init__
    mha.__defaults__ = tuple("cpu" if d == "cuda" else d for d in mha.__defaults__)
    from datasets import dataset_survival
    from utils import train_utils

    store: dict[str, np.ndarray] = {}
    for key, spec in CASES.items():
        run_case(module, key, spec, store)
    run_loss(train_utils, store)
    run_bins(dataset_survival, store)
    np.savez_compressed(OUT, **store)
    commit = subprocess.run(["git", "-C", "/work/.mirror/RustinS+CrossFusion/repo", "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); paper commit {commit or 'unknown'}; torch {torch.__version__}")


if __name__ == "__main__":
    main(sys.argv[1])
