"""torchrun process groups, data-parallel gradient averaging and FSDP sharding.

Launch with ``torchrun`` (one process per GPU; ``srun`` + ``--rdzv_backend c10d`` across
nodes, see ``foundation/slurm/pretrain.sbatch``): the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
variables it sets select NCCL on GPUs and gloo on CPUs. Without them training runs in one
process.

Two strategies (``train.distributed``):

``ddp``
    Every rank holds the whole model; parameters are broadcast from rank 0 once and the
    gradients are averaged after each backward with bucketed all-reduces (what
    ``DistributedDataParallel`` does). The reduction is explicit rather than through the
    ``DistributedDataParallel`` wrapper because ``SSLMetaArch.forward_backward`` calls the
    student backbone twice (global and local crops) and runs ``backward`` itself, which
    the wrapper's one-forward-per-backward reducer does not allow.
``fsdp``
    ``torch.distributed.fsdp.fully_shard`` (FSDP2) on every transformer block, head and
    backbone of student and teacher (same sharding, so the EMA update is shard-local):
    parameters, gradients and AdamW state are sharded across ranks (ViT-L and larger).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda``/``cpu`` as asked."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    if preference not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {preference!r}")
    return torch.device(preference)


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Join the torchrun process group (if launched by torchrun) and pick this rank's device."""
    device = resolve_device(device_preference)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank *src*'s parameters and buffers to every rank (identical start)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average ``.grad`` over ranks in ~25 MB flat buckets (DDP's reduction, after backward).

    Parameters without a gradient are skipped: every rank runs the same code path
    (``forward_backward`` branches on the config, never on the data), so the set is the same.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    bucket: list[torch.Tensor] = []
    size = 0
    for p in (p for p in params if p.grad is not None):
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= _BUCKET_BYTES:
            _reduce_bucket(bucket, world)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, world)


def _reduce_bucket(grads: list[torch.Tensor], world: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def apply_fsdp(meta: nn.Module, mixed_precision: bool) -> None:
    """Shard student and teacher with FSDP2, block by block (bf16 compute if asked)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Reshard after every forward, roots included (FSDP2 keeps roots unsharded by default):
    # the EMA update and AdamW then see sharded DTensors only.
    kwargs = {"reshard_after_forward": True}
    if mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    empty = [name for name, p in meta.named_parameters() if p.numel() == 0]
    if empty:  # FSDP2 cannot shard them, and leaving them out breaks the foreach EMA/AdamW kernels
        raise ValueError(
            f"train.distributed=fsdp cannot shard zero-size parameters {empty[:2]}; "
            "set model.num_register_tokens >= 1 (DINOv2-reg uses 4)"
        )
    for tower in (meta.student, meta.teacher):
        for block in tower["backbone"].blocks:
            fully_shard(block, **kwargs)
        for module in tower.values():
            fully_shard(module, **kwargs)
