"""Distil a foundation backbone (teacher) into a small student, and export it to ONNX.

The student is a smaller :class:`~aqqua_geo.foundation.vit.PlanktonViT` (ViT-Ti-like by
default, from :func:`~aqqua_geo.foundation.vit.build_backbone`) that sees the same packed
native-resolution images as the teacher. Losses, per image:

- embedding matching on the CLS token: ``(1 − cos(P s, t̃)) + smooth_L1(P s, t̃)``, where
  ``t̃`` is the teacher embedding standardised per dimension (mean/std over the store) and ``P``
  a linear projection student → teacher width (identity when the widths agree);
- optionally class outputs: ``τ² · KL(softmax(z_t/τ) ‖ softmax(z_s/τ))`` with the logits of a
  linear classifier (:class:`~aqqua_geo.downstream.classify.LinearProbe` bundle) applied to the
  teacher embedding and to the projected student embedding mapped back to teacher space
  (Hinton et al. 2015).

The packed interface (variable numbers of variable-size images) does not map onto a static
ONNX graph: :func:`export_onnx` exports a fixed-shape single-image wrapper
(``image (1, C, H, W) normalised float → embedding (1, D)``) whose pixel size is fixed at
export time, and checks ONNX Runtime against torch.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aqqua_geo._io import atomic_path, file_sha256
from aqqua_geo.downstream.classify import ClassifierBundle
from aqqua_geo.downstream.finetune import dihedral
from aqqua_geo.downstream.probes import LinearProbe
from aqqua_geo.foundation.embed import forward_images


def default_student_cfg(teacher_cfg: dict[str, Any], arch: str = "vit_tiny") -> dict[str, Any]:
    """Student ``model:`` config: *arch* sizes, the teacher's input conventions."""
    keep = ("patch_size", "in_chans", "pos_embed", "pos_ref_um", "max_tokens_per_image", "img_mean", "img_std")
    return {"arch": arch, **{k: copy.deepcopy(teacher_cfg[k]) for k in keep}}


def _torch_logits(probe: LinearProbe, x):
    import torch
    import torch.nn.functional as F

    w = torch.as_tensor(probe.coef_, device=x.device)
    b = torch.as_tensor(probe.intercept_, device=x.device)
    if probe.normalize:
        x = F.normalize(x, dim=-1)
    x = (x - torch.as_tensor(probe.mean_, device=x.device)) / torch.as_tensor(probe.scale_, device=x.device)
    return x @ w.T + b


def distillation_loss(student_emb, teacher_emb, student_logits=None, teacher_logits=None,
                      kd_temperature: float = 4.0, kd_weight: float = 1.0) -> dict[str, Any]:
    """Loss terms (``cosine``, ``smooth_l1``, ``kl``, total ``loss``) for one batch."""
    import torch
    import torch.nn.functional as F

    cos = (1.0 - F.cosine_similarity(student_emb, teacher_emb, dim=-1)).mean()
    l1 = F.smooth_l1_loss(student_emb, teacher_emb)
    terms = {"cosine": cos, "smooth_l1": l1}
    kl = torch.zeros((), device=student_emb.device)
    if student_logits is not None and teacher_logits is not None:
        t = kd_temperature
        kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                      reduction="batchmean", log_target=True) * t * t
    terms["kl"] = kl
    terms["loss"] = cos + l1 + kd_weight * kl
    return terms


