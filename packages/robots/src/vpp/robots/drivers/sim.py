"""Simulated arms in MuJoCo: a Franka FR3 and a UFACTORY xArm7 on a table with a cube.

Both implement `Robot` and stream targets like the real drivers: `send` only stores the newest
filtered target, and the simulator's own controller follows it. End-effector targets go through
a damped least-squares differential-IK step at the controller rate (`SimConfig.controller_period_s`),
joint targets through a speed-limited joint command; either ends as position-servo targets for
the arm joints, with MuJoCo's gravity compensation on the arm bodies so that the servos hold
a pose without sag.

The arm models are loaded from the packages that ship them (never copied here): the FR3 + hand
from franky-sim (`franky_sim/assets/fr3.xml`) and the xArm7 + gripper from gym-xarm 0.1.1
(`gym_xarm/tasks/assets/lift.xml`, whose mocap weld is switched off and whose joints get position
servos). gym-xarm pins mujoco<3 in its metadata but its model loads in MuJoCo 3; install it with
`pip install --no-deps gym-xarm==0.1.1` (it is only read, never imported).

`reset(seed)` starts a new episode (arm at its start pose, the cube respawned from `seed`) and
`object_position()` gives the cube's true position, for scripted experts and scoring;
`object_grasped()` says from the simulation's state whether the hand holds the cube up (see there).

Cameras ("scene", a fixed view of the table, and "wrist", on the hand) render off-screen; call
`vpp.data.offscreen_gl.ensure_offscreen_gl()` before anything imports GL (`SimArm` does it).
Each thread that reads a camera gets its own renderer, because a GL context is current in one
thread at a time.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpp.data.offscreen_gl import ensure_offscreen_gl
from vpp.robots.interfaces import (
    Camera,
    EndEffectorPose,
    GripperCommand,
    JointPositions,
    Robot,
    RobotConnectionError,
    RobotState,
)
from vpp.robots.rotations import (
    normalize_quaternion,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_rotvec,
)
from vpp.robots.safety import SafetyFilter, SafetyLimits

logger = logging.getLogger(__name__)

CAMERA_NAMES = ("scene", "wrist")
RENDER_QUALITIES = ("fast", "full")
CUBE_HALF_SIZE_M = 0.025
# A grasp counts once the cube's centre is this far above where it rests on the table while both
# fingers touch it: a cube pushed, tipped or pinched against the table stays below it.
GRASP_LIFT_M = 0.03
# Command period the default safety filter assumes (SafetyLimits' default); build_sim_arm sizes it.
_DEFAULT_COMMAND_PERIOD_S = 0.1
# Real-time stepping gives up on catching up after this much lag (a stalled process), instead of
# fast-forwarding the physics in one burst.
_MAX_CATCH_UP_S = 0.1


class SimModelNotFoundError(RuntimeError):
    """The package that ships an arm model is not installed."""


def _package_folder(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SimModelNotFoundError(
            f"package {package!r} is not installed; expected it for its arm model ({install_hint})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _mujoco_to_xyzw(quaternion_wxyz: np.ndarray) -> np.ndarray:
    return normalize_quaternion(
        np.array([quaternion_wxyz[1], quaternion_wxyz[2], quaternion_wxyz[3], quaternion_wxyz[0]])
    )


def _rotate(quaternion_xyzw: np.ndarray, vector: np.ndarray) -> np.ndarray:
    rotated = quaternion_multiply(
        quaternion_multiply(quaternion_xyzw, np.append(vector, 0.0)), quaternion_conjugate(quaternion_xyzw)
    )
    return rotated[:3]


def look_at_xyaxes(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> list[float]:
    """MuJoCo camera `xyaxes` for a camera at `eye` looking at `target` (it looks along -z), with
    `up` (default +z) giving the image's upward direction."""
    up = np.array([0.0, 0.0, 1.0]) if up is None else up
    forward = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    camera_up = np.cross(right, forward)
    return [*right.tolist(), *camera_up.tolist()]


