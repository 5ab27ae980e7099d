"""Downstream commands: embed, predict, finetune, distill, benchmark, export-ecotaxa."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

Model = Annotated[Path, typer.Option("--model", "-m", help="Backbone checkpoint (backbone.pt).", exists=True,
                                     dir_okay=False)]
Store = Annotated[Path, typer.Option("--store", "-s", help="AqQua store directory.", exists=True, file_okay=False)]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")]
ChunkSize = Annotated[int, typer.Option(help="Objects per Zarr chunk / resumable unit.", min=1)]
MaxTokens = Annotated[int, typer.Option(help="Token budget of one packed inference batch.", min=1)]
Threads = Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice; 1 is much "
                                                  "faster on an oversubscribed shared node).", min=1)]


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


class Mode(str, Enum):
    knn = "knn"
    linear = "linear"
    hybrid = "hybrid"
    full = "full"


class Rare(str, Enum):
    group = "group"
    exclude = "exclude"


class Novelty(str, Enum):
    auto = "auto"
    knn = "knn"
    mahalanobis = "mahalanobis"
    rmd = "rmd"
    vim = "vim"
    gaussian = "gaussian"
    energy = "energy"


class NovelCarbon(str, Enum):
    size = "size"
    nan = "nan"


class Colonies(str, Enum):
    nan = "nan"
    whole = "whole"


class Weighting(str, Enum):
    effective_number = "effective_number"
    inverse_frequency = "inverse_frequency"
    none = "none"


def _classifier_from_leaderboard(model: Path, store: Path, out: Path, board_dir: Path,
                                 device: str) -> tuple[Path, Path]:
    """(backbone, classifier) of the leaderboard's best deployable method for *model*."""
    import pandas as pd

    from aqqua_geo._io import file_sha256
    from aqqua_geo.downstream.benchmark import deploy_best

    csv = board_dir / "leaderboard.csv"
    if not csv.is_file():
        raise typer.BadParameter(f"{csv} not found: run `aqqua benchmark --out {board_dir}` first",
                                 param_hint="--leaderboard")
    board = pd.read_csv(csv, dtype={"model_sha256": str})
    try:
        backbone, clf, why, best = deploy_best(board, board_dir, model, store, out / "classifier.joblib",
                                               model_sha256=file_sha256(model), device=device)
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err), param_hint="--leaderboard") from None
    typer.echo(f"classifier: {best['model']}/{best['method']} — {why}")
    return backbone, clf


def embed(model: Model, store: Store, out: Out, chunk_size: ChunkSize = 256, max_tokens: MaxTokens = 4096,
          device: Device = "cpu", overwrite: bool = typer.Option(False, help="Discard an existing output."),
          threads: Threads = None) -> None:
    """Embed every image of a store into OUT/embeddings.zarr (resumable: re-run after a kill)."""
    _set_threads(threads)
    from aqqua_geo.foundation.embed import embed_store

    path = embed_store(model, store, out, chunk_size=chunk_size, max_tokens_per_batch=max_tokens,
                       device=device, overwrite=overwrite)
    typer.echo(f"embeddings: {path}")


def predict(model: Model, store: Store, out: Out,
            classifier: Annotated[Path | None, typer.Option(help="Classifier file from `aqqua finetune`.",
                                                            exists=True, dir_okay=False)] = None,
            leaderboard: Annotated[Path | None, typer.Option(
                help="Instead of --classifier: a folder with leaderboard.csv from `aqqua benchmark` on your "
                     "labelled data; the best method it can deploy for --model is trained on the store's "
                     "labels and used (it says which and why).", exists=True, file_okay=False)] = None,
            top_k: Annotated[int, typer.Option(help="Classes listed per image.", min=1)] = 3,
            chunk_size: ChunkSize = 256, max_tokens: MaxTokens = 4096, device: Device = "cpu",
            overwrite: bool = typer.Option(False, help="Discard an existing output."),
            novel_carbon: Annotated[NovelCarbon, typer.Option(
                help="Carbon of objects flagged novel: class-free size relation (flagged) or NaN.")] = NovelCarbon.size,
            colonies: Annotated[Colonies, typer.Option(
                help="Colonies without a cell count: NaN carbon, or the relation on the whole volume "
                     "(flagged).")] = Colonies.nan,
            threads: Threads = None) -> None:
    """Embeddings + OUT/predictions.parquet (classes, novelty, traits, carbon); resumable."""
    _set_threads(threads)
    import pandas as pd

    from aqqua_geo.downstream.inference import predict_store

    if leaderboard is not None:
        if classifier is not None:
            raise typer.BadParameter("give --classifier or --leaderboard, not both", param_hint="--leaderboard")
        model, classifier = _classifier_from_leaderboard(model, store, out, leaderboard, device)
    path = predict_store(model, store, out, classifier, top_k=top_k, chunk_size=chunk_size,
                         max_tokens_per_batch=max_tokens, device=device, overwrite=overwrite,
                         novel_carbon=novel_carbon.value, colonies=colonies.value)
    df = pd.read_parquet(path, columns=["pred_label", "is_novel"])
    typer.echo(f"predictions: {path} ({len(df)} objects)")
    if df["pred_label"].notna().any():
        typer.echo(df["pred_label"].value_counts().head(10).to_string())
        typer.echo(f"flagged novel: {int(df['is_novel'].sum())}")


