"""stts.data.sampling: frame indices against hand-computed ones."""

import pytest
import torch

from stts.data.sampling import clip_indices, sample_indices, segment_indices


def test_clip_centre_view_by_hand():
    # 300 frames, 16 x 4 = 64-frame span, free range 236, centre start 118.
    assert clip_indices(300, 16, 4) == list(range(118, 118 + 64, 4))


def test_clip_views_cover_the_video_uniformly():
    starts = [clip_indices(300, 16, 4, view=v, num_views=5)[0] for v in range(5)]
    assert starts == [0, 59, 118, 177, 236]
    assert clip_indices(300, 16, 4, view=4, num_views=5)[-1] == 236 + 60


def test_clip_step_follows_fps():
    # 60 fps source, sampling rate counted at 30 fps: every 8th source frame, twice the span.
    idx = clip_indices(1000, 16, 4, fps=60, target_fps=30, view=0, num_views=2)
    assert [b - a for a, b in zip(idx, idx[1:])] == [8] * 15
    # target_fps=None: the video's own rate
    idx = clip_indices(1000, 16, 4, fps=60, target_fps=None, view=0, num_views=2)
    assert idx == list(range(0, 64, 4))


def test_clip_random_start_within_bounds_and_seeded():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        idx = clip_indices(100, 8, 2, generator=g)
        assert idx == list(range(idx[0], idx[0] + 16, 2)) and 0 <= idx[0] <= 100 - 16
        starts.add(idx[0])
    assert len(starts) > 40  # really random
    a = clip_indices(100, 8, 2, generator=torch.Generator().manual_seed(3))
    assert a == clip_indices(100, 8, 2, generator=torch.Generator().manual_seed(3))


def test_clip_shorter_than_span_repeats_last_frame():
    assert clip_indices(10, 8, 2) == [0, 2, 4, 6, 8, 9, 9, 9]
    assert clip_indices(1, 4, 4) == [0, 0, 0, 0]


def test_segment_test_takes_segment_centres():
    # 48 frames in 16 segments of 3: centre = 3 i + 1
    assert segment_indices(48, 16) == [3 * i + 1 for i in range(16)]
    # two views: at 1/4 and 3/4 of each segment of 4 frames
    assert segment_indices(32, 8, view=0, num_views=2) == [4 * i + 1 for i in range(8)]
    assert segment_indices(32, 8, view=1, num_views=2) == [4 * i + 3 for i in range(8)]


def test_segment_train_one_random_frame_per_segment():
    g = torch.Generator().manual_seed(0)
    hits = set()
    for _ in range(100):
        idx = segment_indices(50, 10, generator=g)
        for i, j in enumerate(idx):
            assert 5 * i <= j < 5 * (i + 1)
        hits.update(j - 5 * i for i, j in enumerate(idx))
    assert hits == {0, 1, 2, 3, 4}


def test_segment_short_video_repeats():
    assert segment_indices(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_sample_indices_dispatch_and_errors():
    # By hand, as above: segment centres 3 i + 1 of 16 segments; the centred 16 x 4 clip starts at 118.
    assert sample_indices("segment", 48, 16, 4) == [3 * i + 1 for i in range(16)]
    assert sample_indices("clip", 300, 16, 4) == list(range(118, 118 + 64, 4))
    assert sample_indices("clip", 300, 16, 4, view=4, num_views=5)[0] == 236
    assert sample_indices("segment", 32, 8, 4, view=1, num_views=2) == [4 * i + 3 for i in range(8)]
    with pytest.raises(ValueError, match="unknown sampling mode 'tsn'"):
        sample_indices("tsn", 48, 16, 4)
    with pytest.raises(ValueError, match="view 5 out of range"):
        clip_indices(300, 16, 4, view=5, num_views=5)
