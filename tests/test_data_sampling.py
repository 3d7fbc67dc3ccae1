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


# --- the published test views: PySlowFast (MViT) and mmaction2 SampleFrames (Video Swin) ---------------
# Expected indices are worked out by hand from the rules (module docstring of stts.data.sampling), not
# by running code: PySlowFast takes clip_size = rate * frames * fps / target_fps source frames, starts
# clip v of V at delta * v / V (delta = video - clip_size), and takes linspace(start, start + clip_size - 1,
# frames) clamped to the video, truncated. mmaction: L = frames * rate, avg = (video - L + 1) / V,
# offset int(v * avg + avg / 2) (0 if video <= L - 1), offset + k * rate, indices past the end looped.

from stts.data.sampling import mmaction_indices, pyslowfast_indices  # noqa: E402


def test_pyslowfast_views_of_a_300_frame_video_by_hand():
    # 16x4 at 30 fps: clip_size 64, delta 236; starts 236 v / 5 = 0, 47.2, 94.4, 141.6, 188.8; the
    # frames are start + k * 63/15 = start + 4.2 k, truncated.
    v0 = [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]  # 0, 4.2, 8.4, ..., 63
    v1 = [47, 51, 55, 59, 64, 68, 72, 76, 80, 85, 89, 93, 97, 101, 106, 110]  # 47.2, 51.4, 55.6, 59.8, 64.0, ...
    v4 = [188, 193, 197, 201, 205, 209, 214, 218, 222, 226, 230, 235, 239, 243, 247, 251]  # 188.8 + 4.2 k
    assert pyslowfast_indices(300, 16, 4, view=0, num_views=5) == v0
    assert pyslowfast_indices(300, 16, 4, view=1, num_views=5) == v1
    assert pyslowfast_indices(300, 16, 4, view=4, num_views=5) == v4
    starts = [pyslowfast_indices(300, 16, 4, view=v, num_views=5)[0] for v in range(5)]
    assert starts == [0, 47, 94, 141, 188]  # stts's own rule starts at 0, 59, 118, 177, 236
    assert sample_indices("pyslowfast", 300, 16, 4, view=1, num_views=5, return_padded=True) == (v1, False)


def test_pyslowfast_resamples_to_the_target_fps_by_hand():
    # 60 fps, 600 frames, 16x4 counted at 30 fps: clip_size 128, delta 472, clip 1 of 5 starts at 94.4;
    # frames 94.4 + k * 127/15 (8.4667 k): 94.4, 102.87, 111.33, 119.8, 128.27, ...
    expected = [94, 102, 111, 119, 128, 136, 145, 153, 162, 170, 179, 187, 196, 204, 212, 221]
    assert pyslowfast_indices(600, 16, 4, fps=60, target_fps=30, view=1, num_views=5) == expected


def test_pyslowfast_video_shorter_than_one_clip_by_hand():
    # 40 frames < clip_size 64: delta 0, every view starts at 0 and takes 4.2 k, clamped to frame 39.
    expected = [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 39, 39, 39, 39, 39, 39]
    for v in range(5):
        assert pyslowfast_indices(40, 16, 4, view=v, num_views=5, return_padded=True) == (expected, True)
    # exactly one clip long (64 frames): 0 .. 63, nothing clamped
    assert pyslowfast_indices(64, 16, 4, return_padded=True)[1] is False


def test_pyslowfast_training_clip_is_a_random_start_then_linspace():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(100):
        idx = pyslowfast_indices(100, 8, 2, generator=g)  # clip_size 16, delta 84
        start = idx[0]
        assert 0 <= start <= 84 and idx[-1] - start in (14, 15)  # linspace(s, s + 15, 8), truncated
        starts.add(start)
    assert len(starts) > 30


def test_mmaction_test_clips_of_swin_by_hand():
    # 32x2, 4 clips: L = 64. 300 frames: avg = 237 / 4 = 59.25; offsets int(29.625), int(88.875),
    # int(148.125), int(207.375) = 29, 88, 148, 207; a clip is offset + 2 k, k < 32.
    for v, offset in enumerate([29, 88, 148, 207]):
        assert mmaction_indices(300, 32, 2, view=v, num_views=4) == [offset + 2 * k for k in range(32)]
    # 100 frames: avg = 37 / 4 = 9.25; offsets int(4.625), int(13.875), int(23.125), int(32.375)
    assert [mmaction_indices(100, 32, 2, view=v, num_views=4)[0] for v in range(4)] == [4, 13, 23, 32]
    # mmaction counts source frames: fps plays no part
    assert sample_indices("mmaction", 300, 32, 2, fps=60, view=3, num_views=4) == [207 + 2 * k for k in range(32)]


def test_mmaction_short_videos_loop_by_hand():
    # 64 frames (= L): avg = 1/4, offsets int(0.125 + v / 4) = 0; indices 0 .. 62, nothing past the end.
    assert mmaction_indices(64, 32, 2, view=3, num_views=4, return_padded=True) == (list(range(0, 64, 2)), False)
    # 63 frames (not > L - 1 = 63): offsets 0; the last index 62 is still in the video.
    assert mmaction_indices(63, 32, 2, view=2, num_views=4, return_padded=True) == (list(range(0, 64, 2)), False)
    # 50 frames: offsets 0; 0, 2, ..., 62 looped modulo 50: 50 -> 0, 52 -> 2, ..., 62 -> 12.
    looped = list(range(0, 50, 2)) + [0, 2, 4, 6, 8, 10, 12]
    for v in range(4):
        assert mmaction_indices(50, 32, 2, view=v, num_views=4, return_padded=True) == (looped, True)


def test_mmaction_training_offset_is_random_within_the_video():
    g = torch.Generator().manual_seed(0)
    offsets = {mmaction_indices(100, 8, 2, generator=g)[0] for _ in range(300)}  # offsets in [0, 100 - 16]
    assert min(offsets) >= 0 and max(offsets) <= 84 and len(offsets) > 50
    assert mmaction_indices(10, 8, 2, generator=g) == [0, 2, 4, 6, 8, 0, 2, 4]  # shorter: offset 0, looped


def test_padded_flag_of_stts_and_segment_rules():
    # stts clip 8x2: spans (8 - 1) * 2 + 1 = 15 frames; 14 frames clamp the last index, 15 do not.
    assert clip_indices(14, 8, 2, return_padded=True) == ([0, 2, 4, 6, 8, 10, 12, 13], True)
    assert clip_indices(15, 8, 2, return_padded=True)[1] is False
    assert segment_indices(7, 8, return_padded=True)[1] is True  # fewer frames than segments
    assert segment_indices(8, 8, return_padded=True) == (list(range(8)), False)


def test_pyslowfast_truncates_its_float32_linspace_as_pyslowfast_does():
    # 65 frames, clip 2 of 5: delta 1, start 0.4, frames 0.4 + 4.2 k. In exact arithmetic k = 3 gives
    # 13.0, but PySlowFast computes torch.linspace in float32, where it lands just below 13 and
    # truncates to 12; the published views are those, so stts reproduces the float32 result.
    exact = [int(0.4 + 4.2 * k + 1e-9) for k in range(16)]
    pyslowfast = torch.linspace(0.4, 63.4, 16).long().tolist()  # PySlowFast's own expression
    assert exact[3] == 13 and pyslowfast[3] == 12
    assert pyslowfast_indices(65, 16, 4, view=2, num_views=5) == pyslowfast