@dataclass(frozen=True)
class SimConfig:
    image_height: int = 128
    image_width: int = 128
    # Rate of the simulator's own controller (differential IK / joint command update).
    controller_period_s: float = 0.01
    # True: a background thread advances physics with the wall clock from connect() on.
    # False: physics only moves in `advance()` (deterministic tests).
    realtime: bool = True
    ik_damping: float = 0.05
    # Fraction of the remaining pose error the IK removes per controller period.
    ik_gain: float = 0.5
    max_joint_speed_rad_s: float = 2.0
    nullspace_gain: float = 0.05
    # Cube position jitter (metres, uniform in +-range on x and y) drawn from `seed`.
    object_jitter_m: float = 0.05
    seed: int = 0
    # Where the tool centre point starts (base frame, metres; the orientation stays the home
    # pose's): None for the model's home pose, "ready" for the arm's `ready_tcp_position`.
    start_tcp_position: tuple[float, float, float] | str | None = None
    # "fast": no shadows, no multisampling, and low-poly meshes where the model has them (the
    # FR3's collision meshes: 3 k triangles instead of 240 k); in software GL (Mesa llvmpipe)
    # that is ~5 ms a view instead of ~90 ms, which is what lets a 10 Hz loop render two cameras.
    # "full": the model's own visual meshes and lighting.
    render_quality: str = "fast"

    def __post_init__(self) -> None:
        if self.image_height % 2 or self.image_width % 2 or min(self.image_height, self.image_width) < 16:
            raise ValueError(
                f"image size {self.image_height}x{self.image_width}; expected even sides of at least 16 pixels"
            )
        if isinstance(self.start_tcp_position, str) and self.start_tcp_position != "ready":
            raise ValueError(
                f"start_tcp_position={self.start_tcp_position!r}; expected None, 'ready' or (x, y, z)"
            )
        if self.render_quality not in RENDER_QUALITIES:
            raise ValueError(f"render_quality={self.render_quality!r}; expected one of {RENDER_QUALITIES}")
        for name in ("controller_period_s", "ik_damping", "ik_gain", "max_joint_speed_rad_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}; expected > 0")


class SimCamera(Camera):
    def __init__(self, arm: SimArm, name: str):
        if name not in CAMERA_NAMES:
            raise ValueError(f"camera {name!r}; expected one of {CAMERA_NAMES}")
        self.arm = arm
        self.name = name

    def read(self) -> np.ndarray:
        return self.arm.render(self.name)

    def close(self) -> None:
        """Renderers belong to the arm and are freed by its close()."""


