"""Leaderboard on the bundled UVP6 vignettes: SSL backbone vs random init vs the RF baseline.

1. ingests ``aqqua_geo/data/uvp6_vignettes`` with the folder ingestor (the vignettes have no
   published sampling metadata: position/date/depth are ``--set`` constants; pixel size 73 µm
   comes from the bundled metadata table); the store drops the 60 ``darksphere`` pixel copies
   of ``Copepoda`` vignettes, leaving 630 objects in 8 classes;
2. pretrains the tiny config (``foundation/configs/tiny.yaml``) for ``--steps`` steps, unless
   ``--model`` gives a backbone;
3. runs :func:`aqqua_geo.downstream.benchmark.run_benchmark` on the SSL backbone and on a
   randomly initialised backbone of the same architecture (control), with the
   ``MorphometricRandomForest`` baseline in the same run and split, and prints the rows.

    python benchmarks/leaderboard_uvp6.py --workdir /tmp/lb --steps 200     # ~20 min on 2 busy cores
    python benchmarks/leaderboard_uvp6.py --workdir /tmp/lb --model RUN/backbone.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd


def uvp6_store(workdir: Path) -> Path:
    """The bundled UVP6 vignettes ingested into ``workdir/uvp6_store`` (idempotent)."""
    from aqqua_geo.data import write_uvp6_store

    return write_uvp6_store(workdir / "uvp6_store")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--model", type=Path, help="pretrained backbone.pt (skips pretraining)")
    ap.add_argument("--steps", type=int, default=200, help="tiny-config pretraining steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from aqqua_geo.downstream.benchmark import run_benchmark
    from aqqua_geo.foundation import load_config, pretrain
    from aqqua_geo.foundation.backbone_io import load_backbone, save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    args.workdir.mkdir(parents=True, exist_ok=True)
    store = uvp6_store(args.workdir)
    model = args.model
    if model is None:
        run = args.workdir / f"ssl_tiny_{args.steps}"
        model = run / "backbone.pt"
        if not model.is_file():
            cfg = load_config("tiny", overrides=[f"train.max_steps={args.steps}", f"train.seed={args.seed}",
                                                 f"train.checkpoint_every={max(10, args.steps // 4)}"])
            t0 = time.perf_counter()
            pretrain(cfg, store, run, resume=(run / "checkpoints" / "last.pt").is_file())
            print(f"pretraining: {args.steps} steps in {time.perf_counter() - t0:.0f} s")
    torch.manual_seed(args.seed)
    control = save_backbone(build_backbone(load_backbone(model).cfg), args.workdir / "random_init.pt")
    rows = run_benchmark([model, control], store, args.workdir / "benchmark",
                         names=[f"ssl_{Path(model).parent.name}", "random_init"], seed=args.seed)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(rows[["model", "method", "n_classes", "n_train", "n_test", "top1", "balanced_accuracy",
                    "macro_f1", "ood_auroc"]].to_string(index=False, float_format="%.3f"))
    ssl = rows[rows["model"].str.startswith("ssl_") & (rows["method"] == "knn20")].iloc[0]
    base = rows[rows["model"] == "MorphometricRandomForest"].iloc[0]
    print(f"SSL kNN macro-F1 {ssl.macro_f1:.3f} vs baseline {base.macro_f1:.3f} "
          f"(ratio {ssl.macro_f1 / base.macro_f1:.2f}); leaderboard: {args.workdir / 'benchmark' / 'leaderboard.md'}")


if __name__ == "__main__":
    main()
