"""DINOv2-style SSL pretraining on an AqQua store: :func:`pretrain`.

One step: schedules at the global step → AdamW hyper-parameters (layer-wise LR decay and
WD exemptions from ``SSLMetaArch.param_groups``, last layer frozen early) →
``forward_backward`` under bf16 autocast on GPU (fp32 on CPU) → gradient averaging over
ranks (DDP) → global-norm clipping → AdamW step → EMA teacher update. Every schedule is a
function of the step alone and every random draw comes from a checkpointed generator or a
per-sample seed, so a resumed run continues exactly.

Outputs in ``OUT/``: ``config.yaml`` (resolved config), ``log.csv`` (a row every
``train.log_every`` steps: schedules, loss terms, images/s, tokens/s, packing efficiency),
``loss_curve.png``, ``tensorboard/`` (only if ``tensorboard`` is installed),
``checkpoints/last.pt`` + ``checkpoints/step_<n>.pt`` and ``backbone.pt`` (the EMA teacher's
backbone, for ``load_backbone`` / ``embed_images``).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from aqqua_geo.foundation import checkpoint as ckpt
from aqqua_geo.foundation.collate import collate_multicrop
from aqqua_geo.foundation.config import dump_config
from aqqua_geo.foundation.data import MultiCropDataset
from aqqua_geo.foundation.distributed import (
    DistEnv,
    apply_fsdp,
    average_gradients,
    broadcast_module,
    init_distributed,
    shutdown,
)
from aqqua_geo.foundation.sampler import BalancedSampler, curation_probabilities, load_embeddings
from aqqua_geo.foundation.schedules import build_schedules

log = logging.getLogger(__name__)



def pretrain(
    cfg: dict, store_dir: str | Path, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> Path:
    """Pretrain a plankton ViT with DINOv2 losses on the store at *store_dir*.

    Args:
        cfg: a config from :func:`~aqqua_geo.foundation.config.load_config`.
        store_dir: an AqQua store.
        out_dir: run folder (see the module docstring for what is written there).
        resume: continue from ``OUT/checkpoints/last.pt`` (exactly where it stopped).
            ``train.max_steps=0`` writes the initial backbone (random init, or ``model.init``)
            and returns: the control every pretraining result is compared with.
            Without it, an *out_dir* that already holds a checkpoint is refused.
        progress: show a tqdm bar (rank 0) with the loss terms and throughput.

    Returns:
        *out_dir* as a Path; the backbone is ``out_dir / "backbone.pt"``.
    """
    from aqqua_geo.foundation.ssl_meta_arch import SSLMetaArch
    from aqqua_geo.store import AqquaStore

    init_state = None
    if cfg["model"].get("init"):  # warm start: the architecture comes from the checkpoint
        from aqqua_geo.foundation.pretrained import warm_start

        model_cfg, init_state = warm_start(cfg["model"])
        cfg = {**cfg, "model": {**model_cfg, "init": str(cfg["model"]["init"])}}
    check_config(cfg)
    out = Path(out_dir)
    last = out / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run ({last}); resume it or choose another output folder")
    train_cfg = cfg["train"]
    joined_here = not (dist.is_available() and dist.is_initialized())  # leave a caller's group alone
    env = init_distributed(train_cfg["device"])
    seed = int(train_cfg["seed"])
    try:
        _seed_all(seed)  # same initial weights on every rank (and broadcast below anyway)
        meta = SSLMetaArch(cfg)
        if init_state is not None:
            for model in (meta.student, meta.teacher):
                model["backbone"].load_state_dict(init_state)
        meta = meta.to(env.device)
        meta.train()
        if int(train_cfg["max_steps"]) == 0:  # the initial backbone only: the random-init control
            if env.is_main:
                out.mkdir(parents=True, exist_ok=True)
                dump_config(cfg, out / "config.yaml")
            _export_backbone(meta, cfg, out, 0, "ddp", env)
            return out
        strategy = train_cfg["distributed"]
        if strategy not in ("ddp", "fsdp"):
            raise ValueError(f"train.distributed must be ddp or fsdp, got {strategy!r}")
        autocast_dtype = _autocast_dtype(train_cfg["precision"], env.device)
        if env.distributed and strategy == "fsdp":
            apply_fsdp(meta, mixed_precision=autocast_dtype is not None)
        elif env.distributed:
            broadcast_module(meta)
        optim_cfg = cfg["optim"]
        groups = meta.param_groups(float(optim_cfg["layerwise_decay"]), float(optim_cfg["patch_embed_lr_mult"]))
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=tuple(optim_cfg["betas"]))
        schedules = build_schedules(cfg, env.world_size)

        store = AqquaStore(store_dir)
        sampler = _build_sampler(cfg, store, env)
        batch_size = int(train_cfg["batch_size_per_gpu"])
        steps_per_epoch = sampler.per_rank // batch_size
        if steps_per_epoch == 0:
            raise ValueError(
                f"{store_dir}: {len(store)} objects give {sampler.per_rank} samples per rank per epoch, "
                f"fewer than train.batch_size_per_gpu={batch_size}"
            )
        loader = torch.utils.data.DataLoader(
            MultiCropDataset(store.torch_dataset(), cfg),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=functools.partial(collate_multicrop, cfg=cfg),
            num_workers=int(train_cfg["num_workers"]),
            drop_last=True,
            pin_memory=env.device.type == "cuda",
            # A private generator: creating an epoch's iterator must not advance torch's RNG.
            generator=torch.Generator().manual_seed(seed),
        )

        step = 0
        if resume and last.exists():
            state = ckpt.load_checkpoint(last)
            _check_resumable(state, cfg, env)
            _load_state(meta, optimizer, state, strategy, env)
            sampler.load_state_dict(state["sampler"])  # checks seed / epoch length / world size
            step = int(state["step"])
            ckpt.set_rng_state(state["rng"][env.rank])
            log.info("resumed %s at step %d", last, step)
        else:
            _seed_all(seed + env.rank)  # per-rank streams (drop-path) from here on
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, out / "config.yaml")
        logger = _RunLog(out / "log.csv", resume_step=step) if env.is_main else None
        tensorboard = _tensorboard(out / "tensorboard") if env.is_main else None

        max_steps, log_every = int(train_cfg["max_steps"]), int(train_cfg["log_every"])
        clip = float(optim_cfg["clip_grad"]) if optim_cfg["clip_grad"] else math.inf
        deadline = _deadline(train_cfg["max_minutes"])
        bar = _progress_bar(progress and env.is_main, step, max_steps)
        stop = step >= max_steps
        while not stop:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, offset * batch_size)
            meter = _Throughput(env.world_size)
            for batch in loader:
                values = schedules.at(step)
                _set_hyperparameters(optimizer, values)
                batch = _batch_to(batch, env.device)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(env.device, autocast_dtype):
                    losses = meta.forward_backward(batch, teacher_temp=values["teacher_temp"])
                if not torch.isfinite(losses["loss"]):
                    raise FloatingPointError(
                        f"loss is {losses['loss'].item()} at step {step + 1}; lower optim.base_lr?"
                    )
                if env.distributed and strategy == "ddp":
                    average_gradients(params)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
                meta.update_teacher(values["momentum"])
                step += 1
                meter.add(batch)

                stop = step >= max_steps or _agree(deadline is not None and time.monotonic() > deadline, env)
                if step % log_every == 0 or stop:
                    terms = _mean_over_ranks(losses, env)
                    row = {"step": step, "epoch": epoch, **values, **terms, **meter.read(),
                           "grad_norm": float(grad_norm)}
                    if logger is not None:
                        logger.write(row)
                    if tensorboard is not None:
                        for key, value in row.items():
                            tensorboard.add_scalar(key, value, step)
                    if bar is not None:
                        shown = {k.removesuffix("_loss"): f"{v:.3f}" for k, v in terms.items()
                                 if not k.startswith("diag_")}
                        bar.set_postfix(shown | {"img/s": f"{row['images_per_s']:.0f}"})
                if bar is not None:
                    bar.update(1)
                if stop or step % int(train_cfg["checkpoint_every"]) == 0:
                    next_epoch, next_batch = divmod(step, steps_per_epoch)
                    sampler_state = {**sampler.state_dict(), "epoch": next_epoch, "start": next_batch * batch_size}
                    _save(out, step, meta, optimizer, sampler_state, cfg, strategy, env)
                if stop:
                    break
        if bar is not None:
            bar.close()
        if tensorboard is not None:
            tensorboard.close()
        _export_backbone(meta, cfg, out, step, strategy, env)
        if env.is_main:
            plot_log(out / "log.csv", out / "loss_curve.png")
        return out
    finally:
        if joined_here:
            shutdown()


# -- configuration ----------------------------------------------------------------------------
def check_config(cfg: dict) -> None:
    """Reject configs whose token budgets contradict each other (one-line messages)."""
    model, crops, train = cfg["model"], cfg["crops"], cfg["train"]
    prefix = 1 + int(model["num_register_tokens"])
    if int(crops["global_max_tokens"]) > int(model["max_tokens_per_image"]):
        raise ValueError(
            f"crops.global_max_tokens={crops['global_max_tokens']} exceeds model.max_tokens_per_image="
            f"{model['max_tokens_per_image']}: the model would resize crops behind the masks' back"
        )
    if int(model["max_tokens_per_image"]) + prefix > int(train["max_tokens_per_row"]):
        raise ValueError(
            f"train.max_tokens_per_row={train['max_tokens_per_row']} cannot hold one image of "
            f"model.max_tokens_per_image={model['max_tokens_per_image']} + {prefix} prefix tokens"
        )
    if int(crops["n_global_crops"]) < 1:
        raise ValueError(f"crops.n_global_crops must be >= 1, got {crops['n_global_crops']}")
    if int(train["max_steps"]) < 0:
        raise ValueError(f"train.max_steps must be >= 0 (0: write the initial backbone), got {train['max_steps']}")


def _build_sampler(cfg: dict, store, env: DistEnv) -> BalancedSampler:
    curation = cfg["curation"]
    embeddings = None
    if curation["embeddings"]:
        embeddings = load_embeddings(curation["embeddings"], store.object_ids)
    elif curation["backbone"]:
        embeddings = _embed_store(curation["backbone"], store, env.device)
    probabilities = curation_probabilities(store.metadata, curation, int(cfg["train"]["seed"]), embeddings)
    return BalancedSampler(probabilities, curation["samples_per_epoch"], int(cfg["train"]["seed"]),
                           env.rank, env.world_size)


def _embed_store(backbone_path: str, store, device: torch.device) -> np.ndarray:
    """Embeddings of every store image with a previous backbone (DINOv2-style curation)."""
    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.embed import embed_images

    model = load_backbone(backbone_path, device=device)
    chunks = []
    for meta_df, images in store.iter_chunks(chunk_size=1024):
        chunks.append(embed_images(model, images, meta_df["pixel_size_um"].tolist(), device=device))
    return np.concatenate(chunks)


def _check_resumable(state: dict, cfg: dict, env: DistEnv) -> None:
    if state["world_size"] != env.world_size:
        raise ValueError(
            f"checkpoint was written by {state['world_size']} ranks, this run has {env.world_size}: "
            "an exact resume needs the same world size"
        )
    for section in ("model", "dino", "ibot"):
        if state["config"][section] != cfg[section]:
            raise ValueError(f"config section {section!r} differs from the checkpoint's; cannot resume")


# -- one step ---------------------------------------------------------------------------------
def _set_hyperparameters(optimizer: torch.optim.Optimizer, values: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        lr = values["last_layer_lr"] if group.get("is_last_layer") else values["lr"]
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = values["wd"] * group.get("wd_mult", 1.0)


def _batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    moved = dict(batch)
    moved["global"] = batch["global"].to(device, non_blocking=True)
    moved["local"] = None if batch["local"] is None else batch["local"].to(device, non_blocking=True)
    moved["masks"] = moved["global"].mask
    return moved


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise ValueError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _mean_over_ranks(losses: dict[str, torch.Tensor], env: DistEnv) -> dict[str, float]:
    names = sorted(losses)
    values = torch.stack([losses[k].float() for k in names])
    if env.distributed:
        dist.all_reduce(values)
        values /= env.world_size
    return dict(zip(names, values.tolist()))


class _Throughput:
    """Images and real tokens per second since the last :meth:`read` (all ranks)."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._reset()

    def _reset(self) -> None:
        self.start, self.images, self.tokens = time.perf_counter(), 0, 0
        self.efficiency: list[float] = []
        self.padded: list[float] = []

    def add(self, batch: dict[str, Any]) -> None:
        glob, local = batch["global"], batch["local"]
        self.images += batch["batch_size"]
        self.tokens += glob.n_tokens + (local.n_tokens if local is not None else 0)
        self.efficiency.append(glob.efficiency)
        self.padded.append(glob.padded_efficiency)

    def read(self) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        out = {
            "images_per_s": self.images * self.world_size / seconds,
            "tokens_per_s": self.tokens * self.world_size / seconds,
            "packing_efficiency": float(np.mean(self.efficiency)),
            "padded_efficiency": float(np.mean(self.padded)),
        }
        self._reset()
        return out


