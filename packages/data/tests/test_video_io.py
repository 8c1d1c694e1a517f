import subprocess
import sys

import numpy as np
import pytest

from vpp.data import video_io

FPS = 10


def moving_square_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth background + a square that moves each frame, so every frame is recognisably different."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    tint = rng.integers(0, 80, size=3)
    background = np.stack([x * 2 + tint[0], y * 2 + tint[1], (x + y) + tint[2]], -1).clip(0, 255)
    frames = np.repeat(background[None], num_frames, axis=0).astype(np.uint8)
    for t in range(num_frames):
        top, left = (3 * t) % (height - 12), (5 * t) % (width - 12)
        frames[t, top : top + 12, left : left + 12] = (250, 240, 30)
    return frames


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def usable_codecs() -> list[str]:
    return [codec for codec in video_io.CODEC_PREFERENCE if video_io.codec_works(codec)]


def test_default_codec_is_the_first_usable_one_and_av1_here():
    assert video_io.default_codec() == usable_codecs()[0]
    # The PyAV wheels in this repo's environment ship SVT-AV1 and dav1d; LeRobot v3 records AV1.
    assert video_io.default_codec() == "libsvtav1"


@pytest.mark.parametrize("codec", video_io.CODEC_PREFERENCE)
def test_round_trip_is_close_for_every_usable_codec(tmp_path, codec):
    if not video_io.codec_works(codec):
        pytest.skip(f"{codec} cannot encode and decode in this PyAV build")
    frames = moving_square_frames(20)
    path = tmp_path / "clip.mp4"
    assert video_io.write_video(path, frames, FPS, codec=codec) == codec
    decoded = video_io.read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert mean_abs_error(decoded, frames) < 6.0
    assert video_io.count_frames(path) == 20
    info = video_io.video_info(path)
    assert (info["video.height"], info["video.width"], info["video.fps"]) == (48, 64, FPS)


def test_read_selected_indices_in_any_order_with_repeats(tmp_path):
    frames = moving_square_frames(15)
    path = tmp_path / "clip.mp4"
    video_io.write_video(path, frames, FPS)
    wanted = [9, 2, 2, 14]
    picked = video_io.read_video(path, wanted)
    assert picked.shape == (4, 48, 64, 3)
    for got, index in zip(picked, wanted, strict=True):
        errors = [mean_abs_error(got, frame) for frame in frames]
        assert int(np.argmin(errors)) == index and errors[index] < 6.0
    with pytest.raises(IndexError, match="frame index 15 out of range; the video has 15 frames"):
        video_io.read_video(path, [3, 15])


def test_timestamps_and_ranges_pick_the_frames_at_those_times(tmp_path):
    frames = moving_square_frames(12)
    path = tmp_path / "clip.mp4"
    video_io.write_video(path, frames, FPS)
    got = video_io.read_video_timestamps(path, [0.5, 0.1, 1.1], tolerance_s=0.04)
    for image, index in zip(got, [5, 1, 11], strict=True):
        assert mean_abs_error(image, frames[index]) < 6.0
    span = video_io.read_video_range(path, 0.3, 0.7)
    assert len(span) == 4
    assert mean_abs_error(span, frames[3:7]) < 6.0
    with pytest.raises(video_io.VideoDecodeError, match="no frame within"):
        video_io.read_video_timestamps(path, [5.0], tolerance_s=0.04)
    with pytest.raises(ValueError, match="empty"):
        video_io.read_video_range(path, 0.5, 0.5)


