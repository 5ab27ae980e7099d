"""Full fine-tuning of a backbone with a linear head: class weights, layer-wise LR decay."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aqqua_geo._io import file_sha256
from aqqua_geo.downstream.classify import finish_bundle, split_train_val, labelled_subset
from aqqua_geo.downstream.probes import LinearProbe

__all__ = ["class_weights", "dihedral", "finetune", "layer_decay_param_groups"]


def class_weights(counts: Sequence[int], scheme: str = "effective_number", beta: float = 0.999) -> np.ndarray:
    """Per-class loss weights, normalised to mean 1.

    ``effective_number`` (Cui et al. 2019): ``(1 − β) / (1 − β^n_c)``;
    ``inverse_frequency``: ``1 / n_c``; ``none``: ones.
    """
    n = np.asarray(counts, dtype=np.float64)
    if (n <= 0).any():
        raise ValueError(f"class counts must be positive, got {n.tolist()}")
    if scheme == "effective_number":
        w = (1.0 - beta) / (1.0 - np.power(beta, n))
    elif scheme == "inverse_frequency":
        w = 1.0 / n
    elif scheme == "none":
        w = np.ones_like(n)
    else:
        raise ValueError(f"unknown class weighting {scheme!r} (effective_number | inverse_frequency | none)")
    return w / w.mean()


def layer_decay_param_groups(model, head, base_lr: float, layer_decay: float,
                             weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise LR decay (BEiT/DINOv2 fine-tuning).

    Embeddings (patch/pos/cls/register/mask tokens) are layer 0, ``blocks.i`` layer i+1, the
    final norm and the head layer L+1; lr = base_lr · decay^(L+1−layer). Biases, norms and
    tokens get no weight decay.
    """
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}

    def layer_of(name: str) -> int:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith("norm"):
            return depth + 1
        return 0

    named = [(n, p, layer_of(n)) for n, p in model.named_parameters()]
    named += [(f"head.{n}", p, depth + 1) for n, p in head.named_parameters()]
    for name, param, layer in named:
        if not param.requires_grad:
            continue
        no_wd = param.ndim <= 1 or name.endswith("token") or name.endswith("tokens")
        key = (layer, no_wd)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[key] = {"params": [], "lr": base_lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_wd else weight_decay}
        groups[key]["params"].append(param)
    return list(groups.values())


def dihedral(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random dihedral transform: plankton have no canonical orientation (size is kept)."""
    image = np.rot90(image, k=int(rng.integers(4)))
    return np.ascontiguousarray(image[:, ::-1] if rng.random() < 0.5 else image)


def finetune(backbone_path: str | Path, store, out_dir: str | Path, *,
             labels: Sequence[str | None] | None = None, epochs: int = 5, batch_size: int = 32,
             lr: float = 2e-4, layer_decay: float = 0.75, weight_decay: float = 0.05,
             loss_weighting: str = "effective_number", beta: float = 0.999, min_count: int = 10,
             rare: str = "group", val_fraction: float = 0.2, novelty: str = "knn", seed: int = 0,
             device: str = "cpu", max_tokens_per_batch: int = 4096,
             progress: bool = True) -> tuple[Path, Path]:
    """Fine-tune a backbone + linear head on a store's labelled objects.

    Class-balanced cross-entropy (*loss_weighting*), AdamW with layer-wise LR decay and a
    cosine schedule with one warm-up epoch, dihedral augmentation. Writes
    ``OUT/backbone.pt`` (the fine-tuned backbone, :func:`~aqqua_geo.foundation.vit.save_backbone`)
    and ``OUT/classifier.joblib`` (its head as a :class:`LinearProbe`, calibrated on the
    validation split, with a novelty scorer); returns both paths.
    """
    import torch
    from tqdm.auto import tqdm

    from aqqua_geo.foundation.embed import embed_images, forward_images
    from aqqua_geo.foundation.vit import load_backbone, save_backbone
    from aqqua_geo.store import AqquaStore

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    store = AqquaStore(store) if isinstance(store, (str, Path)) else store
    rows, y, report = labelled_subset(store, labels, min_count, rare)
    classes = np.unique(y)
    y_idx = np.searchsorted(classes, y)
    tr, va = split_train_val(y, val_fraction, seed)
    images = store.get_many(rows.tolist())
    px = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)[rows]

    model = load_backbone(backbone_path, device=device).train()
    # BatchNorm without affine before the linear layer (MAE's linear-probe recipe): SSL CLS
    # features can vary across images in a small part of their range; it is folded into the
    # saved LinearProbe as mean/scale.
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(model.embed_dim, affine=False),
                               torch.nn.Linear(model.embed_dim, len(classes))).to(device)
    torch.nn.init.zeros_(head[1].weight)
    torch.nn.init.zeros_(head[1].bias)
    groups = layer_decay_param_groups(model, head, lr, layer_decay, weight_decay)
    opt = torch.optim.AdamW(groups, lr=lr)
    weights = class_weights(np.bincount(y_idx[tr], minlength=len(classes)), loss_weighting, beta)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
    steps_per_epoch = -(-len(tr) // batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup)))

    step, history = 0, []
    bar = tqdm(total=total, desc="finetune", unit="step", disable=not progress)
    for epoch in range(epochs):
        order = rng.permutation(tr)
        running = 0.0
        for b in range(steps_per_epoch):
            batch = order[b * batch_size : (b + 1) * batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples; one image is skipped this epoch
                step += 1
                bar.update(1)
                continue
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"] * lr_factor(step)
            out = forward_images(model, [dihedral(images[i], rng) for i in batch], px[batch], device)
            loss = loss_fn(head(out["cls"]), torch.as_tensor(y_idx[batch], device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 3.0)
            opt.step()
            running += float(loss.detach()) * len(batch)
            step += 1
            bar.update(1)
        history.append({"epoch": epoch + 1, "train_loss": running / len(tr)})
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}")
    bar.close()

    out_dir = Path(out_dir)
    model.eval()
    head.eval()
    backbone_out = save_backbone(model, out_dir / "backbone.pt",
                                 extra={"finetune": {"source_backbone_sha256": file_sha256(backbone_path),
                                                     "classes": [str(c) for c in classes], "epochs": epochs}})
    emb = embed_images(model, images, list(px), max_tokens_per_batch=max_tokens_per_batch, device=device)
    bn, linear = head[0], head[1]
    probe = LinearProbe.from_weights(linear.weight.detach().cpu().numpy(), linear.bias.detach().cpu().numpy(),
                                     classes, mean=bn.running_mean.cpu().numpy(),
                                     scale=torch.sqrt(bn.running_var + bn.eps).cpu().numpy())
    bundle = finish_bundle(probe, backbone_out, emb, y, tr, va, report, novelty,
                            {"max_tokens_per_batch": max_tokens_per_batch})
    bundle.metrics.update({"history": history, "loss_weighting": loss_weighting, "layer_decay": layer_decay,
                           "rare_classes": report.to_dict("records")})
    clf_out = bundle.save(out_dir / "classifier.joblib")
    return backbone_out, clf_out