def _agree(flag: bool, env: DistEnv) -> bool:
    """True on every rank if any rank says so (e.g. rank clocks disagree on the deadline)."""
    if not env.distributed:
        return flag
    t = torch.tensor([float(flag)], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _deadline(max_minutes: float | None) -> float | None:
    return None if max_minutes is None else time.monotonic() + 60.0 * float(max_minutes)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- state ------------------------------------------------------------------------------------
def _model_state(meta, strategy: str, env: DistEnv) -> dict:
    """Full (unsharded) model state dict; under FSDP gathered to CPU on every rank."""
    if env.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(meta, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return meta.state_dict()


def _optimizer_state(meta, optimizer, strategy: str, env: DistEnv) -> dict:
    if env.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(meta, optimizer, options=options)
    return optimizer.state_dict()


def _load_state(meta, optimizer, state: dict, strategy: str, env: DistEnv) -> None:
    if env.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(meta, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        return
    meta.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])


def _save(out: Path, step: int, meta, optimizer, sampler_state: dict, cfg, strategy: str, env: DistEnv) -> None:
    model_state = _model_state(meta, strategy, env)
    optim_state = _optimizer_state(meta, optimizer, strategy, env)
    rng = [ckpt.rng_state()]
    if env.distributed:
        rng = [None] * env.world_size
        dist.all_gather_object(rng, ckpt.rng_state())
    if env.is_main:
        payload = {"step": step, "model": model_state, "optimizer": optim_state, "sampler": sampler_state,
                   "rng": rng, "config": cfg, "world_size": env.world_size}
        directory = out / "checkpoints"
        ckpt.save_checkpoint(directory / f"step_{step:07d}.pt", payload)
        ckpt.save_checkpoint(directory / "last.pt", payload)
        ckpt.prune_step_checkpoints(directory, int(cfg["train"]["keep_checkpoints"]))
    if env.distributed:
        dist.barrier()


def _export_backbone(meta, cfg: dict, out: Path, step: int, strategy: str, env: DistEnv) -> None:
    """Save the EMA teacher's backbone (a plain, unsharded PlanktonViT) as ``backbone.pt``."""
    from aqqua_geo.foundation.backbone_io import save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    model_state = _model_state(meta, strategy, env)
    if not env.is_main:
        return
    prefix = "teacher.backbone."
    backbone = build_backbone(cfg["model"])
    backbone.load_state_dict({k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)})
    save_backbone(backbone, out / "backbone.pt", extra={"step": step, "pretrain_config": cfg})