def distill(teacher_path: str | Path, store, out_dir: str | Path, *, student_cfg: dict[str, Any] | None = None,
            classifier: str | Path | None = None, epochs: int = 10, batch_size: int = 32, lr: float = 1e-3,
            weight_decay: float = 0.05, kd_temperature: float = 4.0, kd_weight: float = 1.0,
            seed: int = 0, device: str = "cpu", progress: bool = True) -> Path:
    """Train a student on every image of *store* to reproduce the teacher; returns ``OUT/student.pt``.

    Labels are not needed. With a linear *classifier* bundle fitted on the teacher's
    embeddings the class distributions are distilled too. The student is saved with
    :func:`~aqqua_geo.foundation.backbone_io.save_backbone`; the projection and the loss history go
    in its ``distill`` entry.
    """
    import torch
    from tqdm.auto import tqdm

    from aqqua_geo.foundation.backbone_io import load_backbone, save_backbone
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.vit import build_backbone
    from aqqua_geo.store import AqquaStore

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    store = AqquaStore(store) if isinstance(store, (str, Path)) else store
    if len(store) == 0:
        raise ValueError(f"store {store.path} holds no images to distil on")
    teacher = load_backbone(teacher_path, device=device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    probe = None
    if classifier is not None:
        bundle = ClassifierBundle.load(classifier)
        if not isinstance(bundle.head, LinearProbe):
            raise ValueError(f"class distillation needs a linear classifier; {classifier} is {bundle.kind!r}")
        expected = bundle.embedding.get("backbone_sha256")
        if expected and expected != file_sha256(teacher_path):
            raise ValueError(f"classifier {classifier} was not trained on the teacher {teacher_path}")
        probe = bundle.head
    student = build_backbone(student_cfg or default_student_cfg(teacher.cfg)).to(device).train()
    proj = (torch.nn.Identity() if student.embed_dim == teacher.embed_dim
            else torch.nn.Linear(student.embed_dim, teacher.embed_dim)).to(device)
    params = [*student.parameters(), *proj.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    images = store.get_many(range(len(store)))
    px = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)
    # Match standardised teacher embeddings: SSL features can vary across images in a small
    # part of each dimension's range, which a raw regression target would all but ignore.
    t_all = torch.as_tensor(embed_images(teacher, images, list(px), device=device), device=device)
    t_mean, t_scale = t_all.mean(dim=0), t_all.std(dim=0).clamp_min(1e-6)
    steps_per_epoch = -(-len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=min(0.3, 1 / epochs))
    history: list[dict[str, float]] = []
    bar = tqdm(total=epochs * steps_per_epoch, desc="distill", unit="step", disable=not progress)
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            batch = order[b * batch_size : (b + 1) * batch_size]
            views = [dihedral(images[i], rng) for i in batch]
            with torch.no_grad():
                t_emb = forward_images(teacher, views, px[batch], device)["cls"]
            s_std = proj(forward_images(student, views, px[batch], device)["cls"])
            s_logits = t_logits = None
            if probe is not None:  # the probe reads teacher-space embeddings: undo the standardisation
                t_logits, s_logits = _torch_logits(probe, t_emb), _torch_logits(probe, s_std * t_scale + t_mean)
            terms = distillation_loss(s_std, (t_emb - t_mean) / t_scale, s_logits, t_logits, kd_temperature, kd_weight)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            opt.step()
            sched.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(batch)
            bar.update(1)
        history.append({"epoch": epoch + 1, **{k: v / len(images) for k, v in sums.items()}})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    bar.close()
    student.eval()
    extra = {"distill": {"teacher_sha256": file_sha256(teacher_path), "history": history,
                         "projection": {k: v.detach().cpu() for k, v in proj.state_dict().items()},
                         "teacher_mean": t_mean.cpu(), "teacher_scale": t_scale.cpu(),
                         "kd_temperature": kd_temperature, "with_classifier": probe is not None}}
    return save_backbone(student, Path(out_dir) / "student.pt", extra=extra)


class SingleImageEmbedder(torch.nn.Module):
    """Fixed-shape wrapper for ONNX: ``(1, C, H, W)`` normalised image → ``(1, D)`` CLS embedding.

    Packing (grid, positions, row layout) depends only on the image shape and pixel size, so
    for one fixed shape the traced graph holds it as constants; the pixel size is fixed here.
    """

    def __init__(self, model, pixel_size_um: float):
        super().__init__()
        self.model = model
        self.pixel_size_um = float(pixel_size_um)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from aqqua_geo.foundation.packing import pack_images

        m = self.model
        packed = pack_images([image[0]], [self.pixel_size_um], m.patch_size,
                             m.max_tokens_per_image + m.num_prefix_tokens,
                             max_tokens_per_image=m.max_tokens_per_image, n_prefix_tokens=m.num_prefix_tokens)
        return m(packed)["cls"]


def export_onnx(backbone_path: str | Path, onnx_path: str | Path, height: int = 64, width: int = 64,
                pixel_size_um: float = 73.0, atol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Export the single-image embedder to ONNX and compare ONNX Runtime with torch.

    Returns ``{"path", "max_abs_diff", "ok", "input_shape", "exporter"}``; raises if the
    difference exceeds *atol*. Uses the TorchScript-based exporter (``dynamo=False``), which
    traces the Python packing logic into constants for this fixed shape.
    """
    import onnxruntime as ort

    from aqqua_geo.foundation.backbone_io import load_backbone

    model = load_backbone(backbone_path)
    wrapper = SingleImageEmbedder(model, pixel_size_um).eval()
    gen = torch.Generator().manual_seed(seed)
    example, check = torch.randn(2, 1, model.in_chans, height, width, generator=gen)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), atomic_path(onnx_path) as tmp:
        # the tracer warns that packing metadata become constants: intended for a fixed shape
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(tmp), input_names=["image"], output_names=["embedding"],
                          opset_version=17, dynamo=False)
        expected = wrapper(check).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"image": check.numpy()})[0]  # an input the trace never saw
    diff = float(np.abs(got - expected).max())
    result = {"path": str(onnx_path), "max_abs_diff": diff, "ok": diff <= atol,
              "input_shape": [1, model.in_chans, height, width], "pixel_size_um": pixel_size_um,
              "exporter": "torch.onnx.export(dynamo=False)"}
    if diff > atol:
        raise AssertionError(f"ONNX Runtime output differs from torch by {diff:.2e} > atol {atol:g} ({onnx_path})")
    return result
