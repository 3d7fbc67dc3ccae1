"""stts.data.decode: frames read back from real files carry the indices they were encoded with."""

import pytest

pytest.importorskip("av")

from _data_helpers import CONTAINERS, garbage, index_frames, read_index, truncate, write_empty_video, write_video

from stts.data.decode import DecodeError, decode_all, decode_frames, probe


def test_codecs_available():
    import av

    for _, codec in CONTAINERS:
        av.codec.Codec(codec, "w")  # raises UnknownCodecError if the wheel lacks it


@pytest.mark.parametrize("ext,codec", CONTAINERS)
def test_decode_indices_every_container(tmp_path, ext, codec):
    path = write_video(tmp_path / f"v.{ext}", index_frames(40), codec=codec)
    info = probe(path)
    assert (info.width, info.height) == (96, 64) and info.fps == pytest.approx(30)
    assert abs(info.num_frames - 40) <= 1
    wanted = [0, 5, 17, 39, 39, 3]
    frames, _ = decode_frames(path, wanted)
    assert frames.shape == (6, 64, 96, 3) and frames.dtype.__str__() == "torch.uint8"
    assert [read_index(f) for f in frames] == wanted


@pytest.mark.parametrize("ext,codec", CONTAINERS)
def test_seek_decodes_only_near_the_clip(tmp_path, ext, codec):
    # 300 frames, a key frame every 30: a clip at 250..262 must not decode from frame 0.
    path = write_video(tmp_path / f"long.{ext}", index_frames(300), codec=codec, gop=30)
    wanted = [250, 254, 258, 262]
    frames, info = decode_frames(path, wanted)
    assert [read_index(f) for f in frames] == wanted
    assert info.decoded <= 2 * 30 + len(wanted)  # at most about one GOP before the clip


def test_indices_past_the_end_clamp_to_last_frame(tmp_path):
    path = write_video(tmp_path / "short.mp4", index_frames(10))
    frames, info = decode_frames(path, [0, 8, 9, 10, 25])
    assert [read_index(f) for f in frames] == [0, 8, 9, 9, 9]
    assert info.last_index == 9


def test_callable_indices_see_the_frame_count(tmp_path):
    path = write_video(tmp_path / "v.mp4", index_frames(24))
    seen = {}

    def pick(info):
        seen["n"] = info.num_frames
        return [info.num_frames - 1]

    frames, _ = decode_frames(path, pick)
    assert seen["n"] == 24 and read_index(frames[0]) == 23


@pytest.mark.parametrize("ext,codec", [("mkv", "ffv1"), ("webm", "libvpx")])
def test_truncated_stream_uses_the_frames_before_the_cut(tmp_path, ext, codec):
    path = truncate(write_video(tmp_path / f"v.{ext}", index_frames(120), codec=codec), 0.5)
    all_frames, _ = decode_all(path)
    n = len(all_frames)
    assert 10 < n < 120
    frames, info = decode_frames(path, [0, 5, 119])
    assert [read_index(f) for f in frames] == [0, 5, n - 1]  # the missing tail clamps


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda d: str(d / "nope.mp4"), "missing file"),
        (lambda d: garbage(d / "garbage.mp4"), "cannot open"),
        (lambda d: truncate(write_video(d / "t.mp4", index_frames(30)), 0.5), "cannot open"),  # moov atom lost
        (lambda d: write_empty_video(d / "empty.avi"), "no decodable frame"),
        (lambda d: (d / "zero.mp4").write_bytes(b"") or str(d / "zero.mp4"), "empty file"),
        (lambda d: str(d), "directory"),
    ],
    ids=["missing", "garbage", "truncated-mp4", "zero-frames", "zero-bytes", "directory"],
)
def test_bad_files_raise_decode_error_naming_file_and_reason(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(DecodeError) as e:
        decode_frames(path, [0, 1])
    assert e.value.path == str(path) and reason in e.value.reason
    assert str(path) in str(e.value)
