"""Real cameras for the arms: OpenCV (V4L2/UVC devices, and video files or image sequences for
replaying recordings) and Intel RealSense (colour, optional depth aligned to it, selected by serial
number, or a RealSense recording played back).

Every camera here works the same way:
- The constructor opens the device (``CameraNotFoundError`` when there is none, ``CameraConfigError``
  when it cannot stream the requested resolution and rate) and starts a grabber thread.
- The grabber keeps only the newest frame, stamped with the host's ``time.monotonic()`` when it
  arrived, so a slow reader never gets an old frame out of a queue.
- ``read_frame()`` hands out that newest frame as a :class:`Frame`; ``read()`` (the
  :class:`~vpp.robots.interfaces.Camera` interface) its image. A frame older than ``max_age_s``
  raises ``StaleFrameError`` instead of being served, and a stream that dropped (no frame for
  ``stream_timeout_s``, a device unplugged, a recording that ended) raises ``CameraStreamError``.
- Images are RGB uint8 (H, W, 3). :func:`fit_frame` is the one place where they are cut to what a
  policy needs: with ``output_size`` set, the largest centred square is cropped and resized to
  ``output_size`` pixels a side (area averaging; depth by nearest neighbour), which is the crop the
  runtime makes itself (``vpp.runtime.policy.resize_frames``), so a frame served at the artifact's
  image size reaches the policy unchanged and the recorded dataset holds exactly what it saw.

Cameras are bound to names by a specification (``vpp-robot run --camera NAME=SPEC``), parsed by
:func:`parse_camera_binding` and opened by :func:`open_camera`::

    opencv:0                      V4L2/UVC device 0 (also opencv:/dev/video2)
    opencv:/data/scene.mp4        a video file, replayed at its own frame rate
    opencv:/data/frames/%04d.png  an image sequence (printf pattern), at fps= (default 30)
    opencv:/data/frames           every image file of a folder, in name order
    realsense:123456789012        the RealSense with that serial number (realsense: takes the only one)
    realsense:/data/run.db3       a RealSense recording (.db3, or .bag from older SDKs), played back

followed by comma-separated options: ``size=WxH`` (devices: the resolution to stream), ``fps=N``,
``depth=1`` (RealSense: also stream depth, aligned to colour), ``loop=1`` (recordings: start again
at the end instead of ending the stream), ``max-age=S`` (seconds; default 0.5), ``timeout=S`` (no
frame for S seconds is a dropped stream; default 2).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vpp.robots.interfaces import Camera, RobotError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RECORDING_SUFFIXES = (".db3", ".bag")
DEFAULT_RECORDING_FPS = 30.0
REALSENSE_DEFAULT_SIZE = (640, 480)
REALSENSE_DEFAULT_FPS = 30
CAMERA_KINDS = ("opencv", "realsense")


class CameraError(RobotError):
    """Base class of everything a camera raises on purpose."""


class CameraUnavailableError(CameraError, ImportError):
    """The camera's library (OpenCV, pyrealsense2) is not installed or cannot load."""


class CameraNotFoundError(CameraError):
    """No device, file or serial number matches what the camera was told to open."""


class CameraConfigError(CameraError, ValueError):
    """A camera specification or setting that cannot work: a malformed option, a resolution or rate
    the device does not stream, or a resolution too small for the policy's images."""


class CameraStreamError(CameraError):
    """The stream dropped: no frame within the timeout, the device went away, or (for a recording)
    it ended."""


class CameraStreamEndedError(CameraStreamError):
    """A recording (video file, image sequence, RealSense recording) played to its end."""


class StaleFrameError(CameraError):
    """The newest frame is older than the camera's ``max_age_s``: the stream has stalled."""


@dataclass(frozen=True)
class Frame:
    """One camera frame.

    ``image``: RGB uint8 (H, W, 3), already fitted (see :func:`fit_frame`). ``timestamp``: the
    host's ``time.monotonic()`` when the frame arrived from the device (for a replayed recording:
    when it was due). ``index``: frames the grabber has received before this one. ``depth``: uint16
    (H, W) aligned to ``image``, in units of ``depth_scale`` metres (RealSense with depth only).
    ``device_timestamp_ms``: the device's own time stamp, where it has one.
    """

    image: np.ndarray
    timestamp: float
    index: int
    depth: np.ndarray | None = None
    depth_scale: float | None = None
    device_timestamp_ms: float | None = None

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.timestamp


