"""stts.data.loader: skip accounting across worker processes, failing past the fraction, seeding, DDP."""

import logging

import pytest
import torch

pytest.importorskip("av")

from _data_helpers import make_kinetics_dataset

from stts.data import BadDataError, DataConfig, DistributedEvalSampler, build_dataset, build_loader, collate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("k")
    csv, entries = make_kinetics_dataset(root, num_good=6, num_frames=48, size=96, bad=("missing", "garbage"))
    return str(root), csv, entries


def cfg_for(data, **kw):
    root, csv, _ = data
    base = dict(root=root, train_annotations=csv, val_annotations=csv, num_frames=4, sampling_rate=2,
                crop_size=32, test_short_side=32, num_temporal_views=2, num_workers=2, max_skip_fraction=0.5)
    return DataConfig(**{**base, **kw})


def test_collate_drops_bad_eval_items_and_gathers_reasons():
    good = {"video": torch.zeros(3, 2, 4, 4), "label": 1, "index": 0, "view": 0, "bad": []}
    bad = {"index": 1, "view": 0, "bad": ["x.mp4: missing file"]}
    batch = collate([good, bad, dict(good, index=2)])
    assert batch["video"].shape == (2, 3, 2, 4, 4) and batch["index"].tolist() == [0, 2]
    assert batch["bad"] == ["x.mp4: missing file"] and batch["num_bad"] == 1
    assert collate([bad]) == {"bad": ["x.mp4: missing file"], "num_bad": 1}


def test_eval_skips_and_main_process_counts_with_workers(data):
    _, _, entries = data
    cfg = cfg_for(data, num_workers=2)
    ds = build_dataset(cfg, "test")
    loader = build_loader(ds, cfg, batch_size=3, train=False)
    seen = []
    for batch in loader:
        seen += list(zip(batch["index"].tolist(), batch["view"].tolist()))
        assert batch["video"].shape[1:] == (3, 4, 32, 32)
    good = [i for i, e in enumerate(entries) if e[2] == "good"]
    assert sorted(seen) == [(i, v) for i in good for v in range(2)]  # every good view once, no bad one
    assert loader.skips.seen == len(ds) == 16 and loader.skips.bad == 4  # 2 bad videos x 2 views
    assert any("missing file" in r for r in loader.skips.last) and any("cannot open" in r for r in loader.skips.last)


def test_too_many_bad_samples_fail_loudly_with_count_fraction_reasons(data):
    cfg = cfg_for(data, num_workers=2, max_skip_fraction=0.2, skip_check_after=1000)
    loader = build_loader(build_dataset(cfg, "test"), cfg, batch_size=4, train=False)
    with pytest.raises(BadDataError, match=r"4 of 16 samples seen \(25.0%\).*max_skip_fraction=0.2.*bad0.mp4: missing file"):
        for _ in loader:
            pass


def test_fraction_checked_early_once_enough_samples_seen(data):
    # skip_check_after=1: the first batch with a bad sample already exceeds 0.01
    cfg = cfg_for(data, num_workers=0, max_skip_fraction=0.01, skip_check_after=1)
    ds = build_dataset(cfg, "test")
    loader = build_loader(ds, cfg, batch_size=2, train=False)  # bad videos 6, 7 are items 12..15
    with pytest.raises(BadDataError):
        for _ in loader:
            pass
    assert loader.skips.seen == 14 < len(ds)  # failed at the first bad batch, before the end


def test_train_replaces_bad_samples_and_counts_them_with_workers(data, caplog):
    _, _, entries = data
    cfg = cfg_for(data, num_workers=2)
    ds = build_dataset(cfg, "train")
    loader = build_loader(ds, cfg, batch_size=4, train=True, seed=0)
    indices, bad = [], 0
    for batch in loader:
        assert batch["video"].shape == (4, 3, 4, 32, 32)
        assert [entries[i][1] for i in batch["index"].tolist()] == batch["label"].tolist()
        assert all(entries[i][2] == "good" for i in batch["index"].tolist())
        indices += batch["index"].tolist()
        bad += batch["num_bad"]
    assert len(indices) == 8  # drop_last: 8 items -> 2 batches of 4
    # oracle: the same items built in this process (items depend only on seed, epoch, index)
    ds.set_epoch(0)
    order = list(loader.sampler)
    expected_bad = sum(len(ds[i]["bad"]) for i in order[:8])
    assert bad == loader.skips.bad == expected_bad >= 2  # both bad videos are in the epoch
    assert loader.skips.seen == 8 + expected_bad


def test_same_seed_same_batches_any_workers(data):
    cfg = cfg_for(data)  # full training augmentation (RRC, flip, RandAugment, erasing)

    def batches(seed, workers, epoch=None):
        c = cfg_for(data, num_workers=workers)
        loader = build_loader(build_dataset(c, "train"), c, batch_size=2, train=True, seed=seed)
        if epoch is not None:
            loader.set_epoch(epoch)
        return [(b["index"], b["video"]) for b in loader]

    a, b, c = batches(0, 2), batches(0, 0), batches(1, 2)
    assert len(a) == 4
    for (ia, va), (ib, vb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(va, vb)
    assert not all(torch.equal(ia, ic) and torch.equal(va, vc) for (ia, va), (ic, vc) in zip(a, c))
    e1 = batches(0, 0, epoch=1)
    assert not all(torch.equal(ia, ie) and torch.equal(va, ve) for (ia, va), (ie, ve) in zip(a, e1))
    del cfg


def test_epoch_advances_without_set_epoch(data):
    cfg = cfg_for(data, num_workers=0)
    loader = build_loader(build_dataset(cfg, "train"), cfg, batch_size=1, train=True, seed=0)
    first = [b["index"].item() for b in loader]
    second = [b["index"].item() for b in loader]
    assert loader.epoch == 2 and loader.sampler.epoch == 1 and first != second


def test_distributed_eval_sampler_covers_once_without_padding():
    ds = list(range(10))
    shards = [list(DistributedEvalSampler(ds, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == ds and [len(s) for s in shards] == [4, 3, 3]
    with pytest.raises(ValueError, match="rank 3 out of range"):
        DistributedEvalSampler(ds, 3, 3)


def test_distributed_loader_uses_process_group(data, tmp_path):
    import torch.distributed as dist

    cfg = cfg_for(data, num_workers=0)
    ds = build_dataset(cfg, "train")
    with pytest.raises(RuntimeError, match="torch.distributed initialised"):
        build_loader(ds, cfg, batch_size=2, train=True, distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        loader = build_loader(ds, cfg, batch_size=2, train=True, distributed=True, seed=3)
        assert loader.sampler.num_replicas == 1 and loader.sampler.rank == 0 and loader.sampler.seed == 3
        loader.set_epoch(5)
        assert loader.sampler.epoch == 5 and ds.epoch == 5
    finally:
        dist.destroy_process_group()


def test_bad_files_are_logged_with_path_and_reason(data, caplog):
    cfg = cfg_for(data, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="stts.data"):
        for _ in build_loader(build_dataset(cfg, "val"), cfg, batch_size=8, train=False):
            pass
    messages = [r.getMessage() for r in caplog.records if r.name == "stts.data"]
    assert any("bad0.mp4" in m and "missing file" in m for m in messages)
    assert any("bad1.mp4" in m and "cannot open" in m for m in messages)
