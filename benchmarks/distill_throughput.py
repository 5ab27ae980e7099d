"""Distilled student vs teacher: CPU throughput, kNN accuracy and ONNX agreement.

Distils ``--teacher`` into a small student (``aqqua_geo.downstream.distill.distill``: cosine +
smooth-L1 on CLS embeddings, + KL on a linear probe's logits fitted on the teacher's training
split) on the images of the bundled UVP6 store, then in the same run:

* throughput: ``embed_images`` over every store image on CPU (end to end: decoding to tensors,
  packing, forward) and the packed forward pass alone, same thread count, best of
  ``--repeats`` (images/s) for teacher and student, and the speed-up ratios (goal ≥ 5×);
* accuracy: DINOv2 kNN (k=20, T=0.07) top-1 and macro-F1 of each backbone on the benchmark's
  stratified split (goal: ≤ 3 points lost);
* ONNX: fixed-shape single-image export of the student, max |ONNX Runtime − torch|, and ONNX
  Runtime throughput of that graph.

    python benchmarks/distill_throughput.py --teacher RUN/backbone.pt --workdir /tmp/distill
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _packed_batches(model, images, pixel_sizes, per_batch: int = 64):
    from aqqua_geo.foundation.packing import pack_images
    from aqqua_geo.imaging import model_input

    cfg, row = model.cfg, model.max_tokens_per_image + model.num_prefix_tokens
    batches = [pack_images([model_input(im, model.in_chans, cfg["img_mean"], cfg["img_std"])
                            for im in images[i : i + per_batch]], pixel_sizes[i : i + per_batch], model.patch_size,
                           row, max_tokens_per_image=model.max_tokens_per_image,
                           n_prefix_tokens=model.num_prefix_tokens)
               for i in range(0, len(images), per_batch)]
    for b in batches:
        b.layout(model.num_prefix_tokens)  # row layout computed once, outside the timing
    return batches


def throughput(models, images, pixel_sizes, repeats: int) -> list[tuple[float, float]]:
    """Per model: images/s of ``embed_images`` end to end and of the packed forward alone.

    Best of *repeats*; the models are timed in turn within each repeat so that a change in
    machine load affects them alike.
    """
    import torch

    from aqqua_geo.foundation.embed import embed_images

    batches = [_packed_batches(m, images, pixel_sizes) for m in models]
    best = [[float("inf"), float("inf")] for _ in models]
    with torch.inference_mode():
        for _ in range(repeats):
            for i, model in enumerate(models):
                t0 = time.perf_counter()
                embed_images(model, images, pixel_sizes, max_tokens_per_batch=4096)
                t1 = time.perf_counter()
                for b in batches[i]:
                    model(b)
                t2 = time.perf_counter()
                best[i] = [min(best[i][0], t1 - t0), min(best[i][1], t2 - t1)]
    return [(len(images) / e2e, len(images) / fwd) for e2e, fwd in best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--store", type=Path, help="labelled store (default: the bundled UVP6 vignettes)")
    # defaults: a student for the tiny-config teacher (64-d, 4 blocks, 8-px patches)
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--num-heads", type=int, default=2)
    ap.add_argument("--patch-size", type=int, default=16,
                    help="student patch size (0: the teacher's); 16 = 4x fewer tokens than the tiny teacher")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from sklearn.model_selection import train_test_split

    from aqqua_geo._io import file_sha256
    from aqqua_geo.downstream.benchmark import classification_metrics
    from aqqua_geo.downstream.classify import ClassifierBundle
    from aqqua_geo.downstream.distill import default_student_cfg, distill, export_onnx
    from aqqua_geo.downstream.probes import KNNClassifier, LinearProbe
    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.store import AqquaStore

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.store is None:
        from leaderboard_uvp6 import uvp6_store  # same folder

        args.store = uvp6_store(args.workdir)
    store = AqquaStore(args.store)
    meta = store.metadata
    rows = np.flatnonzero(meta["label"].notna().to_numpy())
    y = meta["label"].to_numpy(dtype=object)[rows].astype(str)
    images = store.get_many(rows.tolist())
    px = list(meta["pixel_size_um"].to_numpy(dtype=float)[rows])
    tr, te = train_test_split(np.arange(len(rows)), test_size=0.3, stratify=y, random_state=args.seed)

    teacher = load_backbone(args.teacher)
    t_emb = embed_images(teacher, images, px)
    probe = LinearProbe().fit(t_emb[tr], y[tr])
    clf = ClassifierBundle(head=probe, embedding={"backbone_sha256": file_sha256(args.teacher)})
    clf_path = clf.save(args.workdir / "teacher_linear.joblib")

    cfg = default_student_cfg(teacher.cfg)
    cfg.update(embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads)
    if args.patch_size:
        cfg["patch_size"] = args.patch_size
    t0 = time.perf_counter()
    student_path = distill(args.teacher, store, args.workdir, student_cfg=cfg, classifier=clf_path,
                           epochs=args.epochs, seed=args.seed)
    train_s = time.perf_counter() - t0
    student = load_backbone(student_path)
    s_emb = embed_images(student, images, px)

    def knn(emb):
        pred = KNNClassifier(k=20).fit(emb[tr], y[tr]).predict(emb[te])
        return classification_metrics(y[te], pred)

    acc_t, acc_s = knn(t_emb), knn(s_emb)
    n_params = [sum(p.numel() for p in m.parameters()) for m in (teacher, student)]
    (ips_t, fwd_t), (ips_s, fwd_s) = throughput([teacher, student], images, px, args.repeats)

    h, w = images[0].shape[:2]
    onnx = export_onnx(student_path, args.workdir / "student.onnx", height=h, width=w, pixel_size_um=px[0])
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(onnx["path"], opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=onnx["input_shape"]).astype(np.float32)
    n_onnx = 200
    t0 = time.perf_counter()
    for _ in range(n_onnx):
        sess.run(None, {"image": x})
    onnx_ips = n_onnx / (time.perf_counter() - t0)

    print(f"store {args.store} : {len(rows)} labelled images, {len(np.unique(y))} classes, "
          f"kNN split {len(tr)}/{len(te)}; CPU threads {args.threads}")
    print(f"teacher {teacher.embed_dim}d x{len(teacher.blocks)} p{teacher.patch_size}: {n_params[0]:,} params, "
          f"{ips_t:,.0f} img/s end-to-end ({fwd_t:,.0f} forward only), kNN top-1 {acc_t['top1']:.3f}, macro-F1 {acc_t['macro_f1']:.3f}")
    print(f"student {student.embed_dim}d x{len(student.blocks)} p{student.patch_size}: {n_params[1]:,} params, "
          f"{ips_s:,.0f} img/s end-to-end ({fwd_s:,.0f} forward only), kNN top-1 {acc_s['top1']:.3f}, macro-F1 {acc_s['macro_f1']:.3f} "
          f"(distilled {args.epochs} epochs in {train_s:.0f} s)")
    print(f"speed-up {ips_s / ips_t:.2f}x end-to-end, {fwd_s / fwd_t:.2f}x forward (goal >= 5x); kNN top-1 change "
          f"{100 * (acc_s['top1'] - acc_t['top1']):+.1f} points (goal >= -3)")
    print(f"ONNX {onnx['input_shape']}: max |onnxruntime - torch| = {onnx['max_abs_diff']:.2e}; "
          f"onnxruntime {onnx_ips:,.0f} img/s (single image, fixed shape)")


if __name__ == "__main__":
    main()
