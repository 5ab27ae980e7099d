"""Patch n' pack vs pad-to-largest on the bundled UVP6 vignettes: token efficiency and speed.

Baseline, measured in the same run: the usual ViT batching, every image padded to the
largest image of its batch (timm ``VisionTransformer`` with the same width/depth, fed the
padded tensor). Packed: :func:`aqqua_geo.foundation.packing.pack_images` +
``PlanktonViT`` (native resolution, block-diagonal attention).

    python benchmarks/packing_efficiency.py [--arch vit_tiny] [--patch-size 8] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from aqqua_geo._compat import import_timm
from aqqua_geo.data import path
from aqqua_geo.foundation.packing import pack_images, resized_size
from aqqua_geo.foundation.vit import build_backbone
from aqqua_geo.imaging import model_input

UVP6_UM_PER_PX = 73.0  # typical UVP6 pixel size; the vignettes ship without one


def _padded_batch(images: list[torch.Tensor], p: int, budget: int) -> torch.Tensor:
    """The baseline batch: every (down-sized) image zero-padded to the largest one."""
    sized = []
    for img in images:
        h, w = resized_size(img.shape[1], img.shape[2], p, budget)
        if (h, w) != tuple(img.shape[1:]):
            img = torch.nn.functional.interpolate(img[None], size=(h, w), mode="bilinear", antialias=True)[0]
        sized.append(img)
    hmax = -(-max(i.shape[1] for i in sized) // p) * p
    wmax = -(-max(i.shape[2] for i in sized) // p) * p
    out = torch.zeros(len(sized), sized[0].shape[0], hmax, wmax)
    for k, img in enumerate(sized):
        out[k, :, : img.shape[1], : img.shape[2]] = img
    return out


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--max-tokens-per-image", type=int, default=256)
    parser.add_argument("--max-tokens-per-row", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--timed-batches", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)

    files = sorted(path("uvp6_vignettes").glob("*/*.png"))
    images = [model_input(np.asarray(Image.open(f)), 1, [0.5], [0.5]) for f in files]
    order = np.random.default_rng(0).permutation(len(images))
    p, budget = args.patch_size, args.max_tokens_per_image
    print(f"{len(images)} UVP6 vignettes, patch {p}, <= {budget} patches/image, rows of {args.max_tokens_per_row}")

    effs, pads = [], []
    batches = [order[s: s + args.batch] for s in range(0, len(order), args.batch)]
    for idx in batches:
        pb = pack_images([images[i] for i in idx], [UVP6_UM_PER_PX] * len(idx), p, args.max_tokens_per_row,
                         max_tokens_per_image=budget)
        effs.append(pb.efficiency)
        pads.append(pb.padded_efficiency)
    print(f"token efficiency, batches of {args.batch}: packed {np.mean(effs):.3f}  "
          f"pad-to-largest {np.mean(pads):.3f}  (x{np.mean(effs) / np.mean(pads):.2f})")

    model = build_backbone({"arch": args.arch, "patch_size": p, "max_tokens_per_image": budget}).eval()
    timm = import_timm()
    baseline = timm.models.vision_transformer.VisionTransformer(
        img_size=p * 16, patch_size=p, in_chans=1, num_classes=0, embed_dim=model.embed_dim,
        depth=len(model.blocks), num_heads=model.cfg["num_heads"], dynamic_img_size=True,
    ).eval()
    t_packed = t_padded = 0.0
    n_timed = 0
    with torch.inference_mode():
        for idx in batches[: args.timed_batches]:
            imgs = [images[i] for i in idx]
            pb = pack_images(imgs, [UVP6_UM_PER_PX] * len(idx), p, args.max_tokens_per_row, max_tokens_per_image=budget)
            padded = _padded_batch(imgs, p, budget)
            t_packed += _time(lambda: model(pb), args.repeats)
            t_padded += _time(lambda: baseline.forward_features(padded), args.repeats)
            n_timed += len(idx)
    print(f"forward ({args.arch}, {torch.get_num_threads()} threads): packed {n_timed / t_packed:.1f} img/s  "
          f"padded {n_timed / t_padded:.1f} img/s  (x{t_padded / t_packed:.2f})")


if __name__ == "__main__":
    main()