# -- logging ----------------------------------------------------------------------------------
class _RunLog:
    """``log.csv`` writer; on resume, rows after the checkpoint's step are dropped first."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists() and resume_step > 0:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.fields = list(reader.fieldnames or [])
                rows = [r for r in reader if int(r["step"]) <= resume_step]
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)
        elif path.exists():
            path.unlink()

    def write(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with self.path.open("w", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.fields).writeheader()
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore").writerow(row)


def _tensorboard(log_dir: Path):
    """A TensorBoard writer when ``tensorboard`` is installed (optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _progress_bar(enabled: bool, initial: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="pretrain", unit="step", dynamic_ncols=True)


def plot_log(log_csv: str | Path, png: str | Path) -> Path:
    """Loss terms (top) and the LR / teacher-temperature schedules (bottom) of a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(log_csv)
    fig, (ax_loss, ax_sched) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    for col in [c for c in df.columns if c.endswith("loss")]:
        if df[col].abs().sum() > 0:
            ax_loss.plot(df["step"], df[col], label=col, lw=2 if col == "loss" else 1)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_loss.set_title(f"SSL pretraining: {Path(log_csv).parent.name}")
    ax_sched.plot(df["step"], df["lr"], color="C0", label="lr")
    ax_sched.set_ylabel("lr")
    ax_temp = ax_sched.twinx()
    ax_temp.plot(df["step"], df["teacher_temp"], color="C3", label="teacher temp")
    ax_temp.set_ylabel("teacher temp")
    ax_sched.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)
