"""stts.data.annotations / datasets / config: formats, labels, views, bad entries."""

import json
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from _data_helpers import clip_indices_of, index_frames, make_kinetics_dataset, write_video

from stts.data import BadDataError, DataConfig, build_dataset, read_folder, read_kinetics, read_ssv2

PLAIN = dict(mean=(0, 0, 0), std=(1, 1, 1))  # items then hold raw [0, 1] pixels, so indices can be read


# --- Kinetics CSV --------------------------------------------------------------------------------


def test_kinetics_spaces_commas_names_ints_header_comments(tmp_path):
    classes = ["air drumming", "abseiling", "zumba"]
    csv = tmp_path / "a.csv"
    csv.write_text(
        "path,label\n"  # header
        "# comment\n"
        "x/1.mp4 2\n"
        "x/2.mp4,abseiling\n"
        "\n"
        "x/3.mp4 air drumming\n"  # a class name with a space
        "/abs/4.mp4,0\n"
    )
    ann = read_kinetics(csv, root="/data", classes=classes)
    assert ann.errors == []
    assert ann.samples == [("/data/x/1.mp4", 2), ("/data/x/2.mp4", 1), ("/data/x/3.mp4", 0), ("/abs/4.mp4", 0)]


def test_kinetics_bad_lines_report_file_line_and_reason(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("a.mp4 0\nlonely\nb.mp4 7\nc.mp4 nosuchclass\nd.mp4,1,extra,x\ne.mp4 -1\nf.mp4 1\n")
    ann = read_kinetics(csv, classes=["p", "q", "r"])
    assert [s[1] for s in ann.samples] == [0, 1]
    where = {e.where: e.reason for e in ann.errors}
    assert set(where) == {f"{csv}:{n}" for n in (2, 3, 4, 5, 6)}
    assert "one field" in where[f"{csv}:2"]
    assert "label 7 out of range [0, 3)" in where[f"{csv}:3"]
    assert "unknown label 'nosuchclass'" in where[f"{csv}:4"]
    assert "4 comma-separated fields" in where[f"{csv}:5"]


def test_kinetics_classes_from_names_without_classes_file(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("a.mp4 walk\nb.mp4 run\nc.mp4 jump\nd.mp4 run\n")
    ann = read_kinetics(csv)
    assert ann.classes == ["jump", "run", "walk"]
    assert [y for _, y in ann.samples] == [2, 1, 0, 1]


def test_val_uses_train_classes_and_unknown_val_label_is_reported(tmp_path, caplog):
    (tmp_path / "train.csv").write_text("a.mp4 walk\nb.mp4 run\nc.mp4 jump\n")
    (tmp_path / "val.csv").write_text("".join(f"v{i}.mp4 run\n" for i in range(20)) + "z.mp4 swim\n")
    cfg = DataConfig(root=str(tmp_path), train_annotations=str(tmp_path / "train.csv"),
                     val_annotations=str(tmp_path / "val.csv"))
    with caplog.at_level(logging.WARNING, logger="stts.data"):
        ds = build_dataset(cfg, "val")
    assert ds.classes == ["jump", "run", "walk"] and {y for _, y in ds.samples} == {1}
    assert any("val.csv:21" in r.getMessage() and "swim" in r.getMessage() for r in caplog.records)


def test_too_many_bad_annotation_lines_fail_loudly(tmp_path):
    (tmp_path / "t.csv").write_text("a.mp4 0\nbroken\nb.mp4 9\n")
    cfg = DataConfig(train_annotations=str(tmp_path / "t.csv"), num_classes=2)
    with pytest.raises(BadDataError, match=r"2 of 3 entries \(66.7%\).*t.csv:2"):
        build_dataset(cfg, "train")


# --- SSv2 ----------------------------------------------------------------------------------------


def test_ssv2_template_brackets_and_errors(tmp_path):
    labels = {"Putting something on something": "1", "Approaching something with your camera": "0"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    entries = [
        {"id": "11", "label": "putting a cup on a box", "template": "Putting [something] on [something]"},
        {"id": "12", "template": "Approaching [something] with your camera"},
        {"id": "13", "template": "Juggling [something]"},
        {"id": "14"},
        "not a dict",
    ]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    ann = read_ssv2(tmp_path / "train.json", labels_file=tmp_path / "labels.json", root="/v")
    assert ann.samples == [("/v/11.webm", 1), ("/v/12.webm", 0)]
    assert ann.classes == ["Approaching something with your camera", "Putting something on something"]
    reasons = {e.where.rsplit("[", 1)[1]: e.reason for e in ann.errors}
    assert "unknown template 'Juggling something'" in reasons["2]"]
    assert "no 'template'" in reasons["3]"] and "without an 'id'" in reasons["4]"]


def test_ssv2_dataset_uses_segment_sampling(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "0"}))
    (tmp_path / "val.json").write_text(json.dumps([{"id": "7", "template": "Holding [something]"}]))
    write_video(tmp_path / "7.webm", index_frames(32, 96, 96), codec="libvpx")
    cfg = DataConfig(root=str(tmp_path), val_annotations=str(tmp_path / "val.json"),
                     labels_file=str(tmp_path / "labels.json"), num_frames=8, crop_size=96,
                     test_short_side=96, **PLAIN)
    ds = build_dataset(cfg, "val")
    assert ds.sampling == "segment" and ds.num_classes == 1
    assert clip_indices_of(ds[0]["video"]) == [4 * i + 2 for i in range(8)]  # segment centres


# --- folders -------------------------------------------------------------------------------------


def test_folder_layout(tmp_path):
    for split, names in (("train", ["cat", "dog", "eel"]), ("val", ["dog", "eel"])):
        for c in names:
            (tmp_path / split / c / "sub").mkdir(parents=True)
            (tmp_path / split / c / "sub" / "1.mp4").write_bytes(b"x")
            (tmp_path / split / c / "notes.txt").write_text("not a video")
    ann = read_folder(tmp_path / "train")
    assert ann.classes == ["cat", "dog", "eel"] and len(ann.samples) == 3
    cfg = DataConfig(root=str(tmp_path), train_annotations="train", val_annotations="val")
    ds = build_dataset(cfg, "val")  # "val" resolved under root; classes from the train folder
    assert ds.classes == ["cat", "dog", "eel"]
    assert sorted(y for _, y in ds.samples) == [1, 2]


# --- items, views, bad videos ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    root = tmp_path_factory.mktemp("k")
    csv, entries = make_kinetics_dataset(root, num_good=3, bad=("missing", "garbage", "empty"))
    return str(root), csv, entries


def test_test_split_views_and_indices(kinetics):
    root, csv, entries = kinetics
    cfg = DataConfig(root=root, val_annotations=csv, classes_file=f"{root}/classes.txt", num_frames=4,
                     sampling_rate=2, crop_size=96, test_short_side=96, num_temporal_views=2, **PLAIN)
    ds = build_dataset(cfg, "test")
    assert ds.num_videos == 6 and ds.num_views == 2 and len(ds) == 12 and ds.classes == ["a", "b", "c"]
    item = ds[2]  # video 1, view 0
    assert (item["index"], item["view"], item["label"]) == (1, 0, 1)
    assert item["video"].shape == (3, 4, 96, 96) and item["bad"] == []
    # 64 frames, span 8, free 56: view 0 starts at 0, view 1 at 56
    assert clip_indices_of(item["video"]) == [0, 2, 4, 6]
    assert clip_indices_of(ds[3]["video"]) == [56, 58, 60, 62]
    assert clip_indices_of(build_dataset(cfg, "val")[1]["video"]) == [28, 30, 32, 34]  # val: 1 centred view


def _position_frames(n: int, video: int, height: int = 64, width: int = 192):
    """uint8 (n, H, W, 3) grey frames that say where they are: rows 0-15 the video (40 or 200), rows 16-31
    the frame index (8 t + 4), rows 32-63 the column (grey level x)."""
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[:, :16] = 40 if video == 0 else 200
    frames[:, 16:32] = (8 * np.arange(n) + 4)[:, None, None, None]
    frames[:, 32:] = np.arange(width)[None, None, :, None]
    return frames


def test_three_spatial_crops(tmp_path):
    """2 temporal views x 3 crops of 64 x 192 frames (lossless ffv1): each item's video, frames and crop
    offset are read back from its pixels and compared with the documented view layout: item i is
    video i // 6, view i % 6, temporal view = view // 3, crop = view % 3 (left, centre, right)."""
    for v in range(2):
        write_video(tmp_path / f"{v}.mkv", _position_frames(32, v), codec="ffv1")
    (tmp_path / "test.csv").write_text("0.mkv 0\n1.mkv 1\n")
    cfg = DataConfig(root=str(tmp_path), val_annotations=str(tmp_path / "test.csv"), num_classes=2, num_frames=2,
                     sampling_rate=4, crop_size=64, test_short_side=64, num_temporal_views=2,
                     num_spatial_crops=3, **PLAIN)
    ds = build_dataset(cfg, "test")
    assert len(ds) == 12 and ds.num_views == 6
    # 32 frames, span 8 -> free 24: temporal view 0 starts at 0, view 1 at 24. Crops of 64 of 192 columns.
    frames_of = {0: [0, 4], 1: [24, 28]}
    left_of = {0: 0, 1: 64, 2: 128}
    for i in range(len(ds)):
        video, view = divmod(i, 6)
        temporal, crop = divmod(view, 3)
        item = ds[i]
        pixels = (item["video"] * 255).round()  # (C, T, 64, 64) grey levels
        assert (item["index"], item["view"], item["label"]) == (video, view, video)
        assert round(pixels[:, :, :16].mean().item()) == (40 if video == 0 else 200), i
        assert [round((pixels[:, t, 16:32].mean().item() - 4) / 8) for t in range(2)] == frames_of[temporal], i
        offset = pixels[:, :, 32:].mean(dim=(0, 1, 2)) - torch.arange(64)  # (64,) source column - crop column
        assert round(offset.median().item()) == left_of[crop], i
        assert (offset - left_of[crop]).abs().max() <= 2, i  # a plain crop: no resampling


def test_eval_bad_items_have_no_video_and_say_why(kinetics, caplog):
    root, csv, entries = kinetics
    cfg = DataConfig(root=root, val_annotations=csv, num_frames=4, crop_size=64, test_short_side=64)
    ds = build_dataset(cfg, "val")
    with caplog.at_level(logging.WARNING, logger="stts.data"):
        items = [ds[i] for i in range(len(ds))]
    reasons = {"missing": "missing file", "garbage": "cannot open", "empty": "no decodable frame"}
    for (rel, _, kind), item in zip(entries, items):
        if kind == "good":
            assert "video" in item and item["bad"] == []
        else:
            assert "video" not in item and len(item["bad"]) == 1
            assert rel in item["bad"][0] and reasons[kind] in item["bad"][0]
            assert any(rel in r.getMessage() and reasons[kind] in r.getMessage() for r in caplog.records)


def test_train_bad_item_is_replaced_by_a_good_one(kinetics):
    root, csv, entries = kinetics
    cfg = DataConfig(root=root, train_annotations=csv, num_frames=4, crop_size=32)
    ds = build_dataset(cfg, "train")
    item = ds[3]  # the missing file
    assert item["index"] < 3 and item["label"] == entries[item["index"]][1]
    assert item["video"].shape == (3, 4, 32, 32)
    assert len(item["bad"]) >= 1 and "missing file" in item["bad"][0]
    assert ds[0]["bad"] == [] and ds[0]["index"] == 0


def test_all_bad_training_data_raises(tmp_path):
    csv, _ = make_kinetics_dataset(tmp_path, num_good=0, bad=("missing", "garbage"))
    cfg = DataConfig(root=str(tmp_path), train_annotations=csv, num_frames=2, crop_size=32, max_retries=3)
    with pytest.raises(BadDataError, match="4 bad videos in a row"):
        build_dataset(cfg, "train")[0]


def test_cache_decoded_gives_the_same_items_and_decodes_each_video_once(kinetics, monkeypatch):
    import stts.data.datasets as datasets

    root, csv, entries = kinetics
    base = dict(root=root, train_annotations=csv, val_annotations=csv, num_frames=4, sampling_rate=2,
                crop_size=32, test_short_side=32, **PLAIN)
    calls = []
    real = datasets.decode_all
    monkeypatch.setattr(datasets, "decode_all", lambda path, **kw: calls.append(path) or real(path, **kw))
    for split in ("train", "val"):
        plain = build_dataset(DataConfig(**base), split, seed=3)
        cached = build_dataset(DataConfig(**base, cache_decoded=True), split, seed=3)
        for epoch in range(2):
            plain.set_epoch(epoch)
            cached.set_epoch(epoch)
            for i in range(len(plain)):
                a, b = plain[i], cached[i]
                assert a["bad"] == b["bad"] and ("video" in a) == ("video" in b)
                if "video" in a:
                    assert torch.equal(a["video"], b["video"]) and a["index"] == b["index"]
    good = [rel for rel, _, kind in entries if kind == "good"]
    # One decode per good video and split (bad ones fail each time they are drawn: not cached).
    assert sorted(c for c in calls if any(c.endswith(g) for g in good)) == sorted(
        f"{root}/{g}" for g in good for _ in range(2))


# --- config ----------------------------------------------------------------------------------------


def test_data_config_defaults_and_validation():
    cfg = DataConfig()
    assert (cfg.num_frames, cfg.sampling_rate, cfg.crop_size, cfg.train_jitter_scales) == (16, 4, 224, (256, 320))
    assert (cfg.randaug_magnitude, cfg.randaug_num_ops, cfg.erase_prob) == (7, 4, 0.25)
    assert (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.label_smoothing, cfg.max_skip_fraction) == (0.8, 1.0, 0.1, 0.1)
    with pytest.raises(ValueError, match="format: unknown value 'csv'"):
        DataConfig(format="csv")
    with pytest.raises(ValueError, match="num_spatial_crops"):
        DataConfig(num_spatial_crops=2)
    with pytest.raises(ValueError, match="data.val_annotations is empty"):
        build_dataset(DataConfig(), "val")


def test_data_config_through_omegaconf():
    omegaconf = pytest.importorskip("omegaconf")
    base = omegaconf.OmegaConf.structured(DataConfig)
    merged = omegaconf.OmegaConf.merge(base, {"num_frames": 8, "rrc_scale": [0.2, 1.0]})
    cfg = omegaconf.OmegaConf.to_object(merged)
    assert isinstance(cfg, DataConfig) and cfg.num_frames == 8 and cfg.rrc_scale == (0.2, 1.0)
    with pytest.raises(Exception, match="nmu_frames"):
        omegaconf.OmegaConf.merge(base, {"nmu_frames": 8})


# --- issue 11: published test views, padded clips, labels that must not be guessed ------------------


@pytest.mark.parametrize("rule, views", [
    # 64-frame videos, 4x2 clips, 2 views (hand-computed from the rules, see test_data_sampling):
    # pyslowfast: clip_size 8, delta 56, starts 0 and 28, linspace(start, start + 7, 4) truncated;
    ("pyslowfast", [[0, 2, 4, 7], [28, 30, 32, 35]]),
    # mmaction: L 8, avg (64 - 8 + 1) / 2 = 28.5, offsets int(14.25) = 14 and int(42.75) = 42.
    ("mmaction", [[14, 16, 18, 20], [42, 44, 46, 48]]),
])
def test_test_views_follow_the_configured_rule(kinetics, rule, views):
    root, csv, _ = kinetics
    cfg = DataConfig(root=root, val_annotations=csv, classes_file=f"{root}/classes.txt", sampling=rule,
                     num_frames=4, sampling_rate=2, crop_size=96, test_short_side=96, num_temporal_views=2, **PLAIN)
    ds = build_dataset(cfg, "test")
    assert ds.sampling == rule
    assert [clip_indices_of(ds[i]["video"]) for i in (2, 3)] == views  # video 1, views 0 and 1
    assert ds[2]["padded"] is False


def test_items_say_when_the_clip_ran_past_the_video(kinetics):
    root, csv, _ = kinetics
    base = dict(root=root, train_annotations=csv, val_annotations=csv, classes_file=f"{root}/classes.txt",
                num_frames=4, crop_size=96, test_short_side=96, max_skip_fraction=1.0, **PLAIN)
    # 4 frames 32 apart span 97 > 64 frames: start 0, indices 0, 32, 64 -> 63, 96 -> 63 (padded); 4 x 2 fits.
    long = build_dataset(DataConfig(**base, sampling_rate=32), "val")
    assert long[0]["padded"] is True and clip_indices_of(long[0]["video"]) == [0, 32, 63, 63]
    assert build_dataset(DataConfig(**base, sampling_rate=2), "val")[0]["padded"] is False
    train = build_dataset(DataConfig(**base, sampling_rate=32, random_resized_crop=False,
                                     train_jitter_scales=(96, 96), randaug=False, erase_prob=0.0), "train")
    assert train[0]["padded"] is True


def test_mixed_integer_and_name_labels_are_an_error_naming_the_lines(tmp_path):
    from stts.errors import DataError, UserError

    csv = tmp_path / "t.csv"
    csv.write_text("a.mp4 dancing\nb.mp4 3\nc.mp4 running\nd.mp4 0\n")
    with pytest.raises(DataError, match=r"t.csv: labels mix integers \(2 lines; line 2: '3', line 4: '0'\) "
                                        r"and class names \(2 lines; line 1: 'dancing', line 3: 'running'\)"):
        read_kinetics(csv)
    assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)
    # With a classes file the mapping is known: no error.
    ann = read_kinetics(csv, classes=["dancing", "running", "x", "y"])
    assert [y for _, y in ann.samples] == [0, 3, 1, 0]
    # Across files: names in train, integers in val.
    (tmp_path / "train.csv").write_text("a.mp4 dancing\nb.mp4 running\n")
    (tmp_path / "val.csv").write_text("c.mp4 1\n")
    cfg = DataConfig(train_annotations=str(tmp_path / "train.csv"), val_annotations=str(tmp_path / "val.csv"))
    with pytest.raises(DataError, match="val.csv has integer labels but the training annotations .*train.csv have "
                                        "class-name labels"):
        build_dataset(cfg, "val")