def finetune(model: Model, store: Store, out: Out,
             mode: Annotated[Mode, typer.Option(help="knn / linear: heads on frozen embeddings; "
                                                     "hybrid: embedding ⊕ morphometrics; "
                                                     "full: fine-tune the backbone too.")] = Mode.full,
             epochs: Annotated[int, typer.Option(min=1, help="Most epochs (full); early stop on val loss.")] = 30,
             batch_size: Annotated[int, typer.Option(min=1)] = 32,
             lr: float = 5e-4, layer_decay: float = 0.75,
             loss_weighting: Weighting = Weighting.effective_number,
             k: Annotated[int, typer.Option(help="Neighbours (knn mode).", min=1)] = 20,
             min_count: Annotated[int, typer.Option(help="Classes with fewer examples are rare.")] = 10,
             rare: Annotated[Rare, typer.Option(help="Rare classes → other_<parent>, or dropped.")] = Rare.group,
             novelty: Annotated[Novelty, typer.Option(help="Novelty score, thresholded to accept 95% of "
                                                          "validation images; auto: the method that flags "
                                                          "most of each class held out of training.")] = Novelty.auto,
             val_fraction: float = 0.2, seed: int = 0, device: Device = "cpu",
             threads: Threads = None) -> None:
    """Train a species classifier on a store's labels; writes OUT/classifier.joblib."""
    _set_threads(threads)
    from aqqua_geo.downstream.classify import ClassifierBundle, train_classifier
    from aqqua_geo.downstream.finetune import finetune as run_finetune

    out.mkdir(parents=True, exist_ok=True)
    if mode is Mode.full:
        backbone, clf = run_finetune(model, store, out, epochs=epochs, batch_size=batch_size, lr=lr,
                                     layer_decay=layer_decay, loss_weighting=loss_weighting.value,
                                     min_count=min_count, rare=rare.value, val_fraction=val_fraction,
                                     novelty=novelty.value, seed=seed, device=device)
        bundle = ClassifierBundle.load(clf)
        typer.echo(f"fine-tuned backbone: {backbone}  (use it as --model with this classifier)")
    else:
        clf = out / "classifier.joblib"
        bundle = train_classifier(model, store, clf, kind=mode.value, k=k, min_count=min_count, rare=rare.value,
                                  val_fraction=val_fraction, novelty=novelty.value, seed=seed, device=device)
    m = bundle.metrics
    cal = m["calibration"]
    typer.echo(f"classifier: {clf}  ({len(bundle.classes)} classes, n_train={m['n_train']}, n_val={m['n_val']})")
    typer.echo(f"validation top-1 {m['val_top1']:.3f}, balanced accuracy {m['val_balanced_accuracy']:.3f}")
    typer.echo(f"calibration: fitted T={cal['temperature_fitted']:.3f} "
               f"{'kept' if cal['kept'] else 'not kept (it raised the ECE)'}; validation ECE "
               f"{cal['ece_before']:.3f} without, {cal['ece_fitted']:.3f} with it -> {cal['ece_after']:.3f}")
    nov = m.get("novelty", {})
    typer.echo(f"novelty: {nov.get('method')} (requested {nov.get('requested')})")
    for r in nov.get("summary", []):
        typer.echo(f"  {r['method']}: classes held out of training: mean AUROC {r['auroc_mean']:.3f}, "
                   f"mean flagged {r['novel_flagged_mean']:.2f} at {r['known_flagged_mean']:.2f} of known flagged")
    for r in m.get("rare_classes", []):
        if r["action"] != "kept":
            typer.echo(f"rare class {r['label']!r} (n={r['n']}): {r['action']} -> {r['new_label']}")


