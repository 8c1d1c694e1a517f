"""The policy server (vpp-runtime serve) and its light client, on loopback only."""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from vpp.runtime import protocol
from vpp.runtime.cli import main as runtime_cli
from vpp.runtime.client import PolicyClient, PolicyConnectionError, check_health, health_url
from vpp.runtime.errors import NonFiniteActionsError, ObservationError, UnknownInstructionError
from vpp.runtime.manifest import FORMAT_VERSION
from vpp.runtime.protocol import ProtocolError

REPO = Path(__file__).resolve().parents[3]
INSTRUCTIONS = ["open the drawer", "close the window"]


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    """The tiny two-camera artifact with state and no text encoder (so an unknown instruction
    is an error), built without torch (conftest.py)."""
    return tiny_artifact


@pytest.fixture(scope="module")
def policy(artifact):
    from vpp.runtime.policy import Policy

    return Policy.load(artifact, threads=1)


@pytest.fixture(scope="module")
def server(policy):
    from vpp.runtime.server import PolicyServer

    server = PolicyServer(policy, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture
def client(server):
    with PolicyClient(server.url, connect_timeout=5, request_timeout=60) as client:
        yield client


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "corner": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
        "state": rng.normal(size=3),
    }


def test_arrays_travel_with_dtype_shape_and_byte_order():
    arrays = {
        "image": np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
        "big_endian": np.arange(6, dtype=">f8").reshape(2, 3),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "empty": np.zeros((0, 3), np.int16),
        "flag": np.array(True),
        "complex": np.array([1 + 2j], np.complex64),
    }
    message = protocol.unpack(
        protocol.pack({"type": "t", **arrays, "scalar": np.float32(2.5), "list": [1.0, 2.0]})
    )
    for name, array in arrays.items():
        assert message[name].dtype == array.dtype and message[name].flags.writeable
        np.testing.assert_array_equal(message[name], array)
    assert message["scalar"] == np.float32(2.5) and message["list"] == [1.0, 2.0]
    with pytest.raises(ProtocolError, match="dtype object"):
        protocol.pack({"bad": np.array([None, 1], dtype=object)})
    with pytest.raises(ProtocolError, match="cannot send a set"):
        protocol.pack({"bad": {1, 2}})


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\xc1 not msgpack", "not a msgpack message"),
        (msgpack.packb([1, 2]), "not a map with a 'type'"),
        ("text", "text frame"),
        (
            msgpack.packb({"type": "t", "a": msgpack.ExtType(1, msgpack.packb(["|O", [1], b"\0" * 8]))}),
            "dtype '|O'",
        ),
        (
            msgpack.packb({"type": "t", "a": msgpack.ExtType(1, msgpack.packb(["<f4", [2, 2], b"\0" * 15]))}),
            "needs 16 bytes; got 15",
        ),
        (msgpack.packb({"type": "t", "a": msgpack.ExtType(9, b"")}), "extension type 9"),
    ],
)
def test_malformed_frames_raise_protocol_errors(frame, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.unpack(frame)


def test_client_acts_as_the_local_policy(server, client, policy):
    assert {
        k: client.metadata[k]
        for k in ("cameras", "image_size", "action_dim", "chunk", "state_dim", "instructions")
    } == {
        "cameras": ["corner", "wrist"],
        "image_size": policy.image_size,
        "action_dim": 4,
        "chunk": 4,
        "state_dim": 3,
        "instructions": INSTRUCTIONS,
    }
    assert (
        client.metadata["protocol_version"] == protocol.PROTOCOL_VERSION
        and client.metadata["format_version"] == FORMAT_VERSION
    )
    assert client.metadata["noise_shapes"] == {
        "features": list(policy.feature_noise_shape),
        "actions": [1, 4, 4],
    }
    assert client.metadata["text_encoder"] is False and client.chunk == 4 and client.cameras == policy.cameras
    obs = observation(1)
    obs["state"] = obs["state"].tolist()  # plain lists travel as they are, as a local call takes them
    noise = policy.sample_noise(np.random.default_rng(2))
    actions = client.act(obs, INSTRUCTIONS[1], noise=noise)
    assert actions.shape == (4, 4) and actions.dtype == np.float32 and actions.flags.writeable
    np.testing.assert_array_equal(actions, policy.act(obs, INSTRUCTIONS[1], noise=noise))
    timing = client.last_timing
    assert 0 < timing.infer_ms <= timing.server_total_ms <= timing.round_trip_ms
    assert timing.queue_ms >= 0 and timing.queue_ms + timing.infer_ms <= timing.server_total_ms
    assert client.metadata["max_image_side"] == policy.max_image_side


def test_bad_input_raises_what_the_local_policy_raises_and_the_connection_stays_usable(client, policy):
    good = observation()
    cases = [
        ({k: v for k, v in good.items() if k != "wrist"}, INSTRUCTIONS[0]),
        (dict(good, corner=good["corner"].astype(np.float32)), INSTRUCTIONS[0]),
        (dict(good, corner=good["corner"][..., :1]), INSTRUCTIONS[0]),
        (dict(good, state=np.array([0.0, np.nan, 0.0])), INSTRUCTIONS[0]),
        ({k: v for k, v in good.items() if k != "state"}, INSTRUCTIONS[0]),
        (good, "juggle the cups"),
        (dict(good, state=["a", "b", "c"]), INSTRUCTIONS[0]),
        (dict(good, state=np.full(3, 3e38)), INSTRUCTIONS[0]),
    ]
    for obs, instruction in cases:
        with pytest.raises((ObservationError, UnknownInstructionError, NonFiniteActionsError)) as local:
            policy.act(obs, instruction)
        with pytest.raises(type(local.value)) as remote:
            client.act(obs, instruction)
        assert type(remote.value) is type(local.value) and str(remote.value) == str(local.value)
        assert remote.value.__notes__ == [f"raised by the policy server at {client.url}"]
        assert client.last_timing.server_total_ms > 0
    with pytest.raises(
        ProtocolError,
        match=r"noise\['actions'\] is float32 \(1, 3, 4\); this policy takes float32 \(1, 4, 4\)",
    ):
        client.act(
            good, INSTRUCTIONS[0], noise=dict(policy.sample_noise(), actions=np.zeros((1, 3, 4), np.float32))
        )
    with pytest.raises(ProtocolError, match="dtype object"):  # refused before it is sent
        client.act(dict(good, state=np.array([0.0, None, 1.0], dtype=object)), INSTRUCTIONS[0])
    noise = policy.sample_noise(np.random.default_rng(3))
    np.testing.assert_array_equal(
        client.act(good, INSTRUCTIONS[0], noise=noise), policy.act(good, INSTRUCTIONS[0], noise=noise)
    )


def test_malformed_messages_get_error_replies_on_an_open_connection(server, client):
    with connect(server.url, compression=None, proxy=None, open_timeout=5) as raw:
        assert protocol.unpack(raw.recv(timeout=5))["type"] == "metadata"
        for frame, error_type, request_id in [
            (b"\xc1 garbage", "ProtocolError", None),
            ("a text frame", "ProtocolError", None),
            (protocol.pack({"type": "reset", "id": 7}), "ProtocolError", 7),
            (
                protocol.pack({"type": "act", "id": 8, "observation": [], "instruction": "x"}),
                "ProtocolError",
                8,
            ),
            (
                protocol.pack({"type": "act", "id": 9, "observation": {}, "instruction": "x", "noise": None}),
                "ObservationError",
                9,
            ),
        ]:
            raw.send(frame)
            reply = protocol.unpack(raw.recv(timeout=30))
            assert (reply["type"], reply["error"]["type"], reply["id"]) == (
                "error",
                error_type,
                request_id,
            ), reply
        # a client gone in the middle of a request does not disturb the server
        raw.send(protocol.act_request(10, observation(), INSTRUCTIONS[0], None))
    assert client.act(observation(), INSTRUCTIONS[0]).shape == (4, 4)


def test_request_timeout_skips_the_late_reply(server, policy, monkeypatch):
    act = policy.act

    def slow_act(*args, **kwargs):
        time.sleep(1.5)
        return act(*args, **kwargs)

    obs = observation()
    first, second = (policy.sample_noise(np.random.default_rng(seed)) for seed in (4, 5))
    with PolicyClient(server.url, request_timeout=0.3) as client:
        monkeypatch.setattr(policy, "act", slow_act)
        with pytest.raises(TimeoutError, match=r"within 0\.3 s"):
            client.act(obs, INSTRUCTIONS[0], noise=first)
        monkeypatch.undo()
        client.request_timeout = 60
        np.testing.assert_array_equal(
            client.act(obs, INSTRUCTIONS[0], noise=second), policy.act(obs, INSTRUCTIONS[0], noise=second)
        )


def test_compression_is_off_on_both_ends(server, client):
    """permessage-deflate cost ~10 ms an image message: the server declines it when a client
    offers it, and PolicyClient does not offer it."""
    with connect(server.url, proxy=None, open_timeout=5) as offering:  # websockets offers deflate by default
        assert "permessage-deflate" in offering.request.headers.get("Sec-WebSocket-Extensions", "")
        assert offering.response.headers.get("Sec-WebSocket-Extensions") is None
    assert client._connection.request.headers.get("Sec-WebSocket-Extensions") is None


def test_health_check_over_http_on_the_same_port(server, client, capsys):
    assert health_url("ws://gpu-box:8000") == "http://gpu-box:8000/healthz"
    assert health_url("wss://gpu-box:8443/policy") == "https://gpu-box:8443/healthz"
    with pytest.raises(ValueError, match="not a policy server address"):
        health_url("gpu-box:8000")
    # what a Kubernetes probe or `curl -f` sees: 200, JSON
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(health_url(server.url), timeout=5) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "application/json"
        report = json.loads(response.read())
    assert report["status"] == "ok" and report["protocol_version"] == protocol.PROTOCOL_VERSION
    assert report["connections"] >= 1 and report["in_flight"] == 0 and report["uptime_s"] > 0
    served = client.health()["served"]
    client.act(observation(), INSTRUCTIONS[0])
    assert check_health(server.url)["served"] == served + 1
    runtime_cli(["health", server.url])
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    port = free_port()
    with pytest.raises(
        PolicyConnectionError, match=f"no policy server answers http://127.0.0.1:{port}/healthz"
    ):
        check_health(f"ws://127.0.0.1:{port}", timeout=2)
    with pytest.raises(SystemExit, match="vpp-runtime health: no policy server answers"):
        runtime_cli(["health", f"ws://127.0.0.1:{port}", "--timeout", "2"])


def test_replies_report_queueing_apart_from_inference(server, policy, monkeypatch):
    """With several clients, a request waits for the model while it answers the others: that
    wait is queue_ms, not infer_ms."""
    act = policy.act

    def slow_act(*args, **kwargs):
        time.sleep(0.4)
        return act(*args, **kwargs)

    monkeypatch.setattr(policy, "act", slow_act)
    clients = [PolicyClient(server.url, request_timeout=60) for _ in range(2)]
    try:
        threads = [
            threading.Thread(target=client.act, args=(observation(index), INSTRUCTIONS[0]))
            for index, client in enumerate(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        timings = sorted((client.last_timing for client in clients), key=lambda timing: timing.queue_ms)
    finally:
        for client in clients:
            client.close()
    assert all(timing.infer_ms >= 400 for timing in timings), timings
    assert timings[0].queue_ms < 300 and timings[1].queue_ms >= 300, (
        timings
    )  # the second waited for the first
    for timing in timings:
        assert timing.queue_ms + timing.infer_ms <= timing.server_total_ms <= timing.round_trip_ms, timing


def test_shutdown_answers_the_request_in_flight_then_closes(policy, monkeypatch):
    """SIGTERM's path (PolicyServer.shutdown): the request in inference gets its reply, not a
    1001 close; new connections are refused and /healthz says so meanwhile; then every
    connection is closed with 1001."""
    from vpp.runtime.server import PolicyServer

    act = policy.act
    in_inference, release = threading.Event(), threading.Event()

    def held_act(*args, **kwargs):
        in_inference.set()
        release.wait(timeout=30)
        return act(*args, **kwargs)

    server = PolicyServer(policy, "127.0.0.1", 0)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    obs, noise = observation(11), policy.sample_noise(np.random.default_rng(11))
    expected = policy.act(obs, INSTRUCTIONS[0], noise=noise)
    busy, idle = (PolicyClient(server.url, request_timeout=60) for _ in range(2))
    replies: dict[str, object] = {}

    def ask():
        try:
            replies["actions"] = busy.act(obs, INSTRUCTIONS[0], noise=noise)
        except Exception as error:  # the test reads it below
            replies["error"] = error

    monkeypatch.setattr(policy, "act", held_act)
    asking = threading.Thread(target=ask)
    asking.start()
    assert in_inference.wait(timeout=30)
    stopping = threading.Thread(target=server.shutdown)
    stopping.start()
    try:
        deadline = time.monotonic() + 10
        while check_health(server.url)["status"] != "shutting_down":
            assert time.monotonic() < deadline, "the health check never said shutting_down"
            time.sleep(0.05)
        assert check_health(server.url)["in_flight"] == 1
        with pytest.raises(PolicyConnectionError, match="503"):
            PolicyClient(server.url, connect_timeout=5)
        assert stopping.is_alive()  # waiting for the request in flight
    finally:
        release.set()
        stopping.join(timeout=30)
        asking.join(timeout=30)
    monkeypatch.undo()
    assert not stopping.is_alive() and not asking.is_alive()
    assert "error" not in replies, replies.get("error")
    np.testing.assert_array_equal(replies["actions"], expected)
    serving.join(timeout=10)
    assert not serving.is_alive()
    for client in (busy, idle):
        with pytest.raises(PolicyConnectionError, match="is closed") as closed:
            client.act(obs, INSTRUCTIONS[0])
        assert closed.value.__cause__.rcvd.code == 1001
        client.close()
    server.shutdown()  # idempotent


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_is_a_clear_connection_error():
    port = free_port()
    with pytest.raises(
        PolicyConnectionError, match=f"cannot reach a policy server at ws://127.0.0.1:{port}.*Connect"
    ):
        PolicyClient(f"ws://127.0.0.1:{port}", connect_timeout=2)
    # a socket that accepts TCP but never answers the WebSocket handshake: the timeout bounds the wait
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.perf_counter()
        with pytest.raises(PolicyConnectionError, match=r"timeout 0\.5 s"):
            PolicyClient(f"ws://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=0.5)
        assert time.perf_counter() - started < 5


CLIENT_WITHOUT_ONNXRUNTIME = """
import sys
import numpy as np

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"onnxruntime", "torch"}:
            raise ImportError(f"{name} is blocked: the client must not need it")

sys.meta_path.insert(0, Refuse())
from vpp.runtime import ObservationError, PolicyClient

obs = dict(np.load(sys.argv[2]))
with PolicyClient(sys.argv[1]) as client:
    np.save(sys.argv[3], client.act(obs, "open the drawer", noise=dict(np.load(sys.argv[4]))))
    try:
        client.act({"corner": obs["corner"]}, "open the drawer")
    except ObservationError as error:
        print("ObservationError:", error)
assert not {"onnxruntime", "torch"} & set(sys.modules)
"""


def test_client_needs_only_numpy_msgpack_and_websockets(server, policy, tmp_path):
    obs = observation(6)
    noise = policy.sample_noise(np.random.default_rng(6))
    np.savez(tmp_path / "obs.npz", **obs)
    np.savez(tmp_path / "noise.npz", **noise)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT_WITHOUT_ONNXRUNTIME,
            server.url,
            tmp_path / "obs.npz",
            tmp_path / "actions.npy",
            tmp_path / "noise.npz",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert "ObservationError: observation has no camera 'wrist'" in result.stdout
    np.testing.assert_array_equal(
        np.load(tmp_path / "actions.npy"), policy.act(obs, "open the drawer", noise=noise)
    )


def test_cli_info_describes_the_artifact(artifact, capsys):
    runtime_cli(["info", str(artifact)])
    out = capsys.readouterr().out
    assert (
        "corner, wrist" in out
        and "chunk 4 x 4" in out
        and "'close the window'" in out
        and "no text encoder" in out
    )


def test_cli_serve_answers_and_stops_on_sigterm(artifact, policy):
    command = [
        sys.executable,
        "-m",
        "vpp.runtime.cli",
        "serve",
        str(artifact),
        "--port",
        "0",
        "--threads",
        "1",
        "--seed",
        "0",
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    log = []
    try:
        deadline = time.monotonic() + 120
        while not any("listening on ws://" in line for line in log):
            log.append(lines.get(timeout=max(deadline - time.monotonic(), 0.1)))
        url = log[-1].rsplit(" ", 1)[-1].strip()
        assert url.startswith("ws://127.0.0.1:")
        obs = observation(8)
        noise = policy.sample_noise(np.random.default_rng(8))
        with PolicyClient(url) as client:
            np.testing.assert_array_equal(
                client.act(obs, INSTRUCTIONS[0], noise=noise), policy.act(obs, INSTRUCTIONS[0], noise=noise)
            )
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait(timeout=10)
    while not lines.empty():
        log.append(lines.get())
    text = "".join(log)
    assert "warm-up chunk" in text and "request 1 'open the drawer': inference" in text and "queued" in text
    assert "SIGTERM: closing connections" in text and "policy server stopped" in text


@pytest.mark.slow
def test_client_runs_in_a_clean_venv_with_the_oldest_websockets(server, policy, tmp_path):
    """The robot PC's install: numpy, msgpack and websockets 15.0 (the lowest vpp-runtime
    allows), vpp.runtime's and vpp.data's sources on the path, no onnxruntime at all."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "numpy", "msgpack", "websockets==15.0"],
        check=True,
        timeout=600,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "vpp_source.pth").write_text(
        f"{REPO / 'packages/runtime/src'}\n{REPO / 'packages/data/src'}\n"
    )
    obs = observation(9)
    noise = policy.sample_noise(np.random.default_rng(9))
    np.savez(tmp_path / "obs.npz", **obs)
    np.savez(tmp_path / "noise.npz", **noise)
    script = (
        "import importlib.util\nassert importlib.util.find_spec('onnxruntime') is None\n"
        + CLIENT_WITHOUT_ONNXRUNTIME
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [
            str(python),
            "-c",
            script,
            server.url,
            tmp_path / "obs.npz",
            tmp_path / "actions.npy",
            tmp_path / "noise.npz",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert "ObservationError: observation has no camera 'wrist'" in result.stdout
    np.testing.assert_array_equal(
        np.load(tmp_path / "actions.npy"), policy.act(obs, "open the drawer", noise=noise)
    )
