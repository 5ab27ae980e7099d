"""pretrain end to end on a tiny real UVP6 store: outputs, finite losses, usable backbone,
collate batch format."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from aqqua_geo.foundation import load_backbone, pretrain
from aqqua_geo.foundation.train import check_config


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_collate_builds_the_interface_batch(uvp6_store, tiny_cfg):
    from aqqua_geo.foundation.collate import collate_multicrop
    from aqqua_geo.foundation.data import MultiCropDataset
    from aqqua_geo.store import AqquaStore

    cfg = tiny_cfg()
    ds = MultiCropDataset(AqquaStore(uvp6_store).torch_dataset(), cfg)
    samples = [ds[(i, 0, i)] for i in range(6)]
    batch = collate_multicrop(samples, cfg)
    assert batch["batch_size"] == 6 and batch["n_global_crops"] == 2 and batch["n_local_crops"] == 2
    glob = batch["global"]
    assert glob.n_images == 12 and batch["local"].n_images == 12
    assert batch["masks"].dtype == torch.bool and batch["masks"].shape == (glob.n_tokens,)
    # crop-major: image k of the global batch is crop k // B of sample k % B
    sizes = [tuple(s["global_crops"][c].image.shape[1:]) for c in range(2) for s in samples]
    assert [tuple(int(v) * 8 for v in hw) for hw in glob.grid_hw] == sizes
    # masks are per crop: some crops fully unmasked, masked ones within the ratio range
    per_image = torch.zeros(glob.n_images).index_add_(0, glob.image_index, batch["masks"].float())
    ratios = per_image / glob.tokens_per_image
    assert (ratios == 0).sum() == 6 and ratios.max() <= 0.55
    again = collate_multicrop([ds[(i, 0, i)] for i in range(6)], cfg)
    assert torch.equal(again["masks"], batch["masks"])  # reproducible from the sample keys


def test_pretrain_writes_every_output(uvp6_store, tiny_cfg, tmp_path):
    cfg = tiny_cfg("optim.warmup_fraction=0.5")
    out = pretrain(cfg, uvp6_store, tmp_path / "run", progress=False)
    for name in ("config.yaml", "log.csv", "loss_curve.png", "backbone.pt", "checkpoints/last.pt",
                 "checkpoints/step_0000002.pt", "checkpoints/step_0000004.pt"):
        assert (out / name).is_file(), name
    with (out / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for col in ("lr", "wd", "momentum", "teacher_temp", "loss", "dino_local_crops_loss", "ibot_loss",
                "koleo_loss", "images_per_s", "tokens_per_s", "packing_efficiency"):
        assert all(np.isfinite(float(r[col])) for r in rows), col
    assert float(rows[0]["lr"]) == 0.0 and float(rows[-1]["teacher_temp"]) == pytest.approx(0.07)
    assert all(0.5 < float(r["packing_efficiency"]) <= 1.0 for r in rows)

    model = load_backbone(out / "backbone.pt")
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.store import AqquaStore

    store = AqquaStore(uvp6_store)
    emb = embed_images(model, [store[i] for i in range(5)], [73.0] * 5)
    assert emb.shape == (5, 64) and np.isfinite(emb).all()
    # the exported backbone is the EMA teacher at the last step
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert torch.equal(state["teacher.backbone.blocks.0.attn.qkv.weight"], model.blocks[0].attn.qkv.weight)

    with pytest.raises(FileExistsError, match="already holds a run"):
        pretrain(cfg, uvp6_store, out, progress=False)


def test_max_minutes_bounds_the_run(uvp6_store, tiny_cfg, tmp_path):
    out = pretrain(tiny_cfg("train.max_minutes=0", "train.max_steps=50"), uvp6_store, tmp_path / "run",
                   progress=False)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 1 and (out / "backbone.pt").is_file()  # stopped after one step, saved
    with (out / "log.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1]  # the stopping step is logged


def test_log_every(uvp6_store, tiny_cfg, tmp_path):
    out = pretrain(tiny_cfg("train.log_every=3", "train.max_steps=4"), uvp6_store, tmp_path / "run",
                   progress=False)
    with (out / "log.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [3, 4]


def test_inconsistent_token_budgets_are_refused(tiny_cfg):
    with pytest.raises(ValueError, match="crops.global_max_tokens=100 exceeds model.max_tokens_per_image=64"):
        check_config(tiny_cfg("crops.global_max_tokens=100"))
    with pytest.raises(ValueError, match="train.max_tokens_per_row=32 cannot hold one image"):
        check_config(tiny_cfg("train.max_tokens_per_row=32"))


def test_dataset_errors_name_the_object(uvp6_store, tiny_cfg):
    from aqqua_geo.foundation.data import MultiCropDataset
    from aqqua_geo.store import AqquaStore

    base = AqquaStore(uvp6_store).torch_dataset()
    base.pixel_sizes_um = [0.0] * len(base)
    with pytest.raises(ValueError, match=r"object 'Acantharea__1111/\d+' \(row 0\): pixel_size_um"):
        MultiCropDataset(base, tiny_cfg())[(0, 0, 0)]


def test_balance_rows_avoids_a_mostly_empty_last_row():
    from aqqua_geo.foundation.collate import balance_rows
    from aqqua_geo.foundation.packing import pack_images

    # 20 crops of 4×4 patches (+ CLS = 17 tokens) = 340 tokens for rows of at most 256
    images = [torch.zeros(1, 32, 32)] * 20
    packed = pack_images(images, [10.0] * 20, patch_size=8, max_tokens_per_row=256)
    assert packed.efficiency == pytest.approx(340 / 510)  # FFD alone: rows of 255 and 85
    balanced = balance_rows(packed, n_prefix=1)
    assert balanced.layout(1).n_rows == packed.layout(1).n_rows
    assert balanced.efficiency == 1.0 and balanced.layout(1).row_length == 170
    assert torch.equal(balanced.patches, packed.patches)  # same tokens, only the rows change


def test_cli_pretrain_and_bad_override(uvp6_store, tmp_path):
    from typer.testing import CliRunner

    from aqqua_geo.cli import app

    runner = CliRunner()
    args = ["pretrain", "--config", "tiny", "--store", str(uvp6_store), "--out", str(tmp_path / "run"),
            "--override", "train.max_steps=2", "--override", "train.batch_size_per_gpu=8", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "backbone.pt").is_file()
    bad = runner.invoke(app, [*args[:7], "--override", "train.max_stepz=2"])
    assert bad.exit_code == 2 and "did you mean 'max_steps'" in bad.output
    not_a_store = runner.invoke(app, ["pretrain", "--config", "tiny", "--store", str(tmp_path), "--out",
                                      str(tmp_path / "x")])
    assert not_a_store.exit_code == 2 and "not an AqQua store" in not_a_store.output


def test_second_round_curation_from_a_previous_backbone_or_embeddings(uvp6_store, tiny_cfg, tmp_path):
    from aqqua_geo.foundation.backbone_io import save_backbone
    from aqqua_geo.foundation.distributed import DistEnv
    from aqqua_geo.foundation.train import _build_sampler
    from aqqua_geo.foundation.vit import build_backbone
    from aqqua_geo.store import AqquaStore

    store, env = AqquaStore(uvp6_store), DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    cold = _build_sampler(tiny_cfg(), store, env).probabilities  # size classes from metadata
    previous = save_backbone(build_backbone(tiny_cfg()["model"]), tmp_path / "previous.pt")
    warm = _build_sampler(tiny_cfg(f"curation.backbone={previous}", "curation.n_clusters=[16, 4]"), store, env)
    assert warm.probabilities.shape == (len(store),) and not np.allclose(warm.probabilities, cold)
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(len(store) - 1, 8)))
    with pytest.raises(ValueError, match=r"emb.npy: 629 rows but the store has 630 objects"):
        _build_sampler(tiny_cfg(f"curation.embeddings={tmp_path / 'emb.npy'}"), store, env)