class SimArm(Robot):
    """A MuJoCo arm on a table; subclasses say which model and how its gripper works."""

    arm_joint_names: tuple[str, ...]
    robot_type: str
    # (group of the visual meshes, group of their low-poly twins) for render_quality="fast";
    # None where the model has no low-poly twin of its visual meshes.
    low_poly_mesh_groups: tuple[int, int] | None = None
    # A start pose low over the table with the gripper pointing down (base frame): close enough to
    # the cube for short demonstrations, high enough to clear it anywhere in its spawn area.
    ready_tcp_position: tuple[float, float, float]
    # The two sides of the gripper, each as the bodies whose subtrees touch an object held
    # between them (for `object_held`).
    finger_bodies: tuple[tuple[str, ...], tuple[str, ...]]

    def __init__(self, config: SimConfig | None = None, safety_filter: SafetyFilter | None = None):
        # The clock is read only once commands flow, after the physics below exists.
        super().__init__(safety_filter or self.make_safety_filter(_DEFAULT_COMMAND_PERIOD_S))
        self.config = config or SimConfig()
        ensure_offscreen_gl()
        import mujoco

        self._mujoco = mujoco
        spec = self._build_spec()
        self._add_scene(spec)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        self._render_data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        self._lock = threading.RLock()
        self._renderers: dict[int, object] = {}
        self._renderers_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._connected = False
        self._joint_qpos = np.array([self.model.joint(n).qposadr[0] for n in self.arm_joint_names])
        self._joint_dof = np.array([self.model.joint(n).dofadr[0] for n in self.arm_joint_names])
        self._joint_range = np.array([self.model.joint(n).range for n in self.arm_joint_names])
        self._arm_actuators = np.array(
            [self.model.actuator(f"vpp_servo_{n}").id for n in self.arm_joint_names]
        )
        self._ee_site = self.model.site("vpp_tcp").id
        self._base_body = self.model.body(self.base_body_name).id
        self._cube_qpos = self.model.joint(self.model.body("vpp_cube").jntadr[0]).qposadr[0]
        self._cube_dof = self.model.joint(self.model.body("vpp_cube").jntadr[0]).dofadr[0]
        self._cube_body = self.model.body("vpp_cube").id
        self._finger_subtrees = tuple(self._subtree_bodies(roots) for roots in self.finger_bodies)
        self._scene_option = mujoco.MjvOption()
        if self.config.render_quality == "fast":
            self.model.light_castshadow[:] = 0
            self.model.vis.quality.offsamples = 0
            if self.low_poly_mesh_groups is not None:
                high_poly, low_poly = self.low_poly_mesh_groups
                self._scene_option.geomgroup[high_poly] = 0
                self._scene_option.geomgroup[low_poly] = 1
        self._start_joints: np.ndarray | None = None
        self._reset_state()
        if self.config.start_tcp_position is not None:
            self._start_joints = self._joints_reaching(
                self.ready_tcp_position
                if self.config.start_tcp_position == "ready"
                else self.config.start_tcp_position
            )
            self._reset_state()

    # -- model -----------------------------------------------------------------------------

    base_body_name: str
    # The arm kind of `SafetyFilter.for_arm`: its limits and forward kinematics.
    safety_kind: str

    @classmethod
    def default_limits(cls) -> SafetyLimits:
        return SafetyLimits.for_arm(cls.safety_kind)

    def make_safety_filter(self, control_period_s: float) -> SafetyFilter:
        """This arm's filter for commands every `control_period_s`, with its forward kinematics, on
        simulated time: the physics may run behind the wall clock (a busy machine, or
        realtime=False, where it moves only in advance()), and the speed caps hold for the arm."""
        return SafetyFilter.for_arm(self.safety_kind, control_period_s, clock=self.simulated_time)

    @abstractmethod
    def _build_spec(self):
        """The arm's MjSpec with a `vpp_tcp` site, `vpp_servo_<joint>` servos and a `wrist` camera."""

    @abstractmethod
    def _home_joints(self) -> np.ndarray: ...

    @abstractmethod
    def _table_top(self) -> tuple[np.ndarray, float]:
        """(centre of the cube's spawn area in world x/y, table-top height) for the scene."""

    @abstractmethod
    def _apply_gripper(self, opening: float) -> None:
        """Sets the gripper controls for `opening` in [0, 1]; called every physics step."""

    @abstractmethod
    def _read_gripper(self) -> float: ...

    def _add_scene(self, spec) -> None:
        mujoco = self._mujoco
        centre, top = self._table_top()
        cube = spec.worldbody.add_body(
            name="vpp_cube", pos=self._cube_spawn_position(self.config.seed).tolist()
        )
        cube.add_freejoint()
        cube.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[CUBE_HALF_SIZE_M] * 3,
            rgba=[0.85, 0.15, 0.1, 1.0],
            density=500,
        )
        # Steep and close enough that the 5 cm cube still covers a few pixels at 32 px (the tiny
        # TVP's image size), with the arm's lower links in view.
        eye = np.array([centre[0] + 0.5, centre[1], top + 0.7])
        target = np.array([centre[0] - 0.05, centre[1], top + 0.12])
        spec.worldbody.add_camera(name="scene", pos=eye.tolist(), xyaxes=look_at_xyaxes(eye, target), fovy=55)
        spec.worldbody.add_light(
            pos=[centre[0], centre[1], top + 2.0], dir=[0, 0, -1], diffuse=[0.7, 0.7, 0.7], directional=True
        )

    def _cube_spawn_position(self, seed: int) -> np.ndarray:
        """World position of the cube's centre, resting on the table, jittered by `seed`."""
        centre, top = self._table_top()
        jitter = np.random.default_rng(seed).uniform(
            -self.config.object_jitter_m, self.config.object_jitter_m, size=2
        )
        return np.array([centre[0] + jitter[0], centre[1] + jitter[1], top + CUBE_HALF_SIZE_M])

    def _subtree_bodies(self, roots: tuple[str, ...]) -> frozenset[int]:
        """Ids of the bodies `roots` and every body below them."""
        members = {self.model.body(name).id for name in roots}
        # Bodies are numbered parents first, so one pass in id order collects every descendant.
        for body in range(self.model.nbody):
            if self.model.body_parentid[body] in members:
                members.add(body)
        return frozenset(members)

    @staticmethod
    def _add_servos(spec, joint_names: tuple[str, ...], kp: float, kv: float) -> None:
        import mujoco

        for name in joint_names:
            actuator = spec.add_actuator(
                name=f"vpp_servo_{name}", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT
            )
            actuator.gaintype = mujoco.mjtGain.mjGAIN_FIXED
            actuator.biastype = mujoco.mjtBias.mjBIAS_AFFINE
            actuator.gainprm[0] = kp
            actuator.biasprm[:3] = [0.0, -kp, -kv]

    @staticmethod
    def _compensate_gravity(body) -> None:
        while body is not None:
            body.gravcomp = 1.0
            children = body.bodies
            for child in children[1:]:
                SimArm._compensate_gravity(child)
            body = children[0] if children else None

    # -- state -----------------------------------------------------------------------------

    def _reset_state(self) -> None:
        mujoco = self._mujoco
        mujoco.mj_resetData(self.model, self.data)
        home = self._start_joints.copy() if self._start_joints is not None else self._home_joints()
        self.data.qpos[self._joint_qpos] = home
        self._joint_command = home.copy()
        self._pose_target: tuple[np.ndarray, np.ndarray] | None = None
        self._joint_target: np.ndarray | None = None
        self._gripper_target = 1.0
        self._home = home.copy()
        self.data.ctrl[self._arm_actuators] = home
        mujoco.mj_forward(self.model, self.data)
        self._apply_gripper(self._gripper_target)

    def reset(self, seed: int | None = None) -> None:
        """Arm back at its start pose, gripper open, the cube respawned at the jittered position of
        `seed` (None: the config's seed): a new episode without recompiling the model."""
        with self._lock:
            self._reset_state()
            self.data.qpos[self._cube_qpos : self._cube_qpos + 3] = self._cube_spawn_position(
                self.config.seed if seed is None else seed
            )
            self.data.qpos[self._cube_qpos + 3 : self._cube_qpos + 7] = [1.0, 0.0, 0.0, 0.0]
            self.data.qvel[self._cube_dof : self._cube_dof + 6] = 0.0
            self._mujoco.mj_forward(self.model, self.data)
        self.safety_filter.reset()

    def object_position(self) -> np.ndarray:
        """The cube's centre in the base frame: simulator ground truth, for scripted experts and scoring."""
        with self._lock:
            base_position, base_quaternion = self._base_pose()
            cube = self.data.qpos[self._cube_qpos : self._cube_qpos + 3].copy()
        return _rotate(quaternion_conjugate(base_quaternion), cube - base_position)

    def object_lift_m(self) -> float:
        """How far the cube's centre is above the height at which it rests on the table."""
        _, top = self._table_top()
        with self._lock:
            return float(self.data.qpos[self._cube_qpos + 2] - (top + CUBE_HALF_SIZE_M))

    def object_held(self) -> bool:
        """Both sides of the gripper touch the cube (MuJoCo's contacts of the current state)."""
        touching = [False, False]
        with self._lock:
            for contact in self.data.contact[: self.data.ncon]:
                bodies = {
                    int(self.model.geom_bodyid[contact.geom1]),
                    int(self.model.geom_bodyid[contact.geom2]),
                }
                if self._cube_body not in bodies:
                    continue
                other = (bodies - {self._cube_body}).pop() if len(bodies) == 2 else -1
                for side, subtree in enumerate(self._finger_subtrees):
                    touching[side] |= other in subtree
        return all(touching)

    def object_grasped(self, lift_m: float = GRASP_LIFT_M) -> bool:
        """The grasp test of the demo's rollouts, from the simulation's state alone: the cube's
        centre is at least `lift_m` above its resting height and both fingers touch it, so it is
        held up by the hand (not resting on the table, tipped onto an edge or pushed along)."""
        return self.object_lift_m() >= lift_m and self.object_held()

    @property
    def num_joints(self) -> int:
        return len(self.arm_joint_names)

    def _base_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.xpos[self._base_body].copy(), _mujoco_to_xyzw(self.data.xquat[self._base_body])

    def _tcp_world(self) -> tuple[np.ndarray, np.ndarray]:
        quaternion = np.empty(4)
        self._mujoco.mju_mat2Quat(quaternion, self.data.site_xmat[self._ee_site])
        return self.data.site_xpos[self._ee_site].copy(), _mujoco_to_xyzw(quaternion)

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray:
        """End-effector position in the base frame for `joints` (for SafetyFilter's workspace check)."""
        with self._lock:
            scratch = self._mujoco.MjData(self.model)
            scratch.qpos[:] = self.data.qpos
            scratch.qpos[self._joint_qpos] = joints
            self._mujoco.mj_kinematics(self.model, scratch)
            base_position, base_quaternion = (
                scratch.xpos[self._base_body],
                _mujoco_to_xyzw(scratch.xquat[self._base_body]),
            )
            return _rotate(
                quaternion_conjugate(base_quaternion), scratch.site_xpos[self._ee_site] - base_position
            )

    def connect(self) -> None:
        self.safety_filter.reset()
        self._connected = True
        if self.config.realtime and self._thread is None:
            self._running.set()
            self._thread = threading.Thread(
                target=self._run_realtime, name=f"{self.robot_type}-physics", daemon=True
            )
            self._thread.start()
        logger.info("%s connected (realtime=%s)", self.robot_type, self.config.realtime)

    def _require_connected(self) -> None:
        if not self._connected:
            raise RobotConnectionError(f"{self.robot_type} is not connected; call connect() first")

    def observe(self) -> RobotState:
        self._require_connected()
        with self._lock:
            base_position, base_quaternion = self._base_pose()
            tcp_position, tcp_quaternion = self._tcp_world()
            inverse = quaternion_conjugate(base_quaternion)
            return RobotState(
                joint_positions=self.data.qpos[self._joint_qpos].copy(),
                ee_position=_rotate(inverse, tcp_position - base_position),
                ee_quaternion=normalize_quaternion(quaternion_multiply(inverse, tcp_quaternion)),
                gripper_opening=self._read_gripper(),
                timestamp=float(self.data.time),
                joint_velocities=self.data.qvel[self._joint_dof].copy(),
            )

    def _send_filtered(self, command: EndEffectorPose | JointPositions | GripperCommand) -> None:
        self._require_connected()
        with self._lock:
            if isinstance(command, EndEffectorPose):
                base_position, base_quaternion = self._base_pose()
                position = base_position + _rotate(base_quaternion, command.position)
                quaternion = normalize_quaternion(quaternion_multiply(base_quaternion, command.quaternion))
                self._pose_target, self._joint_target = (position, quaternion), None
            elif isinstance(command, JointPositions):
                self._joint_target, self._pose_target = command.positions.copy(), None
            gripper = command.opening if isinstance(command, GripperCommand) else command.gripper
            if gripper is not None:
                self._gripper_target = float(gripper)

    def stop(self) -> None:
        with self._lock:
            self._pose_target = None
            self._joint_target = None
            self._joint_command = self.data.qpos[self._joint_qpos].copy()
        self.safety_filter.reset()

    def recover(self) -> None:
        self.stop()

    def close(self) -> None:
        self.stop()
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._connected = False
        with self._renderers_lock:
            renderers, self._renderers = list(self._renderers.values()), {}
        for renderer in renderers:
            renderer.close()

    # -- simulation ------------------------------------------------------------------------

    def simulated_time(self) -> float:
        """Seconds of physics run since the model was built."""
        with self._lock:
            return float(self.data.time)

    def advance(self, seconds: float) -> None:
        """Runs the controller and physics for `seconds` of simulated time (realtime=False)."""
        if self._thread is not None:
            raise RuntimeError(
                f"{self.robot_type} steps itself in real time; advance() is for realtime=False"
            )
        with self._lock:
            for _ in range(max(1, round(seconds / self.config.controller_period_s))):
                self._control_period()

    def _run_realtime(self) -> None:
        period = self.config.controller_period_s
        next_tick = time.monotonic()
        while self._running.is_set():
            with self._lock:
                self._control_period()
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif -delay > _MAX_CATCH_UP_S:
                logger.warning(
                    "%s physics fell %.3f s behind the wall clock; skipping ahead", self.robot_type, -delay
                )
                next_tick = time.monotonic()

    def _control_period(self) -> None:
        mujoco = self._mujoco
        period = self.config.controller_period_s
        self._update_joint_command(period)
        self.data.ctrl[self._arm_actuators] = self._joint_command
        for _ in range(max(1, round(period / self.model.opt.timestep))):
            self._apply_gripper(self._gripper_target)
            mujoco.mj_step(self.model, self.data)

    def _update_joint_command(self, period: float) -> None:
        max_step = self.config.max_joint_speed_rad_s * period
        if self._pose_target is not None:
            # IK runs on the commanded configuration, not the measured one: the servos' lag then
            # stays out of the IK loop, which converges like a pure kinematic solver.
            desired = self._joint_command + self._ik_step(self._joint_command, *self._pose_target)
        elif self._joint_target is not None:
            desired = self._joint_target
        else:
            return
        step = np.clip(desired - self._joint_command, -max_step, max_step)
        self._joint_command = np.clip(
            self._joint_command + step, self._joint_range[:, 0], self._joint_range[:, 1]
        )

    def _ik_step(self, joints: np.ndarray, position: np.ndarray, quaternion: np.ndarray) -> np.ndarray:
        """One damped least-squares step from `joints` towards a world-frame pose; returns the joint change."""
        mujoco = self._mujoco
        scratch = self._ik_data
        scratch.qpos[:] = self.data.qpos
        scratch.qpos[self._joint_qpos] = joints
        mujoco.mj_kinematics(self.model, scratch)
        mujoco.mj_comPos(self.model, scratch)
        tcp_quaternion = np.empty(4)
        mujoco.mju_mat2Quat(tcp_quaternion, scratch.site_xmat[self._ee_site])
        tcp_quaternion = _mujoco_to_xyzw(tcp_quaternion)
        error = np.concatenate(
            [
                position - scratch.site_xpos[self._ee_site],
                quaternion_to_rotvec(quaternion_multiply(quaternion, quaternion_conjugate(tcp_quaternion))),
            ]
        )
        jacobian_position = np.zeros((3, self.model.nv))
        jacobian_rotation = np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, scratch, jacobian_position, jacobian_rotation, self._ee_site)
        jacobian = np.vstack([jacobian_position, jacobian_rotation])[:, self._joint_dof]
        damping = self.config.ik_damping**2 * np.eye(6)
        pseudo_inverse = jacobian.T @ np.linalg.inv(jacobian @ jacobian.T + damping)
        step = pseudo_inverse @ (self.config.ik_gain * error)
        # The arm is redundant (7 joints for 6 DoF): drift towards home in the null space keeps
        # the elbow from wandering to the joint limits.
        nullspace = np.eye(len(step)) - pseudo_inverse @ jacobian
        return step + nullspace @ (self.config.nullspace_gain * (self._home - joints))

    def _joints_reaching(self, position: tuple[float, float, float]) -> np.ndarray:
        """Joints putting the tool centre point near a base-frame `position` in the current orientation
        (within millimetres: the IK's pull towards home leaves a small offset)."""
        _, base_quaternion = self._base_pose()
        _, tcp_quaternion = self._tcp_world()
        quaternion = normalize_quaternion(
            quaternion_multiply(quaternion_conjugate(base_quaternion), tcp_quaternion)
        )
        joints = self.solve_ik(np.asarray(position, dtype=np.float64), quaternion, iterations=1000)
        reached = self.forward_kinematics(joints)
        if np.linalg.norm(reached - np.asarray(position)) > 5e-3:
            raise ValueError(
                f"start position {list(position)} is out of the {self.robot_type}'s reach "
                f"(IK ended at {reached.round(4).tolist()})"
            )
        return joints

    def solve_ik(self, position: np.ndarray, quaternion: np.ndarray, iterations: int = 200) -> np.ndarray:
        """Joint positions reaching a base-frame pose, by kinematics only (no physics, no time)."""
        with self._lock:
            base_position, base_quaternion = self._base_pose()
            world_position = base_position + _rotate(base_quaternion, np.asarray(position, dtype=np.float64))
            world_quaternion = normalize_quaternion(
                quaternion_multiply(base_quaternion, np.asarray(quaternion, dtype=np.float64))
            )
            joints = self.data.qpos[self._joint_qpos].copy()
            for _ in range(iterations):
                step = self._ik_step(joints, world_position, world_quaternion) / self.config.ik_gain
                joints = np.clip(joints + step, self._joint_range[:, 0], self._joint_range[:, 1])
            return joints

    # -- cameras ---------------------------------------------------------------------------

    def cameras(self) -> list[SimCamera]:
        return [SimCamera(self, name) for name in CAMERA_NAMES]

    def render(self, camera: str) -> np.ndarray:
        """HxWx3 uint8 RGB frame of `camera` at the current state."""
        if camera not in CAMERA_NAMES:
            raise ValueError(f"camera {camera!r}; expected one of {CAMERA_NAMES}")
        renderer = self._renderer_for_this_thread()
        with self._lock:
            self._render_data.qpos[:] = self.data.qpos
            self._render_data.time = self.data.time
        # Kinematics on a copy: the physics lock is not held while the frame is drawn.
        self._mujoco.mj_kinematics(self.model, self._render_data)
        self._mujoco.mj_comPos(self.model, self._render_data)
        self._mujoco.mj_camlight(self.model, self._render_data)
        renderer.update_scene(self._render_data, camera=camera, scene_option=self._scene_option)
        return renderer.render().copy()

    def _renderer_for_this_thread(self):
        key = threading.get_ident()
        with self._renderers_lock:
            renderer = self._renderers.get(key)
            if renderer is None:
                renderer = self._mujoco.Renderer(
                    self.model, self.config.image_height, self.config.image_width
                )
                self._renderers[key] = renderer
            return renderer


