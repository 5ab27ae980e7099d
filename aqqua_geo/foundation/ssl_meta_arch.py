"""DINOv2 student/teacher composition on packed native-resolution crops.

``SSLMetaArch(cfg)`` holds a student (backbone + DINO head [+ separate iBOT head]) trained by
gradient descent and an EMA teacher of the same shape. One step
(:meth:`SSLMetaArch.forward_backward`):

* teacher (no grad) sees the *unmasked* global crops; its CLS logits (DINO) and the logits
  of the patches masked in the student (iBOT) are turned into targets by Sinkhorn-Knopp or
  softmax centring at the ``teacher_temp`` given by the trainer's schedule;
* student sees the global crops with iBOT-masked patches replaced by the mask token, and the
  local crops;
* DINO: every local crop × every global teacher crop, and every global student crop × every
  *other* global teacher crop, each a mean cross-entropy, summed and divided by the number of
  terms (DINOv2's ``n_local_crops_loss_terms + n_global_crops_loss_terms``);
* KoLeo on the student's global CLS tokens, one global-crop chunk at a time (never between
  two crops of the same image);
* iBOT at masked patches, per-image 1/n_masked weighting, scaled by ``2 / n_global_crops``.

Config: ``model`` (see :mod:`~aqqua_geo.foundation.vit`), ``dino`` (``loss_weight``,
``head_n_prototypes``, ``head_bottleneck_dim``, ``head_hidden_dim``, ``head_nlayers``,
``koleo_loss_weight``), ``ibot`` (``loss_weight``, ``separate_head`` and the same head keys)
and ``train.centering`` (``sinkhorn_knopp`` | ``centering``). Masking ratios live with the
trainer's collate; the student temperature is DINOv2's 0.1.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from aqqua_geo.foundation.config import packaged_defaults
from aqqua_geo.foundation.heads import DINOHead
from aqqua_geo.foundation.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, SoftmaxCentering, sinkhorn_knopp
from aqqua_geo.foundation.packing import PackedBatch, concat_packed
from aqqua_geo.foundation.vit import build_backbone

STUDENT_TEMP = 0.1


def _merged(cfg: dict[str, Any], section: str) -> dict[str, Any]:
    """*cfg*'s section over the packaged defaults; keys the defaults do not define are refused."""
    defaults = packaged_defaults(section)
    given = cfg.get(section, {}) or {}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {section} config key(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}

