"""A scripted expert for the simulated arms, the source of the demonstrations a policy learns from.

`GraspCubeExpert` reads the cube's true position from the simulator (which a learned policy never
sees), moves the tool centre point above it, descends around it with the gripper open, closes the
gripper and, once it has closed on the cube, lifts it. Each chunk is planned from the observed
pose and the simulator's cube alone (no memory between calls), so it runs under the `ControlLoop`
like any policy: late chunks, dropped actions and replanning change nothing about where it goes.
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
    # How high the closed hand lifts the cube's centre above its resting height: the episode ends
    # there, past the rollouts' grasp test (GRASP_LIFT_M), so the demonstrations show the lift.
    lift_m: float = 0.06

    def grasp_point(self) -> np.ndarray:
        """Where the tool centre point closes: the cube's centre (fingertips either side of it)."""
        return self.arm.object_position()

    def holding(self, gripper_opening: float) -> bool:
        """The gripper has closed with the cube between its fingers (they stop short of shut on it)."""
        return gripper_opening < self.closed_opening and self.arm.object_held()

    def done(self, state: RobotState) -> bool:
        """The cube is held up at the lift height (the simulator's grasp test at that height)."""
        return self.arm.object_grasped(lift_m=self.lift_m)

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        grasp = self.grasp_point()
        position = np.asarray(observation["state"][:3], dtype=np.float64)
        max_step = self.speed_m_s * self.step_s
        actions = np.zeros((self.chunk, ACTION_DIM), dtype=np.float32)
        if self.holding(float(observation["state"][7])):
            # The cube moves with the hand now (and may have slid a little in the fingers): raise
            # the hand until the cube is a little above the lift height.
            lift = position + np.array(
                [0.0, 0.0, self.lift_m + self.align_tolerance_m - self.arm.object_lift_m()]
            )
            for index in range(self.chunk):
                step = self._step_towards(lift, position, max_step)
                position = position + step
                actions[index, :3] = step
            return actions
        hover = grasp + np.array([0.0, 0.0, self.hover_m])
        for index in range(self.chunk):
            aligned = np.linalg.norm(position[:2] - grasp[:2]) < self.align_tolerance_m
            # Descend only from above the cube; from anywhere else go to the approach point first,
            # so that the open fingers never sweep into the cube's side.
            target = grasp if aligned and position[2] <= hover[2] + self.align_tolerance_m else hover
            step = self._step_towards(target, position, max_step)
            position = position + step
            actions[index, :3] = step
            actions[index, 6] = 0.0 if np.linalg.norm(position - grasp) < self.grasp_tolerance_m else 1.0
        return actions

    @staticmethod
    def _step_towards(target: np.ndarray, position: np.ndarray, max_step: float) -> np.ndarray:
        error = target - position
        distance = float(np.linalg.norm(error))
        return error if distance <= max_step else error * (max_step / distance)
