"""Video files as uint8 RGB arrays, with PyAV only (no torch), for datasets and clip sources.

Codec choice: LeRobot v3 records AV1 (``libsvtav1``, GOP 2, CRF 30) and the PyAV wheels ship
both that encoder and the ``libdav1d`` decoder, so AV1 is the default. Where a build lacks it,
``libx264`` (H.264) and then ``mpeg4`` are used instead: every codec in
``CODEC_PREFERENCE`` is probed once by encoding and decoding a tiny clip, because a codec being
*listed* by FFmpeg does not mean this build can both write and read it.

A short GOP (keyframe every ``gop`` frames) is what makes reading a few frames from the middle
of a long, multi-episode file cheap: a seek lands on a keyframe at most ``gop - 1`` frames
before the wanted one.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

logger = logging.getLogger(__name__)

CODEC_PREFERENCE = ("libsvtav1", "libx264", "mpeg4")
DEFAULT_GOP = 2
DEFAULT_CRF = 30
PIX_FMT = "yuv420p"
# 4:2:0 halves chroma in both directions, which at 64 px turns a one-pixel red goal marker nearly
# white (MetaWorld's reach: PSNR ~30 dB, 2% of pixels off by more than 40); 4:4:4 keeps every
# pixel's colour, and H.264 at crf 0 in 4:4:4 gives 56 dB there for 2.7x the bytes.
PIX_FMTS = ("yuv420p", "yuv444p")
# Encoders that take 4:4:4 input (SVT-AV1 encodes 4:2:0 only).
ENCODERS_444 = {"libx264", "libx265", "libvpx-vp9"}

# Stream codec names (what a decoder reports, and what LeRobot stores as ``video.codec``)
# mapped to the encoder that produces them, so a resumed recording appends with the same codec.
ENCODER_FOR_CODEC = {
    "av1": "libsvtav1",
    "h264": "libx264",
    "mpeg4": "mpeg4",
    "hevc": "libx265",
    "vp9": "libvpx-vp9",
}


class VideoDecodeError(RuntimeError):
    """A video that cannot give the frames asked for (missing frames, timestamps out of range)."""


def _codec_options(codec: str, gop: int, crf: int | None) -> dict[str, str]:
    options = {"g": str(gop)}
    if codec == "libsvtav1":
        options.update({"crf": str(DEFAULT_CRF if crf is None else crf), "preset": "12"})
    elif codec in ("libx264", "h264", "libx265"):
        # No B-frames: their negative start dts would overlap the previous file's last packets when
        # episodes are joined (concatenate_videos), and with a 2-frame GOP they save nothing.
        options.update({"crf": str(23 if crf is None else crf), "bf": "0"})
    elif codec == "mpeg4":
        # mpeg4 has no CRF; a fixed quantiser keeps quality close to the others.
        options.update({"qscale": "3"})
    return options


@functools.cache
def codec_works(codec: str) -> bool:
    """Whether this PyAV build can encode ``codec`` into mp4 and decode the result."""
    import tempfile

    frames = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    frames[:, :32] = 200
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.mp4"
        try:
            _encode(path, frames, 10, codec, DEFAULT_GOP, None)
            decoded = read_video(path)
        except (av.FFmpegError, ValueError, VideoDecodeError) as error:
            logger.debug("codec %s unusable here: %s", codec, error)
            return False
    return decoded.shape == frames.shape


def default_codec() -> str:
    """The first codec of ``CODEC_PREFERENCE`` that this build encodes and decodes."""
    for codec in CODEC_PREFERENCE:
        if codec_works(codec):
            return codec
    raise RuntimeError(
        f"none of the video codecs {CODEC_PREFERENCE} can both encode and decode with PyAV {av.__version__}"
    )


def check_pix_fmt(codec: str, pix_fmt: str) -> None:
    if pix_fmt not in PIX_FMTS:
        raise ValueError(f"pix_fmt={pix_fmt!r}; expected one of {PIX_FMTS}")
    if pix_fmt != "yuv420p" and codec not in ENCODERS_444:
        raise ValueError(
            f"codec {codec!r} does not encode {pix_fmt}; expected one of {sorted(ENCODERS_444)} for it"
        )


def _check_frames(frames: np.ndarray, pix_fmt: str = PIX_FMT) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"video frames: got {frames.dtype} {frames.shape}, expected uint8 (N>0, H, W, 3)")
    height, width = frames.shape[1:3]
    if pix_fmt == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(
            f"video frames: got {height}x{width}, expected even height and width ({pix_fmt} halves chroma)"
        )
    return np.ascontiguousarray(frames)


def _encode(
    path: Path,
    frames: np.ndarray,
    fps: int | float | Fraction,
    codec: str,
    gop: int,
    crf: int | None,
    pix_fmt: str = PIX_FMT,
) -> None:
    # SVT-AV1 prints its banner to stderr at every encoder start unless told otherwise.
    os.environ.setdefault("SVT_LOG", "1")
    rate = Fraction(fps).limit_denominator(1001)
    time_base = 1 / rate
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate, options=_codec_options(codec, gop, crf))
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.time_base = time_base
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            # Exact pts (index / fps) is what lets readers locate frames by timestamp.
            frame.pts = index
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int | float | Fraction,
    codec: str | None = None,
    gop: int = DEFAULT_GOP,
    crf: int | None = None,
    pix_fmt: str = PIX_FMT,
) -> str:
    """Encode uint8 (N, H, W, 3) frames into an mp4 at ``path``; returns the encoder used.

    ``codec=None`` picks ``default_codec()``. Frame i gets the timestamp i / fps exactly.
    ``pix_fmt="yuv444p"`` (with an encoder in ``ENCODERS_444``) keeps full-resolution colour.
    """
    codec = codec or default_codec()
    check_pix_fmt(codec, pix_fmt)
    frames = _check_frames(frames, pix_fmt)
    if fps <= 0:
        raise ValueError(f"fps={fps}; expected > 0")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _encode(path, frames, fps, codec, gop, crf, pix_fmt)
    return codec


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _open(path: str | Path) -> tuple[Path, av.container.InputContainer]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    return path, av.open(str(path))


def read_video(path: str | Path, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) frames by decode order; ``indices`` picks some (any order, repeats allowed).

    Decoding stops after the largest index asked for. Frames are counted in decode order, which
    is right for any container, including variable frame rate ones.
    """
    path, container = _open(path)
    with container:
        stream = _video_stream(container, path)
        if indices is None:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            if not frames:
                raise VideoDecodeError(f"{path}: no frame decoded")
            return np.stack(frames)
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(wanted) == 0:
            return np.zeros((0, stream.height, stream.width, 3), dtype=np.uint8)
        if wanted.min() < 0:
            raise IndexError(f"{path}: frame index {int(wanted.min())} < 0")
        needed = set(wanted.tolist())
        last = int(wanted.max())
        decoded: dict[int, np.ndarray] = {}
        for number, frame in enumerate(container.decode(stream)):
            if number in needed:
                decoded[number] = frame.to_ndarray(format="rgb24")
            if number >= last:
                break
    if last not in decoded:
        raise IndexError(f"{path}: frame index {last} out of range; the video has {number + 1} frames")
    return np.stack([decoded[i] for i in wanted.tolist()])