def test_every_split_takes_the_class_count_of_the_training_annotations(tmp_path):
    (tmp_path / "train.csv").write_text("".join(f"v{i}.mp4 {i}\n" for i in range(5)))  # labels 0..4
    (tmp_path / "val.csv").write_text("a.mp4 0\nb.mp4 2\n")  # lacks the top class
    cfg = DataConfig(train_annotations=str(tmp_path / "train.csv"), val_annotations=str(tmp_path / "val.csv"))
    assert build_dataset(cfg, "train").num_classes == build_dataset(cfg, "val").num_classes == 5
    # Names: the sorted names of the training file, whatever the val file holds.
    (tmp_path / "train.csv").write_text("a.mp4 zebra\nb.mp4 ant\nc.mp4 moth\n")
    (tmp_path / "val.csv").write_text("a.mp4 moth\n")
    val = build_dataset(cfg, "val")
    assert val.classes == ["ant", "moth", "zebra"] and val.samples[0][1] == 1


def test_csv_and_classes_file_with_a_utf8_byte_order_mark(tmp_path):
    (tmp_path / "t.csv").write_text("\ufeffpath,label\na.mp4,cat\nb.mp4,dog\n", encoding="utf-8")
    (tmp_path / "classes.txt").write_text("\ufeffdog\ncat\n", encoding="utf-8")
    from stts.data import read_classes

    assert read_classes(tmp_path / "classes.txt") == ["dog", "cat"]
    ann = read_kinetics(tmp_path / "t.csv", root="/r", classes=read_classes(tmp_path / "classes.txt"))
    assert ann.errors == [] and ann.samples == [("/r/a.mp4", 1), ("/r/b.mp4", 0)]  # header skipped, no BOM
