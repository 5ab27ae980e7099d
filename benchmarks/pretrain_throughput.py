"""Pretraining throughput: packed vs padded batches, same model, same crops, same run.

Batches come from the real pipeline (bundled UVP6 store → balanced sampler → plankton
multi-crop → ``collate_multicrop``), collated once so that data loading is not timed. Each
timed step is a full training step (``forward_backward`` + AdamW + EMA). The padded
baseline is the same batch laid out one image per row, every row as long as the batch's
longest image (what a padding collate does); the packed batch is first-fit-decreasing rows.

A third layout, ``sparse`` (CUDA only: FlexAttention has no CPU backward), puts every image
of a batch in one row and attends block-sparsely (``model.attention=flex``), so attention
costs Σ lᵢ² and nothing is padded. Prints images/s, tokens/s (real patch tokens), packing
efficiency and, with ``--peak-tflops``, model FLOPs utilisation of the *useful* FLOPs (an
analytic count of the backbone's matmuls on real tokens and within-image attention:
student forward + backward on all crops, teacher forward on the global crops; heads are
not counted, so MFU is a lower bound), plus the ``FlopCounterMode`` count of one step.

    python benchmarks/pretrain_throughput.py                                  # CPU, tiny
    python benchmarks/pretrain_throughput.py --device cuda --arch vit_base --bf16 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aqqua_geo.data import write_uvp6_store
from aqqua_geo.foundation.collate import collate_multicrop
from aqqua_geo.foundation.config import load_config
from aqqua_geo.foundation.data import MultiCropDataset
from aqqua_geo.foundation.packing import PackedBatch, PackedLayout
from aqqua_geo.foundation.sampler import BalancedSampler, curation_probabilities
from aqqua_geo.foundation.ssl_meta_arch import SSLMetaArch
from aqqua_geo.store import AqquaStore


def padded_layout(batch: PackedBatch, n_prefix: int) -> PackedLayout:
    """One image per row, rows as long as the longest image: the padding baseline."""
    device = batch.device
    counts = batch.tokens_per_image
    n = batch.n_images
    row_length = int(counts.max()) + n_prefix
    image_row = torch.arange(n, device=device)
    image_start = torch.zeros(n, dtype=torch.long, device=device)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(batch.n_tokens, device=device) - first[batch.image_index]
    token_row = batch.image_index
    token_slot = n_prefix + local
    prefix_row = image_row.repeat_interleave(n_prefix)
    prefix_slot = torch.arange(n_prefix, device=device).repeat(n)
    segment = torch.full((n, row_length), -1, dtype=torch.long, device=device)
    segment[token_row, token_slot] = batch.image_index
    segment[prefix_row, prefix_slot] = image_row.repeat_interleave(n_prefix)
    return PackedLayout(n_prefix, n, row_length, image_row, image_start, token_row, token_slot,
                        prefix_row, prefix_slot, segment)


def make_batches(cfg: dict, store_dir: Path, n_batches: int) -> list[dict]:
    store = AqquaStore(store_dir)
    sampler = BalancedSampler(curation_probabilities(store.metadata, cfg["curation"]), seed=0)
    loader = torch.utils.data.DataLoader(
        MultiCropDataset(store.torch_dataset(), cfg), batch_size=cfg["train"]["batch_size_per_gpu"],
        sampler=sampler, collate_fn=functools.partial(collate_multicrop, cfg=cfg), drop_last=True,
    )
    batches = []
    while len(batches) < n_batches:
        for batch in loader:
            batches.append(batch)
            if len(batches) == n_batches:
                break
    return batches


def to_device(batch: dict, device: torch.device, padded: bool, n_prefix: int) -> dict:
    out = dict(batch)
    for key in ("global", "local"):
        if batch[key] is not None:
            moved = batch[key].to(device)
            if padded:
                moved._layouts[n_prefix] = padded_layout(moved, n_prefix)
            out[key] = moved
    out["masks"] = out["global"].mask
    return out


def efficiency(batch: dict, mode: str) -> float:
    real = slots = 0
    for key in ("global", "local"):
        b = batch[key]
        if b is None:
            continue
        n_prefix = b.n_prefix_tokens
        real += b.n_tokens + n_prefix * b.n_images
        if mode == "padded":
            slots += (int(b.tokens_per_image.max()) + n_prefix) * b.n_images
        else:
            slots += b.layout(n_prefix, single_row=mode == "sparse").n_slots
    return real / slots


def useful_flops(batch: dict, model_cfg: dict, n_prefix: int) -> float:
    """Analytic matmul FLOPs of one step on real tokens (see the module docstring)."""
    d, depth = model_cfg["embed_dim"], model_cfg["depth"]
    hidden = d * model_cfg["mlp_ratio"]
    total = 0.0
    for key, passes in (("global", 3 + 1), ("local", 3)):  # student fwd+bwd (3×), teacher fwd (1×)
        b = batch[key]
        if b is None:
            continue
        lengths = (b.tokens_per_image.double() + n_prefix)
        tokens = float(lengths.sum())
        per_token = 2 * (4 * d * d + 2 * d * hidden)  # qkv + proj + MLP
        attention = 2 * 2 * d * float((lengths**2).sum())  # QKᵀ and AV within each image
        patch = 2 * float(b.n_tokens) * b.patches.shape[1] * d
        total += passes * (depth * (tokens * per_token + attention) + patch)
    return total


def set_attention(meta, backend: str) -> None:
    for part in (meta.student, meta.teacher):
        part["backbone"].cfg["attention"] = backend


def train_step(meta, optimizer, batch, autocast) -> None:
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        meta.forward_backward(batch, teacher_temp=0.07)
    optimizer.step()
    meta.update_teacher(0.996)


def count_flops(meta, optimizer, batch, autocast) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(meta, optimizer, batch, autocast)
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--arch", default=None, help="vit_small | vit_base | ...: replaces the config's model size")
    ap.add_argument("--store", type=Path, default=None, help="store to read (default: bundled UVP6 vignettes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (bf16 dense) for MFU")
    ap.add_argument("--override", action="append", default=[], help="config override key=value (repeatable)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"train.batch_size_per_gpu={args.batch_size}", "train.device=" + args.device]
    if args.arch:
        overrides += [f"model.arch={args.arch}", "model.embed_dim=null", "model.depth=null", "model.num_heads=null",
                      "model.patch_size=14", "model.max_tokens_per_image=256", "crops.global_max_tokens=256",
                      "crops.local_max_tokens=49", "train.max_tokens_per_row=2048", "crops.n_local_crops=8",
                      "dino.head_n_prototypes=65536", "ibot.head_n_prototypes=65536",
                      "dino.head_hidden_dim=2048", "ibot.head_hidden_dim=2048",
                      "dino.head_bottleneck_dim=256", "ibot.head_bottleneck_dim=256"]
    cfg = load_config(args.config, overrides + args.override)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = args.store or write_uvp6_store(Path(tmp) / "store")
        batches = make_batches(cfg, store_dir, args.steps + 2)

    torch.manual_seed(0)
    meta = SSLMetaArch(cfg).to(device).train()
    optimizer = torch.optim.AdamW(meta.param_groups(1.0, 1.0), lr=1e-4)
    autocast = (functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
                if args.bf16 else contextlib.nullcontext)
    n_prefix = meta.student["backbone"].num_prefix_tokens

    results = {}
    modes = ["padded", "packed"] + (["sparse"] if device.type == "cuda" else [])
    for mode in modes:
        padded = mode == "padded"
        set_attention(meta, "flex" if mode == "sparse" else "dense")
        moved = [to_device(b, device, padded, n_prefix) for b in batches]
        for b in moved[:2]:  # warm-up
            train_step(meta, optimizer, b, autocast)
        times = []
        for b in moved[2:]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(meta, optimizer, b, autocast)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        flops = count_flops(meta, optimizer, moved[2], autocast)
        sec = statistics.median(times)
        tokens = statistics.median(b["global"].n_tokens + (b["local"].n_tokens if b["local"] is not None else 0)
                                   for b in moved[2:])
        results[mode] = {
            "s_per_step": sec,
            "images_per_s": args.batch_size / sec,
            "tokens_per_s": tokens / sec,
            "efficiency": float(np.mean([efficiency(b, mode) for b in moved[2:]])),
            "tflop_per_step": flops / 1e12,
            "useful_tflop_per_step": statistics.median(useful_flops(b, meta.student["backbone"].cfg, n_prefix)
                                                       for b in moved[2:]) / 1e12,
        }

    model = cfg["model"]
    print(f"pretrain throughput: {args.config}{' / ' + args.arch if args.arch else ''} "
          f"(patch {model['patch_size']}), batch {args.batch_size} images × "
          f"({cfg['crops']['n_global_crops']} global + {cfg['crops']['n_local_crops']} local crops), "
          f"{device}{' bf16' if args.bf16 else ' fp32'}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps")
    header = f"{'layout':8s} {'s/step':>8s} {'images/s':>9s} {'tokens/s':>10s} {'efficiency':>10s} {'TFLOP/step':>10s}"
    if args.peak_tflops:
        header += f" {'MFU':>6s}"  # useful FLOPs / s / peak
    print(header)
    for mode, r in results.items():
        line = (f"{mode:8s} {r['s_per_step']:8.3f} {r['images_per_s']:9.1f} {r['tokens_per_s']:10.0f} "
                f"{r['efficiency']:10.3f} {r['tflop_per_step']:10.4f}")
        if args.peak_tflops:
            line += f" {r['useful_tflop_per_step'] / r['s_per_step'] / args.peak_tflops:6.1%}"
        print(line)
    if "sparse" not in results:
        sparse_eff = float(np.mean([efficiency(b, "sparse") for b in batches[2:]]))
        print(f"sparse (one row per batch, block-sparse attention): efficiency {sparse_eff:.3f}; "
              "timed on CUDA only (FlexAttention has no CPU backward)")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    speedup = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    print(f"packed / padded tokens/s: {speedup:.2f}x; packing efficiency {results['packed']['efficiency']:.3f} "
          f"(goal >= 0.95) vs padded {results['padded']['efficiency']:.3f}")


if __name__ == "__main__":
    main()
