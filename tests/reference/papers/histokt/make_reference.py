"""Record what HistoKT's own code does, for tests/papers/test_histokt.py (contains no HistoKT code).

Usage: python make_reference.py /path/to/HistoKT-checkout out.json [commit]
It imports HistoKT's model loader (src/adas/loader.py) from the checkout, builds its fine-tuning
('freeze_encoder' True) and deep-tuning (False) models from a saved source checkpoint, and reads the
protocol constants (learning-rate grids, best rates) from its job-generating scripts with ``ast``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def literal_assignments(path: Path, name: str) -> list:
    """Every literal assigned to ``name`` anywhere in a Python file."""
    tree = ast.parse(path.read_text())
    return [ast.literal_eval(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)]


def main(repo: Path, out: Path, commit: str | None = None) -> None:
    sys.path.insert(0, str(repo / "src" / "adas"))
    import loader  # HistoKT's ModelLoader / get_model

    torch.manual_seed(0)
    source = loader.resnet18(num_classes=7)  # a 'source' model trained on a 7-class dataset
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "source.pth.tar"
        torch.save({"state_dict_network": source.state_dict()}, ckpt)
        modes = {}
        for freeze in (True, False):
            model = loader.get_model("ResNet18", str(ckpt), num_classes=4, freeze_encoder=freeze)
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            kept = [n for n, v in model.state_dict().items() if n in source.state_dict()
                    and v.shape == source.state_dict()[n].shape and torch.equal(v, source.state_dict()[n])]
            modes["fine_tuning" if freeze else "deep_tuning"] = {
                "trainable": trainable, "n_parameters": len(list(model.parameters())),
                "fc_shape": list(model.fc.weight.shape), "fc_from_source": "fc.weight" in kept,
                "encoder_from_source": all(n in kept for n in source.state_dict() if not n.startswith("fc.")),
            }
    scripts = repo / "slurm_scripts"
    grids = [g for f in ("create_scripts.py", "create_scripts_lambda.py") for g in literal_assignments(scripts / f, "learning_rates")]
    freeze = [g for g in literal_assignments(scripts / "create_scripts_lambda.py", "freeze_encoders")]
    ref = {
        "paper_repo": "mahdihosseini/HistoKT",
        "commit": commit or subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "modes": modes,
        "lr_grids": grids,
        "freeze_encoders": freeze,
        "best_lrs": {k: float(v) for k, v in literal_assignments(scripts / "create_scripts_lambda.py", "best_lrs")[0].items()},
    }
    out.write_text(json.dumps(ref, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