@dataclass(frozen=True)
class CameraSettings:
    """What every camera driver takes besides its device.

    ``size`` (width, height) and ``fps``: what to ask the device for (None: its default); a
    recording plays at its own size, and at ``fps`` when given. ``output_size``: the side of the
    square images :meth:`GrabberCamera.read_frame` serves (None: the full frame). ``max_age_s``: the
    oldest frame served. ``stream_timeout_s``: how long without a frame counts as a dropped stream.
    ``first_frame_timeout_s``: how long the first read waits for a device to start streaming.
    ``loop``: a recording starts again at its end instead of ending the stream.
    """

    size: tuple[int, int] | None = None
    fps: float | None = None
    output_size: int | None = None
    max_age_s: float = 0.5
    stream_timeout_s: float = 2.0
    first_frame_timeout_s: float = 10.0
    loop: bool = False

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise CameraConfigError(f"size {self.size}; expected (width, height) in pixels, both positive")
        for name in ("fps", "max_age_s", "stream_timeout_s", "first_frame_timeout_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise CameraConfigError(f"{name} {value!r}; expected a positive number")
        if self.output_size is not None and self.output_size <= 0:
            raise CameraConfigError(f"output_size {self.output_size}; expected a positive number of pixels")


def fit_frame(image: np.ndarray, output_size: int | None, depth: bool = False) -> np.ndarray:
    """The one place where camera images are cut to a policy's input: the largest centred square,
    resized to ``output_size`` pixels a side (None: the image as it is). Colour is resampled by area
    averaging, depth (``depth=True``) by nearest neighbour, which mixes no distances.

    The runtime crops the same centred square (``vpp.runtime.policy.resize_frames``), so serving a
    frame at the artifact's ``image_size`` changes nothing the policy would not have done itself; a
    square smaller than ``output_size`` is refused rather than magnified (see
    :func:`check_resolution`)."""
    if output_size is None:
        return image
    height, width = image.shape[:2]
    side = min(height, width)
    if side < output_size:
        raise CameraConfigError(
            f"a {width}x{height} frame cannot give {output_size}x{output_size} images without magnifying it; "
            f"expected a shorter side of at least {output_size} pixels"
        )
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    if side == output_size:
        return np.ascontiguousarray(square)
    cv2 = _import_cv2()
    interpolation = cv2.INTER_NEAREST if depth else cv2.INTER_AREA
    return cv2.resize(square, (output_size, output_size), interpolation=interpolation)


def check_resolution(name: str, spec: str, resolution: tuple[int, int], image_size: int) -> None:
    """Raises CameraConfigError, saying what to change, when a camera streaming ``resolution``
    (width, height) cannot give the policy ``image_size``-pixel square images."""
    width, height = resolution
    if min(width, height) >= image_size:
        return
    raise CameraConfigError(
        f"camera {name!r} ({spec}) streams {width}x{height}, but the policy needs {image_size}x{image_size} "
        f"images, cropped from the frame's centre: a {width}x{height} frame has only a "
        f"{min(width, height)}-pixel square. Stream a resolution whose shorter side is at least {image_size} "
        f"pixels (add size=WxH to the camera, e.g. {name}={spec.split(',')[0]},size={_suggested_size(image_size)})"
    )


def _suggested_size(image_size: int) -> str:
    for width, height in ((640, 480), (848, 480), (1280, 720), (1920, 1080)):
        if height >= image_size:
            return f"{width}x{height}"
    return f"{image_size}x{image_size}"


class GrabberCamera(Camera):
    """A camera whose grabber thread keeps the newest frame; subclasses say how to grab one.

    Subclasses open their device in ``__init__``, set ``self.resolution`` (width, height of the
    frames the device delivers) and then call :meth:`_start`; they implement :meth:`_grab` and
    :meth:`_release`.
    """

    def __init__(self, name: str, settings: CameraSettings, description: str):
        self.name = name
        self.settings = settings
        self.description = description
        self.resolution: tuple[int, int] = (0, 0)
        self._condition = threading.Condition()
        self._latest: Frame | None = None
        self._error: CameraError | None = None
        self._frames = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.description})"

    # -- what drivers implement ----------------------------------------------------------------

    @abstractmethod
    def _grab(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Block for the next frame, at most about ``stream_timeout_s``; return (RGB uint8 image,
        extra Frame fields) or None when none came. Raise CameraStreamError when the stream is gone."""

    @abstractmethod
    def _release(self) -> None:
        """Release the device; called once, from close(), after the grabber has stopped."""

    # -- the grabber ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._grab_loop, name=f"vpp-camera-{self.name}", daemon=True)
        self._thread.start()

    def _grab_loop(self) -> None:
        last_frame_at = time.monotonic()
        while not self._stop.is_set():
            try:
                grabbed = self._grab()
            except CameraError as error:
                self._set_error(error)
                return
            except Exception as error:  # a driver library's own failure ends the stream, with its cause
                self._set_error(
                    CameraStreamError(f"{self._label()}: grabbing failed: {type(error).__name__}: {error}")
                )
                return
            now = time.monotonic()
            if grabbed is None:
                silent = now - last_frame_at
                if silent > self.settings.stream_timeout_s:
                    self._set_error(
                        CameraStreamError(
                            f"{self._label()}: no frame for {silent:.1f} s "
                            f"(timeout {self.settings.stream_timeout_s:g} s); "
                            "the stream dropped: check the cable and that no other program holds the device"
                        )
                    )
                    return
                continue
            image, extra = grabbed
            last_frame_at = now
            frame = Frame(image=image, timestamp=extra.pop("timestamp", now), index=self._frames, **extra)
            with self._condition:
                self._latest = frame
                self._frames += 1
                self._condition.notify_all()

    def _set_error(self, error: CameraError) -> None:
        logger.error("%s", error)
        with self._condition:
            self._error = error
            self._condition.notify_all()

    def _label(self) -> str:
        return f"camera {self.name!r} ({self.description})"

    # -- reading -------------------------------------------------------------------------------

    @property
    def frames_received(self) -> int:
        return self._frames

    def raw_frame(self, timeout_s: float | None = None) -> Frame:
        """The newest frame as the device delivered it (no fitting), waiting up to ``timeout_s``
        (default ``first_frame_timeout_s``) for the first one; the same checks as :meth:`read_frame`."""
        if self._closed:
            raise CameraStreamError(f"{self._label()} is closed")
        wait = self.settings.first_frame_timeout_s if timeout_s is None else timeout_s
        with self._condition:
            self._condition.wait_for(
                lambda: self._latest is not None or self._error is not None, timeout=wait
            )
            frame, error = self._latest, self._error
        if error is not None:
            raise error
        if frame is None:
            raise CameraStreamError(
                f"{self._label()}: no frame within {wait:g} s of asking; the device opened but does not stream"
            )
        age = frame.age()
        if age > self.settings.max_age_s:
            raise StaleFrameError(
                f"{self._label()}: the newest frame is {age:.3f} s old, "
                f"older than max-age {self.settings.max_age_s:g} s "
                f"(frame {frame.index}); the stream has stalled (a busy USB bus, or a CPU too loaded to grab) or "
                "max-age is shorter than the camera's frame period"
            )
        return frame

    def read_frame(self) -> Frame:
        """The newest frame, fitted to ``settings.output_size``; raises StaleFrameError or
        CameraStreamError rather than serving an old frame."""
        frame = self.raw_frame()
        size = self.settings.output_size
        if size is None:
            return frame
        depth = None if frame.depth is None else fit_frame(frame.depth, size, depth=True)
        return replace(frame, image=fit_frame(frame.image, size), depth=depth)

    def read(self) -> np.ndarray:
        return self.read_frame().image

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.stream_timeout_s + 5.0)
        self._release()


# -- OpenCV ------------------------------------------------------------------------------------


def _import_cv2():
    try:
        import cv2
    except ImportError as error:
        raise CameraUnavailableError(
            f"OpenCV cannot be imported ({error}); install it with `pip install vpp-robots[opencv]` "
            "(opencv-python-headless)"
        ) from error
    return cv2


@dataclass
class _ImageFolder:
    """A folder of images read in name order, with VideoCapture's read() and release()."""

    files: list[Path]
    position: int = 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.position >= len(self.files):
            return False, None
        cv2 = _import_cv2()
        image = cv2.imread(str(self.files[self.position]), cv2.IMREAD_COLOR)
        if image is None:
            raise CameraStreamError(f"cannot read image {self.files[self.position]}")
        self.position += 1
        return True, image

    def rewind(self) -> None:
        self.position = 0

    def release(self) -> None:
        pass


class OpenCVCamera(GrabberCamera):
    """A V4L2/UVC device through ``cv2.VideoCapture``, or a recording replayed in real time: a video
    file, an image sequence (``frames/%04d.png``) or a folder of images.

    ``source``: a device index (int or a string of digits), a device path (``/dev/video2``), or a
    recording's path. A device streams at the ``settings.size``/``fps`` it accepts (read back
    after asking: UVC devices pick the nearest mode they have); a recording plays at its own frame
    rate (an image sequence or folder at ``settings.fps``, default 30) and ends the stream at its
    end unless ``settings.loop``.
    """

    def __init__(self, name: str, source: int | str, settings: CameraSettings | None = None):
        settings = settings or CameraSettings()
        super().__init__(name, settings, f"opencv:{source}")
        cv2 = _import_cv2()
        self._cv2 = cv2
        self._capture: Any = None
        self.is_device, self._recording_fps = False, None
        source_text = str(source)
        if isinstance(source, int) or source_text.isdigit() or source_text.startswith("/dev/"):
            self._open_device(int(source_text) if source_text.isdigit() else source_text)
        else:
            self._open_recording(Path(source_text))
        self._next_due = time.monotonic()
        self._start()

    def _open_device(self, device: int | str) -> None:
        cv2, settings = self._cv2, self.settings
        if isinstance(device, str) and not Path(device).exists():
            raise CameraNotFoundError(
                f"{self._label()}: {device} does not exist; the cameras here are {_video_devices() or 'none'}"
            )
        capture = cv2.VideoCapture(device, cv2.CAP_V4L2) if _on_linux() else cv2.VideoCapture(device)
        if not capture.isOpened():
            capture.release()
            raise CameraNotFoundError(
                f"{self._label()}: no camera opens at {device!r}; the video devices here are "
                f"{_video_devices() or 'none'} (is it plugged in, and is the user in the 'video' group?)"
            )
        self.is_device = True
        if settings.size is not None:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, settings.size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, settings.size[1])
        if settings.fps is not None:
            capture.set(cv2.CAP_PROP_FPS, settings.fps)
        # The driver's queue would otherwise hand out frames captured several periods ago.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._capture = capture
        self.resolution = (
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        granted_fps = capture.get(cv2.CAP_PROP_FPS)
        if settings.fps is not None and granted_fps > 0 and abs(granted_fps - settings.fps) > 0.5:
            logger.warning(
                "%s: asked for %g fps, the device reports %g", self._label(), settings.fps, granted_fps
            )
        if settings.size is not None and self.resolution != tuple(settings.size):
            capture.release()
            wanted = "x".join(map(str, settings.size))
            got = "x".join(map(str, self.resolution))
            raise CameraConfigError(
                f"{self._label()}: asked for {wanted}, the device streams {got}; choose a size it has "
                "(`v4l2-ctl --list-formats-ext` lists them)"
            )

    def _open_recording(self, path: Path) -> None:
        cv2, settings = self._cv2, self.settings
        if settings.size is not None:
            raise CameraConfigError(
                f"{self._label()}: size= applies to live devices; a recording plays at the size it was recorded at"
            )
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise CameraNotFoundError(
                    f"{self._label()}: folder {path} holds no images "
                    f"(expected files ending in {', '.join(IMAGE_SUFFIXES)})"
                )
            capture: Any = _ImageFolder(files)
            fps = settings.fps or DEFAULT_RECORDING_FPS
        elif "%" in path.name:
            if not path.parent.is_dir():
                raise CameraNotFoundError(f"{self._label()}: folder {path.parent} does not exist")
            capture = cv2.VideoCapture(str(path), cv2.CAP_IMAGES)
            self._reopen = lambda: cv2.VideoCapture(str(path), cv2.CAP_IMAGES)
            if not capture.isOpened():
                capture.release()
                raise CameraNotFoundError(
                    f"{self._label()}: no image matches the sequence pattern {path.name} in {path.parent} "
                    "(a printf pattern such as %04d.png; the first file must be numbered 0 to 4)"
                )
            fps = settings.fps or DEFAULT_RECORDING_FPS
        else:
            if not path.is_file():
                raise CameraNotFoundError(
                    f"{self._label()}: {path} is neither a camera (a device index or /dev/video*), a video file, "
                    "an image-sequence pattern (%04d.png) nor a folder of images"
                )
            capture = cv2.VideoCapture(str(path))
            self._reopen = lambda: cv2.VideoCapture(str(path))
            if not capture.isOpened():
                capture.release()
                raise CameraNotFoundError(f"{self._label()}: OpenCV cannot open the video {path}")
            file_fps = capture.get(cv2.CAP_PROP_FPS)
            fps = settings.fps or (
                file_fps if math.isfinite(file_fps) and file_fps > 0 else DEFAULT_RECORDING_FPS
            )
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise CameraNotFoundError(f"{self._label()}: {path} holds no readable frame")
        self._capture, self._recording_fps = capture, fps
        self._pending_first = first
        self.resolution = (first.shape[1], first.shape[0])

    def _rewind(self) -> None:
        if isinstance(self._capture, _ImageFolder):
            self._capture.rewind()
        else:
            # Seeking back does not rewind every backend (an image sequence keeps counting up).
            self._capture.release()
            self._capture = self._reopen()

    def _grab(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        if self.is_device:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                # A V4L2 read that fails returns at once; the grab loop's timeout decides when
                # failures have lasted long enough to call the stream dropped.
                self._stop.wait(0.01)
                return None
            return self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB), {}
        return self._grab_recording()

    def _grab_recording(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        bgr = getattr(self, "_pending_first", None)
        if bgr is not None:
            self._pending_first = None
        else:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                if not self.settings.loop:
                    # The last frame is served for its whole period, as a camera would show it.
                    if self._stop.wait(max(0.0, self._next_due - time.monotonic())):
                        return None
                    raise CameraStreamEndedError(
                        f"{self._label()}: the recording ended after {self.frames_received} frames; "
                        "add loop=1 to the camera to replay it in a loop"
                    )
                self._rewind()
                ok, bgr = self._capture.read()
                if not ok or bgr is None:
                    raise CameraStreamError(
                        f"{self._label()}: cannot read the recording again from its start"
                    )
        if bgr.shape[:2] != (self.resolution[1], self.resolution[0]):
            raise CameraStreamError(
                f"{self._label()}: frame {self.frames_received} is {bgr.shape[1]}x{bgr.shape[0]}, "
                f"the recording's first frame {self.resolution[0]}x{self.resolution[1]}; expected one size"
            )
        # Replay in real time: frame k is due k frame periods after the first.
        delay = self._next_due - time.monotonic()
        if delay > 0 and self._stop.wait(delay):
            return None
        # A grabber that fell behind (a loaded CPU) skips ahead instead of replaying a burst.
        self._next_due = (
            max(self._next_due, time.monotonic() - 0.5 / self._recording_fps) + 1.0 / self._recording_fps
        )
        return self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB), {"timestamp": time.monotonic()}

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()


def _on_linux() -> bool:
    return sys.platform.startswith("linux")


def _video_devices() -> list[str]:
    return sorted(str(path) for path in Path("/dev").glob("video*"))


# -- RealSense ---------------------------------------------------------------------------------


def import_pyrealsense2():
    """pyrealsense2, loading libusb from the libusb-package wheel when the system has none (the PyPI
    wheel of pyrealsense2 links libusb-1.0.so.0 but does not ship it)."""
    try:
        import pyrealsense2
    except ImportError as error:
        if "libusb" not in str(error):
            raise CameraUnavailableError(
                f"pyrealsense2 cannot be imported ({error}); install it with `pip install vpp-robots[realsense]`"
            ) from error
        try:
            import ctypes

            import libusb_package

            ctypes.CDLL(str(libusb_package.get_library_path()), mode=ctypes.RTLD_GLOBAL)
            import pyrealsense2
        except (ImportError, OSError) as libusb_error:
            raise CameraUnavailableError(
                f"pyrealsense2 needs libusb-1.0 ({error}) and none loads ({libusb_error}); install the system's "
                "libusb-1.0-0 or `pip install libusb-package` (vpp-robots[realsense] has it)"
            ) from libusb_error
    return pyrealsense2


_RGB_CONVERSIONS = {"rgb8": None, "bgr8": (2, 1, 0), "rgba8": (0, 1, 2), "bgra8": (2, 1, 0)}


class RealSenseCamera(GrabberCamera):
    """An Intel RealSense through pyrealsense2's pipeline: RGB colour, optionally depth aligned to
    colour (``Frame.depth``, uint16 in units of ``Frame.depth_scale`` metres).

    ``serial``: the device's serial number (None: the only RealSense connected); or
    ``recording``: a file recorded by the RealSense SDK (``.db3``; ``.bag`` from SDKs before 2.56),
    played back at its recorded pace. A live device streams ``settings.size`` (default 640x480) at
    ``settings.fps`` (default 30), colour and depth at the same size; a recording at what it holds.
    ``context``: a ``pyrealsense2.context`` to look devices up in (default: a new one).
    """

    def __init__(
        self,
        name: str,
        serial: str | None = None,
        settings: CameraSettings | None = None,
        depth: bool = False,
        recording: str | Path | None = None,
        context: Any = None,
    ):
        settings = settings or CameraSettings()
        target = str(recording) if recording is not None else (serial or "")
        super().__init__(name, settings, f"realsense:{target}")
        if serial is not None and recording is not None:
            raise CameraConfigError(f"{self._label()}: give a serial number or a recording, not both")
        rs = import_pyrealsense2()
        self._rs = rs
        self.depth_enabled = depth
        self._playback = None
        self._align = rs.align(rs.stream.color) if depth else None
        self._depth_scale: float | None = None
        self._pipeline = rs.pipeline(context) if context is not None else rs.pipeline()
        config = rs.config()
        if recording is not None:
            self._configure_recording(config, Path(recording))
        else:
            self.serial = self._find_serial(serial, context)
            config.enable_device(self.serial)
            self._configure_device(config)
        try:
            profile = self._pipeline.start(config)
        except RuntimeError as error:
            raise CameraConfigError(
                f"{self._label()}: the RealSense cannot stream what was asked ({error}); "
                f"{self._supported_hint(context)}"
            ) from error
        device = profile.get_device()
        if recording is not None:
            self._playback = device.as_playback()
            self._playback.set_real_time(True)
            self.serial = device.get_info(rs.camera_info.serial_number)
        color = profile.get_stream(rs.stream.color).as_video_stream_profile()
        self.resolution = (color.width(), color.height())
        self._color_format = str(color.format()).rsplit(".", 1)[-1]
        if self._color_format not in _RGB_CONVERSIONS:
            self._pipeline.stop()
            raise CameraConfigError(
                f"{self._label()}: colour arrives as {self._color_format}; expected one of {sorted(_RGB_CONVERSIONS)}"
            )
        if depth:
            self._depth_scale = float(device.first_depth_sensor().get_depth_scale())
        self._start()

    def _find_serial(self, serial: str | None, context: Any) -> str:
        rs = self._rs
        devices = (context or rs.context()).query_devices()
        serials = [device.get_info(rs.camera_info.serial_number) for device in devices]
        if serial is None:
            if len(serials) == 1:
                return serials[0]
            found = (
                f"found {len(serials)}: {serials}" if serials else "found none (is it plugged into USB 3?)"
            )
            raise CameraNotFoundError(
                f"{self._label()}: no serial number given, so exactly one RealSense must be connected; {found}; "
                "name one with realsense:SERIAL"
            )
        if serial not in serials:
            connected = f"the connected ones are {serials}" if serials else "none is connected"
            raise CameraNotFoundError(
                f"{self._label()}: no RealSense with serial number {serial}; {connected} "
                "(`rs-enumerate-devices -s` lists them; a D400 needs a USB 3 port)"
            )
        return serial

    def _configure_device(self, config: Any) -> None:
        rs, settings = self._rs, self.settings
        width, height = settings.size or REALSENSE_DEFAULT_SIZE
        fps = int(settings.fps or REALSENSE_DEFAULT_FPS)
        if settings.fps is not None and fps != settings.fps:
            raise CameraConfigError(
                f"{self._label()}: fps {settings.fps}; a RealSense streams a whole number"
            )
        config.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
        if self.depth_enabled:
            config.enable_stream(rs.stream.depth, width, height, rs.format.z16, fps)

    def _configure_recording(self, config: Any, path: Path) -> None:
        rs, settings = self._rs, self.settings
        if not path.is_file():
            raise CameraNotFoundError(f"{self._label()}: recording {path} does not exist")
        if settings.size is not None or settings.fps is not None:
            raise CameraConfigError(
                f"{self._label()}: size= and fps= apply to live devices; a recording plays as it was recorded"
            )
        config.enable_device_from_file(str(path), repeat_playback=settings.loop)
        config.enable_stream(rs.stream.color)
        if self.depth_enabled:
            config.enable_stream(rs.stream.depth)

    def _supported_hint(self, context: Any) -> str:
        """The colour modes the device offers, for an error message."""
        rs = self._rs
        try:
            devices = (context or rs.context()).query_devices()
            modes = set()
            for device in devices:
                if device.get_info(rs.camera_info.serial_number) != getattr(self, "serial", None):
                    continue
                for sensor in device.query_sensors():
                    for profile in sensor.get_stream_profiles():
                        if profile.stream_type() == rs.stream.color and profile.is_video_stream_profile():
                            video = profile.as_video_stream_profile()
                            modes.add((video.width(), video.height(), profile.fps()))
        except RuntimeError:
            modes = set()
        if not modes:
            return "choose a size and fps the camera lists (`rs-enumerate-devices`)"
        listed = ", ".join(f"size={w}x{h},fps={f}" for w, h, f in sorted(modes))
        return f"its colour modes are {listed}"

    def _grab(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        rs = self._rs
        # A recording's end shows only as a wait that times out: poll it often enough that its end
        # is reported before the last frame turns stale.
        poll_s = 0.05 if self._playback is not None else 0.5
        timeout_ms = max(1, int(1000 * min(self.settings.stream_timeout_s, poll_s)))
        ok, frames = self._pipeline.try_wait_for_frames(timeout_ms)
        if not ok:
            if self._playback is not None and self._playback.current_status() == rs.playback_status.stopped:
                raise CameraStreamEndedError(
                    f"{self._label()}: the recording ended after {self.frames_received} frames; "
                    "add loop=1 to the camera to replay it in a loop"
                )
            return None
        arrived = time.monotonic()
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        if not color:
            return None
        # The SDK recycles its frame buffers: keep a copy, not a view.
        image = np.array(color.get_data(), copy=True)
        order = _RGB_CONVERSIONS[self._color_format]
        if order is not None:
            image = np.ascontiguousarray(image[..., list(order)])
        extra: dict[str, Any] = {"timestamp": arrived, "device_timestamp_ms": float(color.get_timestamp())}
        if self._align is not None:
            depth = frames.get_depth_frame()
            if not depth:
                return None
            extra["depth"] = np.array(depth.get_data(), copy=True)
            extra["depth_scale"] = self._depth_scale
        return image, extra

    def _release(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped: the device went away
            self._pipeline.stop()


# -- specifications ----------------------------------------------------------------------------

_OPTION = re.compile(r"^([a-z][a-z-]*)=(.*)$")
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_OPTIONS = ("size", "fps", "depth", "loop", "max-age", "timeout")


@dataclass(frozen=True)
class CameraBinding:
    """``NAME=KIND:TARGET[,OPTION=VALUE...]``, parsed: which camera serves the policy's camera NAME."""

    name: str
    kind: str
    target: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The text after ``NAME=``, as the user would write it."""
        options = "".join(f",{key}={value}" for key, value in self.options.items())
        return f"{self.kind}:{self.target}{options}"


def parse_camera_binding(text: str) -> CameraBinding:
    """Parses ``NAME=KIND:TARGET[,OPTION=VALUE...]`` (see this module's docstring), raising
    CameraConfigError with the expected form for anything else. A comma inside a path is kept:
    only a comma followed by a known ``option=`` starts an option."""
    usage = (
        "expected NAME=KIND:TARGET[,OPTION=VALUE...], e.g. scene=realsense:123456789012 or "
        "wrist=opencv:0,size=640x480 (kinds: opencv, realsense; options: " + ", ".join(_OPTIONS) + ")"
    )
    name, equals, spec = text.partition("=")
    name = name.strip()
    if not equals or not name or not re.fullmatch(r"[\w.-]+", name):
        raise CameraConfigError(f"camera binding {text!r}: no camera name before '='; {usage}")
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in CAMERA_KINDS:
        raise CameraConfigError(f"camera binding {text!r}: unknown camera kind {kind!r}; {usage}")
    pieces = rest.split(",")
    target_pieces, options = [pieces[0]], {}
    for piece in pieces[1:]:
        match = _OPTION.match(piece)
        if match is None and not options:
            target_pieces.append(piece)
            continue
        if match is None or match.group(1) not in _OPTIONS:
            raise CameraConfigError(f"camera binding {text!r}: unknown option {piece!r}; {usage}")
        if match.group(1) in options:
            raise CameraConfigError(f"camera binding {text!r}: option {match.group(1)!r} given twice")
        options[match.group(1)] = match.group(2)
    target = ",".join(target_pieces)
    if kind == "opencv" and not target:
        raise CameraConfigError(
            f"camera binding {text!r}: opencv needs a device index, /dev path or file; {usage}"
        )
    binding = CameraBinding(name, kind, target, options)
    camera_settings(binding, output_size=None)  # checks every option's value now
    return binding


def _number(binding: CameraBinding, key: str, integer: bool = False) -> float | None:
    value = binding.options.get(key)
    if value is None:
        return None
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise CameraConfigError(f"camera {binding.name!r}: {key}={value!r}; expected {kind}") from None
    if not (math.isfinite(number) and number > 0):
        raise CameraConfigError(f"camera {binding.name!r}: {key}={value!r}; expected a positive number")
    return number


def _flag(binding: CameraBinding, key: str) -> bool:
    value = binding.options.get(key, "0").lower()
    if value not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise CameraConfigError(f"camera {binding.name!r}: {key}={value!r}; expected 1 or 0")
    return value in ("1", "true", "yes", "on")


def camera_settings(binding: CameraBinding, output_size: int | None) -> CameraSettings:
    """The CameraSettings a binding's options ask for, serving ``output_size`` square images."""
    size = None
    if "size" in binding.options:
        match = _SIZE.match(binding.options["size"])
        if match is None:
            raise CameraConfigError(
                f"camera {binding.name!r}: size={binding.options['size']!r}; expected WIDTHxHEIGHT, e.g. 640x480"
            )
        size = (int(match.group(1)), int(match.group(2)))
    if "depth" in binding.options and binding.kind != "realsense":
        raise CameraConfigError(f"camera {binding.name!r}: depth= needs a realsense camera")
    settings = CameraSettings(
        size=size, fps=_number(binding, "fps"), output_size=output_size, loop=_flag(binding, "loop")
    )
    if "max-age" in binding.options:
        settings = replace(settings, max_age_s=_number(binding, "max-age"))
    if "timeout" in binding.options:
        settings = replace(settings, stream_timeout_s=_number(binding, "timeout"))
    return settings


def open_camera(binding: CameraBinding, output_size: int | None = None) -> GrabberCamera:
    """Opens the camera a binding names, serving square images of ``output_size`` pixels (None:
    whole frames). Raises CameraNotFoundError, CameraConfigError or CameraUnavailableError."""
    settings = camera_settings(binding, output_size)
    if binding.kind == "opencv":
        return OpenCVCamera(binding.name, binding.target, settings)
    depth = _flag(binding, "depth")
    target = binding.target
    if target.lower().endswith(RECORDING_SUFFIXES) or "/" in target:
        return RealSenseCamera(binding.name, settings=settings, depth=depth, recording=target)
    return RealSenseCamera(binding.name, serial=target or None, settings=settings, depth=depth)