CENTERINGS = ("sinkhorn_knopp", "centering")
# Parameters that get no weight decay besides biases and norms (DINOv2 param_groups.py).
_NO_WD = ("gamma", "pos_embed", "cls_token", "mask_token", "register_tokens")
_LAYER0 = ("patch_embed", "pos_embed", "cls_token", "mask_token", "register_tokens")


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (parameter names without ``module.``)."""
    return getattr(module, "module", module)


def _off_diagonal_mean(sim: Tensor) -> Tensor:
    """Mean of the off-diagonal entries of a square matrix (0 for a 1 × 1 one)."""
    n = sim.shape[0]
    return (sim.sum() - sim.diagonal().sum()) / max(n * (n - 1), 1)


def _local(t: Tensor) -> Tensor:
    """The local shard of an FSDP DTensor parameter (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _make_head(head_cfg: dict[str, Any], in_dim: int) -> DINOHead:
    return DINOHead(in_dim, head_cfg["head_n_prototypes"], head_cfg["head_hidden_dim"],
                    head_cfg["head_bottleneck_dim"], head_cfg["head_nlayers"], bool(head_cfg["head_use_bn"]))


class SSLMetaArch(nn.Module):
    """Student + EMA teacher + DINOv2 losses. See the module docstring."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        if "model" not in cfg:
            raise ValueError("SSLMetaArch: config has no 'model' block")
        self.dino_cfg = _merged(cfg, "dino")
        self.ibot_cfg = _merged(cfg, "ibot")
        self.centering = cfg.get("train", {}).get("centering", "sinkhorn_knopp")
        if self.centering not in CENTERINGS:
            raise ValueError(f"train.centering must be one of {CENTERINGS}, got {self.centering!r}")
        self.do_dino = self.dino_cfg["loss_weight"] > 0
        self.do_koleo = self.dino_cfg["koleo_loss_weight"] > 0
        self.do_ibot = self.ibot_cfg["loss_weight"] > 0
        self.ibot_separate_head = bool(self.ibot_cfg["separate_head"])

        backbone = build_backbone(cfg["model"])
        d = backbone.embed_dim
        student = {"backbone": backbone, "dino_head": _make_head(self.dino_cfg, d)}
        if self.do_ibot and self.ibot_separate_head:
            student["ibot_head"] = _make_head(self.ibot_cfg, d)
        self.student = nn.ModuleDict(student)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.backbone.grad_checkpointing = False
        for block in self.teacher.backbone.blocks:
            block.drop_path = 0.0  # the teacher never drops paths
        for p in self.teacher.parameters():
            p.requires_grad = False

        self.dino_loss = DINOLoss(STUDENT_TEMP)
        self.ibot_loss = IBOTPatchLoss(STUDENT_TEMP)
        self.koleo_loss = KoLeoLoss()
        ibot_protos = (self.ibot_cfg if self.ibot_separate_head else self.dino_cfg)["head_n_prototypes"]
        if self.centering == "centering":
            self.dino_center = SoftmaxCentering(self.dino_cfg["head_n_prototypes"])
            self.ibot_center = SoftmaxCentering(ibot_protos)

    # -- helpers ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> SSLMetaArch:
        super().train(mode)
        self.teacher.eval()
        return self

    def _ibot_head(self, model: nn.ModuleDict) -> nn.Module:
        return model["ibot_head"] if self.ibot_separate_head else model["dino_head"]

    def _targets(self, logits: Tensor, teacher_temp: float, center: str) -> Tensor:
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, teacher_temp, n_iterations=3)
        centring: SoftmaxCentering = getattr(self, center)
        targets = centring(logits, teacher_temp)
        centring.update(logits)
        return targets

    # -- one training step -----------------------------------------------------------------
    def forward_backward(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, Tensor]:
        """Compute the DINOv2 losses of ``batch``, back-propagate their sum, return the terms.

        ``batch``: ``global`` (PackedBatch of ``n_global_crops × B`` crops, crop-major),
        ``local`` (PackedBatch or None), ``n_global_crops``, ``n_local_crops``, ``masks``
        (bool over the global batch's real tokens, or None) — see ``collate_multicrop``.
        Returns detached scalars: ``loss`` (the back-propagated total) and its weighted terms
        ``dino_local_crops_loss``, ``dino_global_crops_loss``, ``koleo_loss``, ``ibot_loss``.
        """
        glob: PackedBatch = batch["global"]
        local: PackedBatch | None = batch.get("local")
        n_g = int(batch["n_global_crops"])
        n_l = int(batch.get("n_local_crops", 0)) if local is not None else 0
        masks = batch.get("masks")
        if masks is None:
            masks = glob.mask
        if glob.n_images % n_g:
            raise ValueError(f"global batch has {glob.n_images} crops, not a multiple of n_global_crops={n_g}")
        if local is not None and n_l and local.n_images % n_l:
            raise ValueError(f"local batch has {local.n_images} crops, not a multiple of n_local_crops={n_l}")
        do_ibot = self.do_ibot and masks is not None
        if do_ibot:
            masks = masks.to(glob.device)
        n_local_terms = max(n_l * n_g, 1)
        n_global_terms = (n_g - 1) * n_g
        n_terms = n_local_terms + n_global_terms

        with torch.no_grad():
            t_out = self.teacher["backbone"](glob)
            t_cls = self.teacher["dino_head"](t_out["cls"])
            t_dino = self._targets(t_cls, teacher_temp, "dino_center").chunk(n_g)
            if do_ibot:
                t_patch = self._ibot_head(self.teacher)(t_out["patch"][masks])
                t_ibot = self._targets(t_patch, teacher_temp, "ibot_center")

        # Global and local crops go through the student in one call: one DDP forward per
        # step, and local crops fill the padding of the global rows.
        n_glob_img, n_glob_tok = glob.n_images, glob.n_tokens
        if n_l:
            s_all = self.student["backbone"](
                concat_packed([glob, local]),
                masks=torch.cat([masks, masks.new_zeros(local.n_tokens)]) if do_ibot else None,
            )
        else:
            s_all = self.student["backbone"](glob, masks=masks if do_ibot else None)
        s_glob = {"cls": s_all["cls"][:n_glob_img], "patch": s_all["patch"][:n_glob_tok]}
        zero = s_all["cls"].new_zeros((), dtype=torch.float32)
        terms = {"dino_local_crops_loss": zero, "dino_global_crops_loss": zero, "koleo_loss": zero, "ibot_loss": zero}
        w_dino = self.dino_cfg["loss_weight"]
        if self.do_dino:
            s_cls = self.student["dino_head"](s_glob["cls"]).chunk(n_g)
            cross = [(i, j) for i in range(n_g) for j in range(n_g) if i != j]
            if cross:
                terms["dino_global_crops_loss"] = w_dino * self.dino_loss(s_cls, t_dino, pairs=cross) / n_terms
            if n_l:
                s_loc_cls = self.student["dino_head"](s_all["cls"][n_glob_img:]).chunk(n_l)
                terms["dino_local_crops_loss"] = w_dino * self.dino_loss(s_loc_cls, t_dino) / n_terms
        if self.do_koleo:
            terms["koleo_loss"] = self.dino_cfg["koleo_loss_weight"] * sum(
                self.koleo_loss(chunk) for chunk in s_glob["cls"].chunk(n_g)
            )
        if do_ibot:
            s_patch = self._ibot_head(self.student)(s_glob["patch"][masks])
            ibot = self.ibot_loss(s_patch, t_ibot, glob.image_index[masks], glob.n_images)
            terms["ibot_loss"] = self.ibot_cfg["loss_weight"] * ibot * 2.0 / n_g
        loss = sum(terms.values())
        loss.backward()
        diagnostics = self._diagnostics(t_out["cls"].chunk(n_g), torch.cat(list(t_dino)))
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}, **diagnostics}

    @torch.no_grad()
    def _diagnostics(self, teacher_cls: tuple[Tensor, ...], teacher_targets: Tensor) -> dict[str, Tensor]:
        """Collapse indicators of this step (logged with prefix ``diag_``; not back-propagated).

        *teacher_cls*: the teacher's backbone CLS tokens, one ``(B, D)`` chunk per global crop.
        ``diag_teacher_cls_cos``: mean pairwise cosine of the teacher's backbone CLS tokens
        across the images of one global crop (→ 1 when every image gets the same CLS);
        ``diag_view_cos_gap``: mean cosine between the two global crops of one image minus
        that between crops of different images (0: the views of an image are no closer than
        two images, so no view can predict the other); ``diag_view_retrieval``: share of
        images whose second global crop's nearest first-crop CLS is their own (chance 1/B; both NaN
        with one global crop);
        ``diag_target_entropy``: mean entropy of the teacher's DINO targets, in units of
        log K (1 = uniform targets that teach nothing); ``diag_target_max``: their mean
        largest probability; ``diag_center_norm``: norm of the softmax-centring EMA (0 with
        Sinkhorn-Knopp); ``diag_layerscale``: mean |γ| of the student's LayerScales (the
        effective weight of the residual branches; 1 without LayerScale).
        """
        x = torch.nn.functional.normalize(teacher_cls[0].float(), dim=-1)
        n = x.shape[0]
        off = _off_diagonal_mean(x @ x.t())
        gap = retrieval = off.new_full((), float("nan"))  # one global crop: nothing to compare
        if len(teacher_cls) > 1 and n > 1:
            y = torch.nn.functional.normalize(teacher_cls[1].float(), dim=-1)
            cross = y @ x.t()
            gap = cross.diagonal().mean() - _off_diagonal_mean(cross)
            retrieval = (cross.argmax(dim=1) == torch.arange(n, device=cross.device)).float().mean()
        p = teacher_targets.float().clamp_min(1e-12)
        entropy = -(p * p.log()).sum(dim=-1).mean() / math.log(p.shape[-1])
        # FSDP shards parameters as DTensors: the local shard's mean (averaged over ranks when logged)
        gammas = [_local(m.gamma).detach().abs().mean() for m in _unwrap(self.student["backbone"]).modules()
                  if hasattr(m, "gamma") and isinstance(m.gamma, Tensor)]
        center = getattr(self, "dino_center", None)
        one = x.new_ones((), dtype=torch.float32)
        return {
            "diag_teacher_cls_cos": off,
            "diag_view_cos_gap": gap,
            "diag_view_retrieval": retrieval,
            "diag_target_entropy": entropy,
            "diag_target_max": p.max(dim=-1).values.mean(),
            "diag_center_norm": _local(center.center).norm() if center is not None else one * 0.0,
            "diag_layerscale": torch.stack(gammas).mean() if gammas else one,
        }

    # -- teacher -----------------------------------------------------------------------------
    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA: ``teacher ← m·teacher + (1 − m)·student`` for every parameter."""
        s_params = list(self.student.parameters())
        t_params = list(self.teacher.parameters())
        if len(s_params) != len(t_params):
            raise RuntimeError("student and teacher parameter lists differ; was one of them re-wrapped?")
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)
        # BatchNorm statistics of a head with use_bn are buffers: the eval-mode teacher uses the
        # same EMA of them as of the weights.
        for t_buf, s_buf in zip(self.teacher.buffers(), self.student.buffers()):
            if t_buf.dtype.is_floating_point:
                t_buf.mul_(momentum).add_(s_buf.detach(), alpha=1.0 - momentum)

    # -- optimiser ---------------------------------------------------------------------------
    def param_groups(self, layer_decay: float = 0.9, patch_embed_lr_mult: float = 0.2) -> list[dict[str, Any]]:
        """Student parameter groups with DINOv2's layer-wise LR decay and WD exemptions.

        ``lr_mult = layer_decay^(L + 1 − layer_id)`` with layer 0 = patch/pos embeddings and
        CLS/mask/register tokens, ``i + 1`` = block ``i``, ``L + 1`` = final norm and heads;
        ``patch_embed`` additionally × ``patch_embed_lr_mult``. ``wd_mult`` is 0 for biases,
        norms, LayerScale ``gamma`` and the tokens/position table. ``is_last_layer`` marks the
        heads' prototype layers, whose LR the trainer zeroes during the freeze period.
        Groups with equal multipliers are fused; each keeps its ``param_names``.
        """
        depth = len(_unwrap(self.student["backbone"]).blocks)
        fused: dict[tuple[float, float, bool], dict[str, Any]] = defaultdict(lambda: {"params": [], "param_names": []})
        for module_name, module in self.student.items():
            for name, param in _unwrap(module).named_parameters():
                if not param.requires_grad:
                    continue
                layer_id = depth + 1
                if module_name == "backbone":
                    if name.startswith(_LAYER0):
                        layer_id = 0
                    elif name.startswith("blocks."):
                        layer_id = int(name.split(".")[1]) + 1
                lr_mult = layer_decay ** (depth + 1 - layer_id)
                if module_name == "backbone" and name.startswith("patch_embed"):
                    lr_mult *= patch_embed_lr_mult
                no_wd = name.endswith("bias") or "norm" in name or any(k in name for k in _NO_WD)
                is_last = "last_layer" in name
                group = fused[(lr_mult, 0.0 if no_wd else 1.0, is_last)]
                group["params"].append(param)
                group["param_names"].append(f"{module_name}.{name}")
        return [
            {**g, "lr_mult": lr, "wd_mult": wd, "is_last_layer": last}
            for (lr, wd, last), g in sorted(fused.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1]))
        ]

    def last_layer_parameter_names(self) -> list[str]:
        """Names of the trainable parameters frozen during ``freeze_last_layer`` (DINOv2)."""
        return [f"{m}.{n}" for m, mod in self.student.items() for n, p in _unwrap(mod).named_parameters()
                if p.requires_grad and "last_layer" in n]