class SimPanda(SimArm):
    """Franka FR3 + hand from franky-sim, base at the world origin on a table top at z=0."""

    arm_joint_names = tuple(f"fr3_joint{i}" for i in range(1, 8))
    robot_type = "sim_panda"
    # franky-sim's FR3 keeps its visual meshes in group 2 and convex collision meshes in group 3.
    low_poly_mesh_groups = (2, 3)
    ready_tcp_position = (0.45, 0.0, 0.3)
    finger_bodies = (("left_finger",), ("right_finger",))
    base_body_name = "base"
    safety_kind = "sim-panda"
    # Franka's flange-to-fingertip-centre offset, along the hand's z axis.
    _TCP_OFFSET_M = 0.1034
    _FINGER_TRAVEL_M = 0.04

    def _build_spec(self):
        mujoco = self._mujoco
        assets = _package_folder("franky_sim", "pip install franky-sim==1.0.4") / "assets"
        spec = mujoco.MjSpec.from_file(str(assets / "fr3.xml"))
        spec.meshdir = str(assets / "meshes")
        home = spec.key("home")
        self._home = np.array(home.qpos[:7], dtype=np.float64)
        # The keyframe covers the arm alone; the scene adds a cube, so its joint state is kept here.
        home.qpos = []
        home.ctrl = []
        for actuator in list(spec.actuators):
            if actuator.name.startswith("fr3_joint"):
                actuator.name = f"vpp_servo_{actuator.name}"
                # franky-sim damps its servos to a 0.1 s time constant (kv = kp / 10); a third
                # of that lets the arm follow streamed targets closely.
                actuator.biasprm[2] = actuator.biasprm[2] / 3.0
        hand = spec.body("hand")
        hand.add_site(name="vpp_tcp", pos=[0, 0, self._TCP_OFFSET_M])
        # Camera looks along its -z: the hand's +z (towards the fingers); mounted beside the hand.
        hand.add_camera(name="wrist", pos=[0.07, 0.0, 0.02], xyaxes=[0, 1, 0, 0.94, 0, 0.34], fovy=75)
        self._compensate_gravity(spec.body("fr3_link1"))
        table = spec.worldbody.add_body(name="vpp_table", pos=[0.45, 0.0, -0.02])
        table.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.45, 0.6, 0.02], rgba=[0.55, 0.45, 0.35, 1.0])
        return spec

    def _home_joints(self) -> np.ndarray:
        return self._home.copy()

    def _reset_state(self) -> None:
        super()._reset_state()
        for finger in ("finger_joint1", "finger_joint2"):
            self.data.joint(finger).qpos[0] = self._FINGER_TRAVEL_M
        self._mujoco.mj_forward(self.model, self.data)

    def _table_top(self) -> tuple[np.ndarray, float]:
        return np.array([0.5, 0.0]), 0.0

    def _apply_gripper(self, opening: float) -> None:
        self.data.ctrl[self.model.actuator("hand").id] = 255.0 * opening

    def _read_gripper(self) -> float:
        width = self.data.joint("finger_joint1").qpos[0] + self.data.joint("finger_joint2").qpos[0]
        return float(np.clip(width / (2 * self._FINGER_TRAVEL_M), 0.0, 1.0))


