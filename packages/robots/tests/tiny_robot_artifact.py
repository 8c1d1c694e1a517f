"""A tiny exported artifact for an arm, built with numpy and onnx alone (no torch, no export).

It has the arm's interface: one camera (`scene`), the 8-number state [x, y, z, qx, qy, qz, qw,
gripper] and 7-number actions (end-effector deltas and the gripper opening), as `vpp.robots`
feeds and reads them. Its two graphs are stand-ins with the real artifact's inputs and outputs (as
in packages/runtime/tests/conftest.py): features.onnx adds the means of the image and of the text
state to the noise, policy.onnx adds the means of its other inputs to half the action noise. The
action bounds are small (2 mm, 2 mrad per step), so whatever it outputs is a gentle random walk.
The manifest is written by `vpp.runtime.manifest.Manifest`, as vpp-export writes it.
"""

from __future__ import annotations

from pathlib import Path

from vpp.runtime.testing import StandInArtifact

INSTRUCTIONS = ("wave over the table",)
CAMERAS = ("scene",)
IMAGE_SIZE, CHUNK = 16, 8
STEP_M, STEP_RAD = 0.002, 0.002

ROBOT_ARTIFACT = StandInArtifact(
    cameras=CAMERAS,
    image_size=IMAGE_SIZE,
    chunk=CHUNK,
    action_low=(-STEP_M,) * 3 + (-STEP_RAD,) * 3 + (0.0,),
    action_high=(STEP_M,) * 3 + (STEP_RAD,) * 3 + (1.0,),
    state_low=(-1.0,) * 7 + (0.0,),
    state_high=(1.0,) * 8,
    instructions=INSTRUCTIONS,
    text_tokens=4,
    text_width=6,
    pooled_dim=5,
    # small text states, so that the actions' offset stays a fraction of a step
    text_scale=0.1,
    producer="vpp-robots' end-to-end tests",
)


def write_tiny_robot_artifact(folder: Path) -> Path:
    return ROBOT_ARTIFACT.write(folder)
