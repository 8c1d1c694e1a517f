"""A scripted expert for the simulated arms, the source of the demonstrations a policy learns from.

`GraspCubeExpert` reads the cube's true position from the simulator (which a learned policy never
sees), moves the tool centre point above it, descends around it with the gripper open and closes
the gripper. Each chunk is planned from the observed pose alone (no memory between calls), so it
runs under the `ControlLoop` like any policy: late chunks, dropped actions and replanning change
nothing about where it goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpp.robots.control_loop import ACTION_DIM
from vpp.robots.drivers.sim import SimArm
from vpp.robots.interfaces import RobotState

GRASP_INSTRUCTION = "grasp the red cube"


@dataclass
class GraspCubeExpert:
    arm: SimArm
    # Below the ~0.11 m/s at which the sim arms follow a streamed target (the SafetyFilter lets a
    # target lead the measured pose by 3 servo steps only), so the recorded actions are motions
    # the arm really made.
    speed_m_s: float = 0.08
    step_s: float = 0.1
    chunk: int = 10
    # The approach point is this far above the cube's centre, high enough for open fingers to clear it.
    hover_m: float = 0.08
    # Horizontal error under which the arm stops approaching and descends.
    align_tolerance_m: float = 0.01
    # Distance to the grasp point under which the gripper closes.
    grasp_tolerance_m: float = 0.012
    # Measured opening under which the gripper counts as closed on the 5 cm cube (the Franka
    # hand stops at 5/8 of its travel on it).
    closed_opening: float = 0.75

    def grasp_point(self) -> np.ndarray:
        """Where the tool centre point ends: the cube's centre (fingertips either side of it)."""
        return self.arm.object_position()

    def done(self, state: RobotState) -> bool:
        """The fingers are around the cube and have closed on it (they stop short of shut)."""
        at_cube = np.linalg.norm(state.ee_position - self.grasp_point()) < self.grasp_tolerance_m
        return bool(at_cube and state.gripper_opening is not None and state.gripper_opening < self.closed_opening)

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        grasp = self.grasp_point()
        hover = grasp + np.array([0.0, 0.0, self.hover_m])
        position = np.asarray(observation["state"][:3], dtype=np.float64)
        max_step = self.speed_m_s * self.step_s
        actions = np.zeros((self.chunk, ACTION_DIM), dtype=np.float32)
        for index in range(self.chunk):
            aligned = np.linalg.norm(position[:2] - grasp[:2]) < self.align_tolerance_m
            # Descend only from above the cube; from anywhere else go to the approach point first,
            # so that the open fingers never sweep into the cube's side.
            target = grasp if aligned and position[2] <= hover[2] + self.align_tolerance_m else hover
            error = target - position
            distance = float(np.linalg.norm(error))
            step = error if distance <= max_step else error * (max_step / distance)
            position = position + step
            actions[index, :3] = step
            actions[index, 6] = 0.0 if np.linalg.norm(position - grasp) < self.grasp_tolerance_m else 1.0
        return actions
