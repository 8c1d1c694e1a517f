"""The real-camera drivers (vpp.robots.cameras) against what runs without hardware: OpenCV on video
files, image sequences and folders written here; the RealSense SDK playing back a recording that
a software device writes here; and both libraries' missing-device paths."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vpp.robots.cameras import (
    CameraBinding,
    CameraConfigError,
    CameraNotFoundError,
    CameraSettings,
    CameraStreamEndedError,
    CameraStreamError,
    GrabberCamera,
    OpenCVCamera,
    RealSenseCamera,
    StaleFrameError,
    check_resolution,
    fit_frame,
    import_pyrealsense2,
    open_camera,
    parse_camera_binding,
)
from vpp.robots.interfaces import RobotError

cv2 = pytest.importorskip("cv2")


def coloured_frames(count: int, height: int, width: int) -> np.ndarray:
    """Frame k: red = 20 k + 10, green = 200 - 10 k, blue = 30; an RGB/BGR swap or a wrong frame
    order shows at once."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    for k in range(count):
        frames[k] = (20 * k + 10, 200 - 10 * k, 30)
    return frames


def write_sequence(folder: Path, frames: np.ndarray, pattern: str = "{:04d}.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        assert cv2.imwrite(str(folder / pattern.format(index)), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def write_video_file(path: Path, frames: np.ndarray, fps: int) -> Path:
    from vpp.data.video_io import write_video

    write_video(path, frames, fps=fps, codec="libx264", crf=0, pix_fmt="yuv444p")
    return path


def read_all(camera: GrabberCamera, timeout_s: float = 10.0) -> list:
    """Every frame the camera serves until its stream ends, each once (by index)."""
    frames, deadline = {}, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            frame = camera.read_frame()
        except CameraStreamEndedError:
            return [frames[index] for index in sorted(frames)]
        frames.setdefault(frame.index, frame)
        time.sleep(0.005)
    raise AssertionError(f"the stream did not end within {timeout_s} s")


# -- fitting -----------------------------------------------------------------------------------


def test_fit_frame_crops_the_centred_square_and_resizes_it():
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[:, :8] = (0, 0, 255)  # outside the centred 48-pixel square
    image[:, -8:] = (0, 255, 0)
    image[:, 8:-8] = (255, 0, 0)
    fitted = fit_frame(image, 24)
    assert fitted.shape == (24, 24, 3) and fitted.dtype == np.uint8
    assert np.all(fitted == (255, 0, 0))
    assert fit_frame(image, None) is image
    assert fit_frame(image, 48).shape == (48, 48, 3)
    depth = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    fitted_depth = fit_frame(depth, 24, depth=True)
    assert fitted_depth.dtype == np.uint16 and set(np.unique(fitted_depth)) <= set(np.unique(depth[:, 8:-8]))
    with pytest.raises(CameraConfigError, match="without magnifying"):
        fit_frame(image, 64)


def test_check_resolution_says_which_size_to_stream():
    check_resolution("scene", "opencv:0", (640, 480), 256)
    with pytest.raises(CameraConfigError, match=r"streams 320x240.*256x256.*scene=opencv:0,size=640x480"):
        check_resolution("scene", "opencv:0,fps=30", (320, 240), 256)


# -- OpenCV ------------------------------------------------------------------------------------


def test_a_video_file_replays_in_real_time_as_newest_rgb_frames_then_ends(tmp_path):
    source = coloured_frames(8, 24, 32)
    video = write_video_file(tmp_path / "scene.mp4", source, fps=20)
    camera = OpenCVCamera("scene", str(video), CameraSettings(stream_timeout_s=5.0))
    try:
        assert camera.resolution == (32, 24) and not camera.is_device
        started = time.monotonic()
        frames = read_all(camera)
        elapsed = time.monotonic() - started
    finally:
        camera.close()
    # Paced at the file's 20 fps: 8 frames take 7 periods.
    assert elapsed >= 0.3
    assert [frame.index for frame in frames] == sorted(frame.index for frame in frames)
    assert frames[-1].index == 7
    for frame in frames:
        assert frame.image.shape == (24, 32, 3) and frame.image.dtype == np.uint8
        np.testing.assert_allclose(frame.image.mean(axis=(0, 1)), source[frame.index, 0, 0], atol=3)
    stamps = [frame.timestamp for frame in frames]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 0.25


def test_loop_replays_a_recording_past_its_end(tmp_path):
    folder = write_sequence(tmp_path / "frames", coloured_frames(3, 16, 16))
    camera = OpenCVCamera("wrist", str(folder), CameraSettings(fps=50, loop=True))
    try:
        deadline = time.monotonic() + 5.0
        while camera.frames_received < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        frame = camera.read_frame()
    finally:
        camera.close()
    assert camera.frames_received >= 8
    # Frame k of the replay is image k % 3 of the folder.
    assert tuple(frame.image[0, 0]) == tuple(coloured_frames(3, 1, 1)[frame.index % 3, 0, 0])


@pytest.mark.parametrize("layout", ["pattern", "folder"])
def test_an_image_sequence_gives_the_exact_frames_in_order(tmp_path, layout):
    source = coloured_frames(5, 12, 20)
    folder = write_sequence(tmp_path / "frames", source)
    target = str(folder / "%04d.png") if layout == "pattern" else str(folder)
    camera = OpenCVCamera("scene", target, CameraSettings(fps=40))
    try:
        frames = read_all(camera)
    finally:
        camera.close()
    assert frames[0].index == 0 and frames[-1].index == 4
    for frame in frames:
        np.testing.assert_array_equal(frame.image, source[frame.index])


def test_output_size_serves_the_centred_square_at_the_policy_size(tmp_path):
    image = np.zeros((1, 48, 64, 3), dtype=np.uint8)
    image[0, :, :8] = (0, 0, 255)
    image[0, :, 8:-8] = (255, 0, 0)
    image[0, :, -8:] = (0, 255, 0)
    folder = write_sequence(tmp_path / "frames", image)
    camera = open_camera(parse_camera_binding(f"scene=opencv:{folder},loop=1"), output_size=16)
    try:
        assert camera.resolution == (64, 48)
        frame = camera.read_frame()
        raw = camera.raw_frame()
    finally:
        camera.close()
    assert frame.image.shape == (16, 16, 3) and np.all(frame.image == (255, 0, 0))
    assert raw.image.shape == (48, 64, 3)


def test_a_frame_older_than_max_age_is_refused_not_served(tmp_path):
    folder = write_sequence(tmp_path / "frames", coloured_frames(2, 8, 8))
    # One frame a second: between frames, the newest is soon older than 0.15 s.
    camera = OpenCVCamera("scene", str(folder), CameraSettings(fps=1, max_age_s=0.15))
    try:
        frame = camera.raw_frame()
        time.sleep(max(0.0, frame.timestamp + 0.3 - time.monotonic()))
        with pytest.raises(StaleFrameError, match=r"camera 'scene'.*s old, older than max-age 0\.15 s"):
            camera.read_frame()
    finally:
        camera.close()


class ScriptedCamera(GrabberCamera):
    """A GrabberCamera whose grabs a test controls: each call takes the next item of `script`
    (an image, None for no frame, or an exception to raise), then None for ever."""

    def __init__(self, script, settings):
        super().__init__("scripted", settings, "scripted:test")
        self.script = list(script)
        self.released = threading.Event()
        self.resolution = (4, 4)
        self._start()

    def _grab(self):
        time.sleep(0.01)
        item = self.script.pop(0) if self.script else None
        if isinstance(item, Exception):
            raise item
        return None if item is None else (item, {})

    def _release(self):
        self.released.set()


def test_a_stream_that_stops_delivering_is_reported_dropped():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    camera = ScriptedCamera([image], CameraSettings(max_age_s=5.0, stream_timeout_s=0.3))
    try:
        assert camera.read_frame().index == 0
        time.sleep(0.6)
        with pytest.raises(
            CameraStreamError, match=r"no frame for 0\.\d s \(timeout 0\.3 s\); the stream dropped"
        ):
            camera.read()
    finally:
        camera.close()
    assert camera.released.is_set()
    with pytest.raises(CameraStreamError, match="is closed"):
        camera.read()


def test_a_driver_failure_ends_the_stream_with_its_cause_and_a_silent_device_times_out():
    camera = ScriptedCamera([OSError("USB transfer failed")], CameraSettings())
    try:
        with pytest.raises(CameraStreamError, match="grabbing failed: OSError: USB transfer failed"):
            camera.read()
    finally:
        camera.close()
    silent = ScriptedCamera([], CameraSettings(first_frame_timeout_s=0.2, stream_timeout_s=30.0))
    try:
        with pytest.raises(CameraStreamError, match=r"no frame within 0\.2 s of asking"):
            silent.read()
    finally:
        silent.close()


def test_camera_errors_are_robot_errors_so_the_control_loop_stops_on_them():
    assert issubclass(CameraStreamError, RobotError) and issubclass(StaleFrameError, RobotError)


def test_missing_opencv_devices_and_recordings_are_clear_errors(tmp_path):
    with pytest.raises(CameraNotFoundError, match=r"/dev/video99 does not exist; the cameras here are"):
        OpenCVCamera("scene", "/dev/video99")
    with pytest.raises(CameraNotFoundError, match=r"no camera opens at 9; the video devices here are"):
        OpenCVCamera("scene", 9)
    with pytest.raises(CameraNotFoundError, match=r"neither a camera .* nor a folder of images"):
        OpenCVCamera("scene", str(tmp_path / "missing.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraNotFoundError, match="holds no images"):
        OpenCVCamera("scene", str(tmp_path / "empty"))
    with pytest.raises(CameraNotFoundError, match="no image matches the sequence pattern"):
        OpenCVCamera("scene", str(tmp_path / "empty" / "%04d.png"))
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(CameraNotFoundError, match=r"cannot open the video|holds no readable frame"):
        OpenCVCamera("scene", str(tmp_path / "broken.mp4"))


def test_a_recording_refuses_a_size_it_cannot_change(tmp_path):
    folder = write_sequence(tmp_path / "frames", coloured_frames(1, 8, 8))
    with pytest.raises(CameraConfigError, match="size= applies to live devices"):
        OpenCVCamera("scene", str(folder), CameraSettings(size=(640, 480)))


# -- specifications ----------------------------------------------------------------------------


def test_camera_bindings_parse_with_options_and_paths_that_hold_commas():
    binding = parse_camera_binding("scene=realsense:123456789012,size=848x480,fps=15,depth=1,max-age=0.25")
    assert binding == CameraBinding(
        "scene",
        "realsense",
        "123456789012",
        {"size": "848x480", "fps": "15", "depth": "1", "max-age": "0.25"},
    )
    assert binding.spec == "realsense:123456789012,size=848x480,fps=15,depth=1,max-age=0.25"
    assert parse_camera_binding("wrist=opencv:/data/a,b/%04d.png,loop=1").target == "/data/a,b/%04d.png"
    assert parse_camera_binding("wrist=opencv:0").options == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("opencv:0", "no camera name before '='"),
        ("scene=usb:0", "unknown camera kind 'usb'"),
        ("scene=opencv:", "opencv needs a device index"),
        ("scene=opencv:0,size=big", r"size='big'; expected WIDTHxHEIGHT"),
        ("scene=opencv:0,fps=-3", r"fps='-3'; expected a positive number"),
        ("scene=opencv:0,zoom=2", "unknown option 'zoom=2'"),
        ("scene=opencv:0,depth=1", "depth= needs a realsense camera"),
        ("scene=opencv:0,fps=10,fps=20", "option 'fps' given twice"),
        ("scene=realsense:1,loop=maybe", r"loop='maybe'; expected 1 or 0"),
    ],
)
def test_bad_camera_bindings_say_what_is_expected(text, message):
    with pytest.raises(CameraConfigError, match=message):
        parse_camera_binding(text)


# -- RealSense ---------------------------------------------------------------------------------

RS_WIDTH, RS_HEIGHT, RS_FPS = 64, 48, 30
SERIAL = "000011112222"


@pytest.fixture(scope="module")
def rs():
    try:
        return import_pyrealsense2()
    except ImportError as error:
        pytest.skip(f"pyrealsense2 does not load here: {error}")


def record_realsense(rs, path: Path, colours: np.ndarray, depths: np.ndarray) -> Path:
    """Writes a RealSense recording with the SDK's own recorder, from a software device with a
    colour and a depth sensor fed `colours` (N, H, W, 3 RGB) and `depths` (N, H, W uint16, mm)."""
    device = rs.software_device()
    device.register_info(rs.camera_info.serial_number, SERIAL)
    device.register_info(rs.camera_info.name, "vpp test device")
    intrinsics = rs.intrinsics()
    intrinsics.width, intrinsics.height = RS_WIDTH, RS_HEIGHT
    intrinsics.fx = intrinsics.fy = 50.0
    intrinsics.ppx, intrinsics.ppy = RS_WIDTH / 2, RS_HEIGHT / 2
    sensors = []
    for uid, (sensor_name, stream, fmt, bpp) in enumerate(
        [
            ("RGB Camera", rs.stream.color, rs.format.rgb8, 3),
            ("Stereo Module", rs.stream.depth, rs.format.z16, 2),
        ]
    ):
        sensor = device.add_sensor(sensor_name)
        video = rs.video_stream()
        video.type, video.index, video.uid = stream, 0, uid
        video.width, video.height, video.fps, video.bpp, video.fmt = RS_WIDTH, RS_HEIGHT, RS_FPS, bpp, fmt
        video.intrinsics = intrinsics
        profile = sensor.add_video_stream(video)
        if stream == rs.stream.depth:
            sensor.add_read_only_option(rs.option.depth_units, 0.001)
        sensors.append((sensor, profile, bpp))
    recorder = rs.recorder(str(path), device)
    for sensor, profile, _ in sensors:
        sensor.open(profile)
        sensor.start(lambda frame: None)
    for index, (colour, depth) in enumerate(zip(colours, depths)):
        for (sensor, profile, bpp), pixels in zip(sensors, (colour, depth)):
            frame = rs.software_video_frame()
            frame.pixels = np.ascontiguousarray(pixels)
            frame.bpp, frame.stride = bpp, RS_WIDTH * bpp
            frame.timestamp = index * 1000.0 / RS_FPS
            frame.domain = rs.timestamp_domain.hardware_clock
            frame.frame_number = index
            frame.profile = profile.as_video_stream_profile()
            if bpp == 2:
                frame.depth_units = 0.001
            sensor.on_video_frame(frame)
        time.sleep(1.0 / RS_FPS)
    for sensor, _, _ in sensors:
        sensor.stop()
        sensor.close()
    del recorder  # the recording is written out when the recorder goes
    assert path.stat().st_size > 0
    return path


def test_a_realsense_recording_plays_back_colour_and_aligned_depth(rs, tmp_path):
    colours = coloured_frames(6, RS_HEIGHT, RS_WIDTH)
    depths = np.stack([np.full((RS_HEIGHT, RS_WIDTH), 500 + 100 * k, dtype=np.uint16) for k in range(6)])
    recording = record_realsense(rs, tmp_path / "run.db3", colours, depths)
    camera = open_camera(parse_camera_binding(f"scene=realsense:{recording},depth=1"), output_size=32)
    try:
        assert isinstance(camera, RealSenseCamera)
        assert camera.serial == SERIAL and camera.resolution == (RS_WIDTH, RS_HEIGHT)
        frames = read_all(camera)
    finally:
        camera.close()
    assert len(frames) >= 3
    for frame in frames:
        assert frame.image.shape == (32, 32, 3) and frame.depth.shape == (32, 32)
        assert frame.depth_scale == pytest.approx(0.001)
        # Which recorded frame this is, from its device timestamp; the colour and the aligned depth
        # must be that same frame's. Alignment maps depth pixels onto colour pixels and may leave
        # a few holes (0, "no depth"), so only the valid pixels are compared.
        k = round(frame.device_timestamp_ms * RS_FPS / 1000.0)
        assert np.all(frame.image == colours[k, 0, 0])
        valid = frame.depth[frame.depth > 0]
        assert valid.size >= 0.75 * frame.depth.size and np.all(valid == depths[k, 0, 0])


def test_a_realsense_serial_that_is_not_connected_is_a_clear_error(rs):
    with pytest.raises(CameraNotFoundError, match=r"no RealSense with serial number 123456789012; "):
        RealSenseCamera("scene", serial="123456789012")
    if len(rs.context().query_devices()) == 0:
        with pytest.raises(CameraNotFoundError, match="exactly one RealSense must be connected; found none"):
            open_camera(parse_camera_binding("scene=realsense:"))


def test_a_missing_realsense_recording_is_a_clear_error(rs, tmp_path):
    with pytest.raises(CameraNotFoundError, match=r"recording .*missing\.db3 does not exist"):
        open_camera(parse_camera_binding(f"scene=realsense:{tmp_path / 'missing.db3'}"))
