"""Balanced sampler: instrument and cluster balancing, DDP sharding, determinism, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aqqua_geo.foundation.sampler import (
    BalancedSampler,
    balanced_probabilities,
    curation_probabilities,
    effective_num_groups,
    kmeans_levels,
    size_classes,
)


def _frequencies(sampler: BalancedSampler, labels: np.ndarray) -> pd.Series:
    drawn = [labels[i] for i, _, _ in sampler]
    return pd.Series(drawn).value_counts(normalize=True)


def _two_instrument_metadata(n=2000, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    instrument = np.where(np.arange(n) < int(0.9 * n), "UVP6", "IFCB")  # 90 % / 10 %
    return pd.DataFrame({
        "instrument": instrument,
        "height": rng.integers(20, 300, n), "width": rng.integers(20, 300, n),
        "pixel_size_um": np.where(instrument == "UVP6", 73.0, 0.29),
    })


def test_instruments_get_balanced():
    md = _two_instrument_metadata()
    curation = {"weights": {"instrument": 1.0, "cluster": 0.0}, "size_bins": 4, "n_clusters": [8]}
    sampler = BalancedSampler(curation_probabilities(md, curation), num_samples=20_000, seed=0)
    freq = _frequencies(sampler, md["instrument"].to_numpy())
    assert freq["IFCB"] == pytest.approx(0.5, abs=0.02)  # natural frequency 0.1
    natural = curation_probabilities(md, {**curation, "weights": {"instrument": 0.0, "cluster": 0.0}})
    assert pd.Series(natural).groupby(md["instrument"]).sum()["IFCB"] == pytest.approx(0.1)


def test_partial_weight_interpolates():
    md = _two_instrument_metadata()
    p = curation_probabilities(md, {"weights": {"instrument": 0.5, "cluster": 0.0}, "size_bins": 1, "n_clusters": [2]})
    share = pd.Series(p).groupby(md["instrument"]).sum()
    assert share["IFCB"] == pytest.approx(np.sqrt(0.1) / (np.sqrt(0.1) + np.sqrt(0.9)))


def test_cold_start_size_classes_are_balanced_within_each_instrument():
    md = _two_instrument_metadata()
    classes = size_classes(md, n_bins=4)
    for inst in ("UVP6", "IFCB"):
        counts = np.bincount(classes[md["instrument"].to_numpy() == inst])
        assert len(counts) == 4 and counts.min() >= 0.2 * counts.sum()  # quantile bins
    p = curation_probabilities(md, {"weights": {"instrument": 1.0, "cluster": 1.0}, "size_bins": 4, "n_clusters": [8]})
    groups = md["instrument"] + "/" + pd.Series(classes).astype(str)
    assert effective_num_groups(p, groups.to_numpy()) == pytest.approx(8.0, rel=1e-6)


def test_kmeans_balancing_evens_out_real_classes(uvp6_store):
    """Embeddings that separate the bundled UVP6 classes → sampled classes become even."""
    from aqqua_geo.store import AqquaStore

    md = AqquaStore(uvp6_store).metadata
    # a more unbalanced pool: detritus 4× over-represented (600 vs 60-120 per class)
    md = pd.concat([md] + [md[md["label"] == "detritus"]] * 3, ignore_index=True)
    labels = md["label"].to_numpy()
    codes = pd.factorize(labels, sort=True)[0]
    rng = np.random.default_rng(0)
    embeddings = np.eye(codes.max() + 1)[codes] * 5 + rng.normal(0, 0.3, (len(codes), codes.max() + 1))
    curation = {"weights": {"instrument": 1.0, "cluster": 1.0}, "size_bins": 4, "n_clusters": [8]}
    sampler = BalancedSampler(curation_probabilities(md, curation, embeddings=embeddings), num_samples=16_000)
    freq = _frequencies(sampler, labels)
    natural = pd.Series(labels).value_counts(normalize=True)
    assert natural.max() / natural.min() == pytest.approx(10.0)
    assert freq.max() / freq.min() < 1.25  # every class ~1/8


def test_hierarchical_kmeans_levels_nest():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.05, (50, 3)) for c in np.eye(3) * 3])
    coarse, fine = kmeans_levels(x, [6, 3], seed=0)
    assert len(np.unique(fine)) == 6 and len(np.unique(coarse)) == 3
    for f in np.unique(fine):  # a fine cluster lies inside one coarse cluster
        assert len(np.unique(coarse[fine == f])) == 1


def test_ranks_partition_an_epoch_and_epochs_differ():
    p = np.full(100, 0.01)
    full = BalancedSampler(p, num_samples=60, seed=3).epoch_indices(0)
    shards = [list(BalancedSampler(p, num_samples=60, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert sorted(pos for s in shards for _, _, pos in s) == list(range(60))
    for s in shards:
        assert all(full[pos] == i for i, _, pos in s)
    again = BalancedSampler(p, num_samples=60, seed=3)
    assert np.array_equal(again.epoch_indices(0), full)  # deterministic in (seed, epoch)
    assert not np.array_equal(again.epoch_indices(1), full)


def test_state_dict_resumes_mid_epoch():
    p = np.linspace(1, 2, 50)
    a = BalancedSampler(p, seed=5, rank=1, world_size=2)
    a.set_epoch(2)
    stream = list(a)
    a.set_epoch(2, start=10)
    b = BalancedSampler(p, seed=5, rank=1, world_size=2)
    b.load_state_dict(a.state_dict())
    assert list(b) == stream[10:] and len(b) == len(stream) - 10
    with pytest.raises(ValueError, match="checkpoint has seed=5, this run 6"):
        BalancedSampler(p, seed=6, rank=1, world_size=2).load_state_dict(a.state_dict())


def test_bad_inputs():
    with pytest.raises(ValueError, match="non-negative 1-D"):
        BalancedSampler(np.array([-1.0, 2.0]))
    with pytest.raises(ValueError, match="curation weights must lie in"):
        balanced_probabilities([np.zeros(3, int)], [1.5])
    md = _two_instrument_metadata(10)
    with pytest.raises(ValueError, match=r"curation.weights: unknown keys \['taxon'\]"):
        curation_probabilities(md, {"weights": {"taxon": 1.0}, "size_bins": 2, "n_clusters": [2]})