def read_video_timestamps(
    path: str | Path, timestamps_s: Sequence[float] | np.ndarray, tolerance_s: float
) -> np.ndarray:
    """uint8 frames whose presentation time is nearest each of ``timestamps_s`` (seconds).

    Seeks to the keyframe before the earliest timestamp and decodes only up to the latest one,
    so frames of one episode inside a long multi-episode file cost only their own GOPs. A
    timestamp with no frame within ``tolerance_s`` raises ``VideoDecodeError``.
    """
    targets = np.asarray(timestamps_s, dtype=np.float64).reshape(-1)
    path, container = _open(path)
    with container:
        stream = _video_stream(container, path)
        if len(targets) == 0:
            return np.zeros((0, stream.height, stream.width, 3), dtype=np.uint8)
        order = sorted(set(targets.tolist()))
        best: dict[float, tuple[float, np.ndarray]] = {}
        container.seek(max(int(order[0] / stream.time_base), 0), stream=stream, backward=True)
        latest_seen = None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            time_s = float(frame.pts * stream.time_base)
            latest_seen = time_s
            lo = bisect.bisect_left(order, time_s - tolerance_s)
            hi = bisect.bisect_right(order, time_s + tolerance_s)
            if lo < hi:
                image = frame.to_ndarray(format="rgb24")
                for target in order[lo:hi]:
                    distance = abs(time_s - target)
                    if target not in best or distance < best[target][0]:
                        best[target] = (distance, image)
            if time_s > order[-1] + tolerance_s:
                break
    missing = [t for t in order if t not in best]
    if missing:
        raise VideoDecodeError(
            f"{path}: no frame within {tolerance_s:.4g} s of timestamp(s) {missing[:5]} "
            f"(last decoded frame at {latest_seen} s)"
        )
    return np.stack([best[t][1] for t in targets.tolist()])