def distill(teacher: Annotated[Path, typer.Option(help="Teacher backbone.pt.", exists=True, dir_okay=False)],
            store: Store, out: Out,
            classifier: Annotated[Path | None, typer.Option(help="Linear classifier on the teacher: also "
                                                            "distil class outputs.", exists=True)] = None,
            arch: Annotated[str, typer.Option(help="Student arch (vit_tiny, ...).")] = "vit_tiny",
            embed_dim: Annotated[int | None, typer.Option(help="Custom student width.")] = None,
            depth: Annotated[int | None, typer.Option(help="Custom student depth.")] = None,
            num_heads: Annotated[int | None, typer.Option(help="Custom student heads.")] = None,
            patch_size: Annotated[int | None, typer.Option(help="Student patch size (default: the "
                                                             "teacher's).")] = None,
            epochs: Annotated[int, typer.Option(min=1)] = 10,
            batch_size: Annotated[int, typer.Option(min=1)] = 32,
            lr: float = 1e-3, kd_temperature: float = 4.0,
            onnx: bool = typer.Option(True, help="Export OUT/student.onnx and check it against torch."),
            onnx_size: Annotated[int, typer.Option(help="Side (px) of the fixed ONNX input.")] = 64,
            onnx_pixel_size_um: Annotated[float, typer.Option(help="Pixel size baked into the ONNX graph.")] = 73.0,
            seed: int = 0, device: Device = "cpu",
            threads: Threads = None) -> None:
    """Distil a teacher backbone into a small student (OUT/student.pt, OUT/student.onnx)."""
    _set_threads(threads)
    from aqqua_geo.downstream.distill import default_student_cfg, export_onnx
    from aqqua_geo.downstream.distill import distill as run_distill
    from aqqua_geo.foundation.backbone_io import load_backbone

    cfg = default_student_cfg(load_backbone(teacher).cfg, arch)
    for key, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads),
                       ("patch_size", patch_size)):
        if value is not None:
            cfg[key] = value
    student = run_distill(teacher, store, out, student_cfg=cfg, classifier=classifier, epochs=epochs,
                          batch_size=batch_size, lr=lr, kd_temperature=kd_temperature, seed=seed, device=device)
    typer.echo(f"student: {student}")
    if onnx:
        res = export_onnx(student, Path(out) / "student.onnx", onnx_size, onnx_size, onnx_pixel_size_um)
        typer.echo(f"onnx: {res['path']} input {res['input_shape']}, max |onnxruntime − torch| = "
                   f"{res['max_abs_diff']:.2e}")


def benchmark(model: Annotated[list[Path], typer.Option("--model", "-m", help="Backbone(s); repeat the option.",
                                                        exists=True, dir_okay=False)],
              store: Store, out: Out,
              labels: Annotated[Path | None, typer.Option(help="CSV/Parquet object_id,label overriding the "
                                                          "store's labels.", exists=True)] = None,
              name: Annotated[list[str] | None, typer.Option(help="Display name per --model.")] = None,
              k: Annotated[int, typer.Option(min=1)] = 20, test_size: float = 0.3, seed: int = 0,
              min_count: int = 10,
              leaderboard: Annotated[Path | None, typer.Option(help="Leaderboard folder (default: OUT).")] = None,
              baseline: bool = typer.Option(True, help="Include the MorphometricRandomForest baseline."),
              random_init: bool = typer.Option(True, help="Add each model's architecture at random init (control)."),
              hybrid: bool = typer.Option(True, help="Add embedding ⊕ morphometrics logistic regression rows."),
              finetune_epochs: Annotated[int, typer.Option(min=0, help="Full fine-tuning rows (most epochs; "
                                                                  "0: none).")] = 30,
              device: Device = "cpu",
              threads: Threads = None) -> None:
    """Evaluate models (+ the morphometric random-forest baseline) and update the leaderboard."""
    _set_threads(threads)
    from rich.console import Console
    from rich.table import Table

    from aqqua_geo.downstream.benchmark import run_benchmark

    rows = run_benchmark(model, store, out, names=name or None, labels=labels, k=k, test_size=test_size,
                         seed=seed, min_count=min_count, baseline=baseline, device=device,
                         leaderboard=leaderboard, random_init=random_init, hybrid=hybrid,
                         finetune_epochs=finetune_epochs)
    table = Table(title=f"{Path(store).name}: {rows['n_classes'].iloc[0]} classes, "
                        f"{rows['n_train'].iloc[0]} train / {rows['n_test'].iloc[0]} test (seed {seed})")
    cols = ["model", "method", "top1", "balanced_accuracy", "macro_f1", "ood_auroc", "trait_r2"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "method") else "right")
    for _, r in rows.iterrows():
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    Console(width=max(Console().width, 110)).print(table)
    typer.echo(f"leaderboard: {Path(leaderboard or out) / 'leaderboard.md'}")


def export_ecotaxa(store: Store,
                   out: Annotated[Path, typer.Option("--out", "-o", help="OUT.zip or a directory.")],
                   predictions: Annotated[Path | None, typer.Option(help="predictions.parquet from `aqqua "
                                                                    "predict`.", exists=True)] = None,
                   ids: Annotated[Path | None, typer.Option(help="CSV of object_id to export (default: all).",
                                                            exists=True)] = None,
                   novel_category: Annotated[str | None, typer.Option(
                       help="EcoTaxa category for objects flagged novel (status predicted); "
                            "default: none (unclassified).")] = None) -> None:
    """Write an EcoTaxa import bundle (TSV with type row + PNG vignettes) of a store."""
    from aqqua_geo.export.ecotaxa import write_ecotaxa_cli

    typer.echo(f"EcoTaxa bundle: {write_ecotaxa_cli(store, predictions, out, ids, novel_category)}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to *app*."""
    for command in (embed, predict, finetune, distill, benchmark):
        app.command(command.__name__)(command)
    app.command("export-ecotaxa")(export_ecotaxa)