def test_concatenation_shifts_each_part_to_where_the_previous_ended(tmp_path):
    first, second = moving_square_frames(7, seed=1), moving_square_frames(5, seed=2)
    video_io.write_video(tmp_path / "a.mp4", first, FPS)
    video_io.write_video(tmp_path / "b.mp4", second, FPS)
    offsets = video_io.concatenate_videos([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "ab.mp4")
    assert offsets == pytest.approx([0.0, 0.7])
    assert video_io.count_frames(tmp_path / "ab.mp4") == 12
    assert video_io.duration_s(tmp_path / "ab.mp4") == pytest.approx(1.2)
    joined = video_io.read_video(tmp_path / "ab.mp4")
    assert mean_abs_error(joined, np.concatenate([first, second])) < 6.0
    later = video_io.read_video_timestamps(tmp_path / "ab.mp4", [0.7 + 0.3], tolerance_s=0.04)
    assert mean_abs_error(later[0], second[3]) < 6.0


def test_concatenation_refuses_different_sizes(tmp_path):
    video_io.write_video(tmp_path / "a.mp4", moving_square_frames(3), FPS)
    video_io.write_video(tmp_path / "b.mp4", moving_square_frames(3, height=32, width=32), FPS)
    with pytest.raises(ValueError, match="codec and size must match"):
        video_io.concatenate_videos([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "ab.mp4")


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((3, 16, 16, 3), dtype=np.float32), r"float32 \(3, 16, 16, 3\), expected uint8"),
        (np.zeros((3, 16, 16), dtype=np.uint8), r"\(3, 16, 16\), expected uint8 \(N>0, H, W, 3\)"),
        (np.zeros((0, 16, 16, 3), dtype=np.uint8), r"\(0, 16, 16, 3\)"),
        (np.zeros((2, 15, 16, 3), dtype=np.uint8), "15x16, expected even"),
    ],
)
def test_bad_frames_are_refused(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message):
        video_io.write_video(tmp_path / "bad.mp4", frames, FPS)
    assert not (tmp_path / "bad.mp4").exists()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4 does not exist"):
        video_io.read_video(tmp_path / "nope.mp4")


def test_module_does_not_import_torch():
    code = (
        "import sys, vpp.data.video_io, vpp.data.lerobot; "
        "print(sorted(m for m in ('torch', 'pandas', 'diffusers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def one_pixel_marker_frames(num_frames: int = 6, size: int = 64) -> np.ndarray:
    """Grey frames with a single saturated red pixel: a 64 px render's goal marker."""
    frames = np.full((num_frames, size, size, 3), 120, dtype=np.uint8)
    frames[:, 31, 37] = (255, 0, 0)
    return frames


def test_full_chroma_keeps_a_one_pixel_colour_marker_that_420_loses(tmp_path):
    frames = one_pixel_marker_frames()
    lossy = (
        video_io.read_video(tmp_path / "420.mp4")
        if video_io.write_video(tmp_path / "420.mp4", frames, FPS)
        else None
    )
    video_io.write_video(tmp_path / "444.mp4", frames, FPS, codec="libx264", crf=0, pix_fmt="yuv444p")
    kept = video_io.read_video(tmp_path / "444.mp4")
    # 4:2:0 averages the marker's colour with its grey neighbours: its red channel lead collapses
    assert int(lossy[0, 31, 37, 0]) - int(lossy[0, 31, 37, 1]) < 100
    assert np.abs(kept.astype(int) - frames).max() <= 4
    assert video_io.video_info(tmp_path / "444.mp4")["video.pix_fmt"] == "yuv444p"


def test_full_chroma_takes_odd_sizes_and_refuses_encoders_without_it(tmp_path):
    odd = np.full((3, 33, 35, 3), 90, dtype=np.uint8)
    video_io.write_video(tmp_path / "odd.mp4", odd, FPS, codec="libx264", pix_fmt="yuv444p")
    assert video_io.read_video(tmp_path / "odd.mp4").shape == odd.shape
    with pytest.raises(ValueError, match="does not encode yuv444p"):
        video_io.write_video(
            tmp_path / "av1.mp4", odd[:, :32, :32], FPS, codec="libsvtav1", pix_fmt="yuv444p"
        )
    with pytest.raises(ValueError, match="pix_fmt='rgb48'"):
        video_io.write_video(tmp_path / "bad.mp4", odd[:, :32, :32], FPS, codec="libx264", pix_fmt="rgb48")


def test_concatenation_refuses_other_encoder_settings(tmp_path):
    # crf 0 switches H.264 to its lossless profile: packets of the second file would decode as garbage
    frames = moving_square_frames(4)
    video_io.write_video(tmp_path / "a.mp4", frames, FPS, codec="libx264", crf=0)
    video_io.write_video(tmp_path / "b.mp4", frames, FPS, codec="libx264", crf=23)
    with pytest.raises(ValueError, match="encoder settings differ"):
        video_io.concatenate_videos([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "ab.mp4")