class SimXArm(SimArm):
    """UFACTORY xArm7 + gripper from gym-xarm's lift scene (table and pedestal included)."""

    arm_joint_names = tuple(f"joint{i}" for i in range(1, 8))
    robot_type = "sim_xarm7"
    # The table top is 0.11 m below this arm's base.
    ready_tcp_position = (0.4, 0.0, 0.12)
    finger_bodies = (
        ("left_outer_knuckle", "left_inner_knuckle"),
        ("right_outer_knuckle", "right_inner_knuckle"),
    )
    base_body_name = "link0"
    safety_kind = "sim-xarm"
    _GRIPPER_CLOSED_RAD = 0.85
    _GRIPPER_GAIN = 20.0

    def _build_spec(self):
        mujoco = self._mujoco
        assets = _package_folder("gym_xarm", "pip install --no-deps gym-xarm==0.1.1") / "tasks" / "assets"
        spec = mujoco.MjSpec.from_file(str(assets / "lift.xml"))
        spec.meshdir = str(assets / "mesh")
        for equality in spec.equalities:
            if equality.type == mujoco.mjtEq.mjEQ_WELD:
                equality.active = False
        spec.detach_body(spec.body("object"))
        self._add_servos(spec, self.arm_joint_names, kp=2000.0, kv=120.0)
        self._compensate_gravity(spec.body("link1"))
        link7 = spec.body("link7")
        link7.add_site(name="vpp_tcp", pos=[0, 0, 0.172])
        link7.add_camera(name="wrist", pos=[0.08, 0.0, 0.03], xyaxes=[0, 1, 0, 0.94, 0, 0.34], fovy=75)
        return spec

    def _home_joints(self) -> np.ndarray:
        return np.array([0.0, -0.2, 0.0, 0.9, 0.0, 1.1, 0.0])

    def _table_top(self) -> tuple[np.ndarray, float]:
        return np.array([1.45, 0.28]), 0.5425

    def _apply_gripper(self, opening: float) -> None:
        for joint, actuator in (("left_inner_knuckle_joint", 0), ("right_inner_knuckle_joint", 1)):
            target = self._GRIPPER_CLOSED_RAD * (1.0 - opening)
            error = target - self.data.joint(joint).qpos[0]
            self.data.ctrl[actuator] = np.clip(
                self._GRIPPER_GAIN * error - 0.5 * self.data.joint(joint).qvel[0], -1.0, 1.0
            )

    def _read_gripper(self) -> float:
        angle = self.data.joint("left_inner_knuckle_joint").qpos[0]
        return float(np.clip(1.0 - angle / self._GRIPPER_CLOSED_RAD, 0.0, 1.0))


SIM_ARMS: dict[str, type[SimArm]] = {"sim-panda": SimPanda, "sim-xarm": SimXArm}


def build_sim_arm(name: str, config: SimConfig, servo_rate_hz: float) -> SimArm:
    """A simulated arm by CLI name, its safety filter (`SimArm.make_safety_filter`) sized for
    commands at `servo_rate_hz`."""
    if name not in SIM_ARMS:
        raise ValueError(f"simulated arm {name!r}; expected one of {sorted(SIM_ARMS)}")
    if not (servo_rate_hz > 0 and np.isfinite(servo_rate_hz)):
        raise ValueError(f"servo_rate_hz={servo_rate_hz}; expected a finite positive rate")
    arm = SIM_ARMS[name](config)
    arm.safety_filter = arm.make_safety_filter(1.0 / servo_rate_hz)
    return arm
