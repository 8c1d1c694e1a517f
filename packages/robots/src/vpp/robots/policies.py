"""Built-in test policies (`hold`, `sine`), the blinded-camera control, and loading of any policy
by name, address or folder."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vpp.robots.control_loop import ACTION_DIM
from vpp.robots.interfaces import ActionPolicy

logger = logging.getLogger(__name__)


# What marks an exported artifact folder (vpp.runtime's manifest); a saved torch policy has none.
ARTIFACT_MANIFEST = "manifest.json"


class ArtifactRuntimeUnavailableError(ImportError):
    """A policy artifact was given but vpp.runtime (its ONNX runtime) cannot be imported."""


class TorchPolicyUnavailableError(ImportError):
    """A saved torch policy folder was given but vpp.policy (and torch) cannot be imported."""


@dataclass
class HoldPolicy:
    """Zero deltas and an open gripper: the arm should stay where it is."""

    chunk: int = 10

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        actions = np.zeros((self.chunk, ACTION_DIM), dtype=np.float32)
        actions[:, 6] = 1.0
        return actions


@dataclass
class SinePolicy:
    """A small horizontal circle, scripted from the observed pose: a closed-loop smoke test.

    Each chunk steers the end effector along a circle of `radius_m` around the pose it first saw,
    one `period_s` per turn, opening and closing the gripper once per turn.
    """

    radius_m: float = 0.03
    period_s: float = 4.0
    step_s: float = 0.1
    chunk: int = 10

    def __post_init__(self) -> None:
        self._circle_centre: np.ndarray | None = None

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        position = np.asarray(observation["state"][:3], dtype=np.float64)
        if self._circle_centre is None:
            self._circle_centre = position - np.array([self.radius_m, 0.0, 0.0])
        centre = self._circle_centre
        # Continue from where the arm is on the circle, so a late chunk does not make it jump.
        phase = math.atan2(position[1] - centre[1], position[0] - centre[0])
        step = 2.0 * math.pi * self.step_s / self.period_s
        actions = np.zeros((self.chunk, ACTION_DIM), dtype=np.float32)
        previous = position
        for index in range(self.chunk):
            angle = phase + (index + 1) * step
            point = centre + self.radius_m * np.array([math.cos(angle), math.sin(angle), 0.0])
            point[2] = centre[2]
            actions[index, :3] = point - previous
            actions[index, 6] = 0.5 + 0.5 * math.cos(angle)
            previous = point
        return actions


BLIND_MODES = ("first", "gray")


class BlindedPolicy:
    """The control for "does the policy use this camera?": ``policy`` acts on observations in which
    each camera of ``cameras`` shows a fixed image instead of the live one; everything else (the
    other cameras, the state) passes through unchanged.

    ``mode="first"`` holds the first frame this wrapper saw from that camera for the rest of its
    life, across episodes: the policy still sees a real scene of the task, only never the current
    one (an image-blind policy that keys on "a scene is there" scores the same). ``"gray"`` shows
    a uniform mid-gray image: out of the training distribution, so a drop can also come from the
    strange input, not only from the missing information. A success rate that holds when the camera
    is blinded means the policy did not need what the camera showed.
    """

    def __init__(
        self, policy: ActionPolicy, cameras: Sequence[str], mode: Literal["first", "gray"] = "first"
    ):
        if mode not in BLIND_MODES:
            raise ValueError(f"blind mode {mode!r}; expected one of {BLIND_MODES}")
        if not cameras:
            raise ValueError("BlindedPolicy needs at least one camera name to blind")
        self.policy = policy
        self.cameras = tuple(cameras)
        self.mode = mode
        self._held: dict[str, np.ndarray] = {}

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        missing = [name for name in self.cameras if name not in observation]
        if missing:
            raise KeyError(f"cannot blind camera(s) {missing}: the observation has {sorted(observation)}")
        blinded = dict(observation)
        for name in self.cameras:
            image = np.asarray(observation[name])
            if self.mode == "gray":
                blinded[name] = np.full_like(image, 128)
            else:
                blinded[name] = self._held.setdefault(name, image.copy())
        return self.policy.act(blinded, instruction)


BUILT_IN_POLICIES = {"hold": HoldPolicy, "sine": SinePolicy}


def load_policy(path_or_name: str, threads: int | None = None) -> ActionPolicy:
    """A built-in policy by name, a policy server's ``ws://host:port`` (`vpp-runtime serve` on a
    GPU box; the artifact runs there), an exported artifact folder (it holds ``manifest.json``)
    through vpp.runtime (`threads`: ONNX Runtime's intra-op threads, None for its default of one
    per core), or a saved torch policy folder through vpp.policy, which must be installed."""
    if path_or_name in BUILT_IN_POLICIES:
        return BUILT_IN_POLICIES[path_or_name]()
    if path_or_name.startswith(("ws://", "wss://")):
        try:
            from vpp.runtime.client import PolicyClient
        except ImportError as error:
            raise ArtifactRuntimeUnavailableError(
                f"cannot reach the policy server {path_or_name}: vpp.runtime's client is not available ({error}); "
                "install vpp-runtime"
            ) from error
        logger.info("connecting to policy server %s", path_or_name)
        return PolicyClient(path_or_name)
    folder = Path(path_or_name)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"policy {path_or_name!r} is neither a built-in ({sorted(BUILT_IN_POLICIES)}), "
            "a policy server's ws:// address, an artifact folder nor a saved torch policy folder"
        )
    if not (folder / ARTIFACT_MANIFEST).is_file():
        return _load_torch_policy(folder)
    try:
        from vpp.runtime import Policy
    except ImportError as error:
        raise ArtifactRuntimeUnavailableError(
            f"cannot load the policy artifact {folder}: the artifact runtime vpp.runtime is not available ({error}); "
            "install vpp-runtime or use a built-in policy"
        ) from error
    logger.info("loading policy artifact %s", folder)
    return Policy.load(folder, threads=threads)


def _load_torch_policy(folder: Path) -> ActionPolicy:
    # Lazy: vpp.robots runs on robot PCs without torch; vpp.policy is to its left, so evaluating
    # the torch policy before its export is an optional extra, not a dependency.
    try:
        from vpp.policy.policy import VideoPredictionPolicy
    except ImportError as error:
        raise TorchPolicyUnavailableError(
            f"{folder} holds no {ARTIFACT_MANIFEST}, so it is not an exported artifact; loading it as a saved torch "
            f"policy needs vpp-policy, which cannot be imported ({error}); install vpp-policy or export the policy "
            "with vpp-export"
        ) from error
    logger.info("loading torch policy %s", folder)
    return VideoPredictionPolicy.from_pretrained(folder).eval()
