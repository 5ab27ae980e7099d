"""Two processes on CPU (gloo, launched by torchrun): DDP ranks end with identical weights;
FSDP trains sharded and resumes exactly."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from aqqua_geo.foundation import load_config, train

    store, out, strategy = sys.argv[1], sys.argv[2], sys.argv[3]
    export = train._export_backbone

    def export_and_dump(meta, cfg, out_dir, step, strategy, env):
        # every rank writes what it holds, to compare after the run
        torch.save({k: v.detach().clone() for k, v in meta.state_dict().items()}, f"{out}/rank{env.rank}.pt")
        export(meta, cfg, out_dir, step, strategy, env)

    if strategy == "ddp":  # FSDP ranks hold shards, not whole weights
        train._export_backbone = export_and_dump
    cfg = load_config("tiny", ["train.batch_size_per_gpu=4", "crops.n_local_crops=2", "train.max_steps=2",
                               "train.checkpoint_every=1", "model.drop_path_rate=0.1", "train.device=cpu",
                               f"train.distributed={strategy}", "model.num_register_tokens=1"])
    train.pretrain(cfg, store, out, progress=False, resume="--resume" in sys.argv)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, *args: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_rank_gloo_ddp_keeps_ranks_identical(uvp6_store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _torchrun(tmp_path, str(uvp6_store), str(out), "ddp")

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.allclose(rank0[key], rank1[key], atol=1e-6, rtol=0), key
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 2
    # ranks see different samples and draw different drop-path masks (per-rank RNG streams):
    # identical weights come from the gradient averaging, not from identical inputs
    assert ckpt["rng"][0]["torch"].ne(ckpt["rng"][1]["torch"]).any()
    assert (out / "backbone.pt").is_file() and (out / "log.csv").is_file()


@pytest.mark.slow
def test_two_rank_fsdp_trains_sharded_and_resumes_exactly(uvp6_store, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _torchrun(tmp_path, str(uvp6_store), str(full), "fsdp")
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "step_0000001.pt", resumed / "checkpoints" / "last.pt")
    _torchrun(tmp_path, str(uvp6_store), str(resumed), "fsdp", "--resume")

    a = torch.load(full / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 2 and a["config"]["train"]["distributed"] == "fsdp"
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:  # full (gathered) tensors, identical after the resume
        assert torch.equal(a["model"][key], b["model"][key]), key
    first = torch.load(full / "checkpoints" / "step_0000001.pt", weights_only=False)["model"]
    assert not torch.equal(first["student.backbone.patch_embed.proj.weight"],
                           a["model"]["student.backbone.patch_embed.proj.weight"])  # step 2 trained
    backbone = torch.load(full / "backbone.pt", weights_only=True)
    assert torch.equal(backbone["state_dict"]["blocks.0.attn.qkv.weight"],
                       a["model"]["teacher.backbone.blocks.0.attn.qkv.weight"])