def read_video_range(path: str | Path, start_s: float, end_s: float) -> np.ndarray:
    """uint8 frames whose presentation time t satisfies start_s <= t < end_s."""
    if end_s <= start_s:
        raise ValueError(f"time range [{start_s}, {end_s}) is empty; expected start_s < end_s")
    path, container = _open(path)
    with container:
        stream = _video_stream(container, path)
        container.seek(max(int(start_s / stream.time_base), 0), stream=stream, backward=True)
        frames = []
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            time_s = float(frame.pts * stream.time_base)
            if time_s >= end_s:
                break
            if time_s >= start_s:
                frames.append(frame.to_ndarray(format="rgb24"))
        if not frames:
            return np.zeros((0, stream.height, stream.width, 3), dtype=np.uint8)
    return np.stack(frames)


def count_frames(path: str | Path) -> int:
    """Number of video frames, from the container header when it says, else by counting packets."""
    path, container = _open(path)
    with container:
        stream = _video_stream(container, path)
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def video_info(path: str | Path) -> dict:
    """LeRobot's per-video fields: ``video.height``, ``.width``, ``.codec``, ``.pix_fmt``, ``.fps``, ``.channels``."""
    path, container = _open(path)
    with container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        return {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.fps": round(float(rate)) if rate else None,
            "video.channels": 3,
            "has_audio": bool(container.streams.audio),
        }


def duration_s(path: str | Path) -> float:
    """End time of the last frame (pts + duration), in seconds."""
    path, container = _open(path)
    with container:
        stream = _video_stream(container, path)
        end = Fraction(0)
        for packet in container.demux(stream):
            if packet.pts is not None:
                end = max(end, (packet.pts + (packet.duration or 0)) * stream.time_base)
    return float(end)


def concatenate_videos(inputs: Sequence[str | Path], output: str | Path) -> list[float]:
    """Join mp4 files of one codec and size into ``output`` without re-encoding.

    Each input's packets are shifted to start where the previous input ended, so an input that
    started at 0 s starts at the returned offset (seconds) in the output.
    """
    if not inputs:
        raise ValueError("concatenate_videos needs at least one input")
    sources = [av.open(str(Path(p))) for p in inputs]
    try:
        streams = [_video_stream(c, Path(p)) for c, p in zip(sources, inputs, strict=True)]
        first = streams[0]
        for path, stream in zip(inputs[1:], streams[1:], strict=True):
            if (stream.codec_context.name, stream.width, stream.height) != (
                first.codec_context.name,
                first.width,
                first.height,
            ):
                raise ValueError(
                    f"cannot join {path} ({stream.codec_context.name} {stream.width}x{stream.height}) to "
                    f"{inputs[0]} ({first.codec_context.name} {first.width}x{first.height}): codec and size must match"
                )
            if stream.codec_context.extradata != first.codec_context.extradata:
                # the joined file keeps the first input's stream headers; other settings would decode as garbage
                raise ValueError(
                    f"cannot join {path} to {inputs[0]}: their encoder settings differ (stream headers; e.g. another "
                    "crf or pixel format)"
                )
        offsets: list[float] = []
        with av.open(str(output), mode="w", format="mp4") as sink:
            out_stream = sink.add_stream_from_template(template=first, opaque=True)
            out_stream.time_base = first.time_base
            offset = Fraction(0)
            for container, stream in zip(sources, streams, strict=True):
                offsets.append(float(offset))
                shift = int(offset / stream.time_base)
                end = Fraction(0)
                for packet in container.demux(stream):
                    if packet.dts is None:
                        continue
                    end = max(end, (packet.pts + (packet.duration or 0)) * stream.time_base)
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = out_stream
                    sink.mux(packet)
                offset += end
    finally:
        for container in sources:
            container.close()
    return offsets
