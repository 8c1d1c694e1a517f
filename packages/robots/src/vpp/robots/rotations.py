"""Rotation helpers on numpy arrays, without scipy.

Quaternions are scalar-last [x, y, z, w] (the order franky and scipy use), unit norm.
Rotation vectors are axis * angle in radians. Roll-pitch-yaw follows the xArm convention:
R = Rz(yaw) @ Ry(pitch) @ Rx(roll), angles about the fixed base axes.
"""

import numpy as np

_SMALL_ANGLE = 1e-9


def normalize_quaternion(quaternion: np.ndarray) -> np.ndarray:
    quaternion = np.asarray(quaternion, dtype=np.float64)
    norm = np.linalg.norm(quaternion)
    if not np.isfinite(norm) or norm < _SMALL_ANGLE:
        raise ValueError(
            f"quaternion {quaternion.tolist()} cannot be normalised; expected a non-zero finite 4-vector"
        )
    unit = quaternion / norm
    # One sign per rotation keeps comparisons and interpolation on the short arc.
    return unit if unit[3] >= 0 else -unit


def quaternion_multiply(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    x1, y1, z1, w1 = left
    x2, y2, z2, w2 = right
    return np.array(
        [
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        ]
    )


def quaternion_conjugate(quaternion: np.ndarray) -> np.ndarray:
    return np.array([-quaternion[0], -quaternion[1], -quaternion[2], quaternion[3]])


def rotvec_to_quaternion(rotvec: np.ndarray) -> np.ndarray:
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < _SMALL_ANGLE:
        return normalize_quaternion(np.array([rotvec[0] / 2, rotvec[1] / 2, rotvec[2] / 2, 1.0]))
    axis = rotvec / angle
    return normalize_quaternion(np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]]))


def quaternion_to_rotvec(quaternion: np.ndarray) -> np.ndarray:
    quaternion = normalize_quaternion(quaternion)
    vector_norm = float(np.linalg.norm(quaternion[:3]))
    if vector_norm < _SMALL_ANGLE:
        return 2.0 * quaternion[:3]
    angle = 2.0 * np.arctan2(vector_norm, quaternion[3])
    return quaternion[:3] / vector_norm * angle


def rotation_angle_between(first: np.ndarray, second: np.ndarray) -> float:
    """Smallest rotation angle (radians, in [0, pi]) taking `first` to `second`."""
    dot = abs(float(np.dot(normalize_quaternion(first), normalize_quaternion(second))))
    return 2.0 * float(np.arccos(min(1.0, dot)))


def slerp(start: np.ndarray, end: np.ndarray, fraction: float) -> np.ndarray:
    start = normalize_quaternion(start)
    end = normalize_quaternion(end)
    relative = quaternion_multiply(end, quaternion_conjugate(start))
    partial = rotvec_to_quaternion(quaternion_to_rotvec(relative) * fraction)
    return normalize_quaternion(quaternion_multiply(partial, start))


def rpy_to_quaternion(rpy: np.ndarray) -> np.ndarray:
    roll, pitch, yaw = np.asarray(rpy, dtype=np.float64) / 2.0
    cr, sr, cp, sp, cy, sy = (
        np.cos(roll),
        np.sin(roll),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(yaw),
        np.sin(yaw),
    )
    return normalize_quaternion(
        np.array(
            [
                sr * cp * cy - cr * sp * sy,
                cr * sp * cy + sr * cp * sy,
                cr * cp * sy - sr * sp * cy,
                cr * cp * cy + sr * sp * sy,
            ]
        )
    )


def quaternion_to_rpy(quaternion: np.ndarray) -> np.ndarray:
    x, y, z, w = normalize_quaternion(quaternion)
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.array([roll, pitch, yaw])
