"""A seeded 6-axis IMU generator: activities as motion primitives, persons, positions and devices as shifts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDataset, ArrayDatasetError

if TYPE_CHECKING:
    import numpy as np

#: every activity the generator knows, in label order
ACTIVITIES = ("walking", "running", "stairs", "sitting", "standing", "arm-raises")
GRAVITY = 9.81


class SyntheticIMU(ArrayDataset):
    """Seeded accelerometer + gyroscope windows (acc x/y/z in m/s^2, gyro x/y/z in rad/s) with controllable shifts.

    **Activities** (``activities``, any subset of :data:`ACTIVITIES`, in that label order)
    are parametric motion primitives of one body segment carrying the sensor: a pitch angle
    ``theta(t)`` (the gyroscope sees its rate, gravity turns with it) plus linear
    acceleration. ``walking`` is a periodic gait at the person's step frequency ``f`` with
    2nd and 3rd harmonics and a swing at the stride frequency ``f / 2``; ``running`` is the
    same at 1.45 ``f`` with about three times the impact and twice the swing; ``stairs``
    walks at 0.75 ``f`` leaning 12 degrees forward, with a sub-harmonic from the alternating
    step-up; ``sitting`` tilts gravity by 75 degrees and ``standing`` keeps it upright, both
    with a slow sway and an 8-12 Hz physiological tremor; ``arm-raises`` lifts the segment
    through 90 degrees at the person's exercise tempo, so gravity, the gyroscope and the
    lever-arm terms all swing widely.

    **Shifts**, each scaled by a strength (0 removes it, 1 is the default, larger is stronger):

    - ``person_shift``: person ``p`` has step frequency ``1.9 * exp(0.2 s z)`` Hz, movement
      amplitude ``exp(0.3 s z)``, harmonic weights ``0.5 + 0.3 s z`` and ``0.2 + 0.15 s z``,
      a gait style (the phases of the 2nd and 3rd harmonics, ``s * pi * tanh(z)``), an
      exercise tempo of ``0.5 * exp(0.2 s z)`` Hz and a posture offset of ``8 s z`` degrees
      (each ``z`` its own standard normal draw, ``s`` the strength).
    - ``position_shift``: position ``q`` is a rotation of the sensor axes (a random axis, an
      angle of ``s * U(30, 90)`` degrees; the rotation matrix is applied to acc and gyro), a
      lever arm ``s * U(-0.3, 0.3)`` m per axis from the segment's rotation centre (adding
      ``alpha x r + omega x (omega x r)`` to the accelerometer) and a swing gain
      ``exp(0.4 s z)``.
    - ``device_shift``: device ``d`` samples at ``rate * 2 ** (s * U(-1, 1))`` Hz (rounded;
      the windows are resampled to ``rate`` by linear interpolation, so a slow device loses
      the tremor and the impacts' harmonics), has per-axis gain errors ``1 + 0.1 s z``,
      biases ``0.8 s z`` m/s^2 and ``0.1 s z`` rad/s, and white noise of
      ``noise * (1 + 6 s u)`` (``u`` uniform in 0..1) on acc and a fifth of that on gyro.
      Of the three it is the mildest at equal strength, as in real cross-device data.

    **Sizes**: ``persons`` x ``positions`` x ``devices`` x ``sessions`` x activities
    recordings of ``duration`` seconds each (a session redraws the onset phase and the
    gait variability), cut into windows of ``window`` samples every ``stride`` samples at
    ``rate`` Hz (a device slower than ``rate`` may give one window fewer). The default,
    4 x 2 x 2 x 1 x 6 recordings of 8 s, is 624 windows of (100, 6) and builds in about
    40 ms. Each recording is drawn from a generator
    seeded by ``(seed, person, position, device, session, activity)`` and each domain's
    parameters from one seeded by ``(seed, kind, index)``, so adding persons never changes
    the recordings of the others. Domains: person ``p1..``, position ``pos1..``, device
    ``dev1..``, session ``s1..``; room is ``unknown``. There are no predefined splits.

    **Arguments**: ``name`` (registered name, default ``synthetic-imu``); ``persons``,
    ``positions``, ``devices``, ``sessions`` (4, 2, 2, 1: values per domain);
    ``activities`` (all six); ``duration`` (8 s per recording); ``rate`` (50 Hz, the common
    rate every device is resampled to); ``window`` and ``stride`` (100 and 50 samples);
    ``person_shift``, ``position_shift``, ``device_shift`` (1.0 each); ``noise`` (0.05
    m/s^2 before the device's factor); ``seed`` (0). Every argument is part of
    ``recipe_version``, so a cache built with other arguments is rebuilt.
    """

    version = "1"

    def __init__(
        self,
        name: str = "synthetic-imu",
        *,
        persons: int = 4,
        positions: int = 2,
        devices: int = 2,
        sessions: int = 1,
        activities: Sequence[str] = ACTIVITIES,
        duration: float = 8.0,
        rate: float = 50.0,
        window: int = 100,
        stride: int = 50,
        person_shift: float = 1.0,
        position_shift: float = 1.0,
        device_shift: float = 1.0,
        noise: float = 0.05,
        seed: int = 0,
    ):
        unknown = [a for a in activities if a not in ACTIVITIES]
        if unknown or not activities:
            raise ArrayDatasetError(
                f"{name}: unknown activities {unknown or '(none given)'}; choose from {', '.join(ACTIVITIES)}"
            )
        for label, count in (("persons", persons), ("positions", positions), ("devices", devices)):
            if count < 1:
                raise ArrayDatasetError(f"{name}: {label} must be at least 1, got {count}")
        if sessions < 1:
            raise ArrayDatasetError(f"{name}: sessions must be at least 1, got {sessions}")
        if min(person_shift, position_shift, device_shift, noise) < 0:
            raise ArrayDatasetError(f"{name}: shift strengths and noise must not be negative")
        if duration * rate < window:
            raise ArrayDatasetError(
                f"{name}: a recording of {duration} s at {rate} Hz is shorter than one window of {window} samples"
            )
        self.name = name
        self.persons, self.positions, self.devices, self.sessions = persons, positions, devices, sessions
        self.activities = tuple(a for a in ACTIVITIES if a in activities)
        self.duration, self.rate, self.window, self.stride = float(duration), float(rate), window, stride
        self.person_shift, self.position_shift, self.device_shift = person_shift, position_shift, device_shift
        self.noise, self.seed = noise, seed
        self.label_names = self.activities
        self.description = (
            f"synthetic IMU: {len(self.activities)} activities x {persons} persons x {positions} positions x "
            f"{devices} devices, {window / rate:g} s windows at {rate:g} Hz; shifts person={person_shift:g} "
            f"position={position_shift:g} device={device_shift:g}"
        )
        # every argument changes the arrays, so all of them belong to the recipe's identity
        self.recipe_version = (
            f"1:{persons}.{positions}.{devices}.{sessions}:{'+'.join(self.activities)}:"
            f"{duration:g}.{rate:g}.{window}.{stride}:{person_shift:g}.{position_shift:g}.{device_shift:g}."
            f"{noise:g}:{seed}"
        )

    def recipe(self) -> ArrayData:
        """Generate every recording and window it; the same arguments give the same bytes."""
        from ..windows import Recording, Windowing, windows_from_recordings

        persons = [self._person(p) for p in range(self.persons)]
        positions = [self._position(q) for q in range(self.positions)]
        devices = [self._device(d) for d in range(self.devices)]
        recordings = []
        for p, person in enumerate(persons):
            for q, position in enumerate(positions):
                for d, device in enumerate(devices):
                    for s in range(self.sessions):
                        for activity in self.activities:
                            key = (self.seed, p, q, d, s, ACTIVITIES.index(activity))
                            recordings.append(
                                Recording(
                                    signal=self._record(activity, person, position, device, key),
                                    label=activity,
                                    rate=device["rate"],
                                    domains={
                                        "person": f"p{p + 1}",
                                        "position": f"pos{q + 1}",
                                        "device": f"dev{d + 1}",
                                        "session": f"s{s + 1}",
                                    },
                                    source=f"{self.name} recording {key[1:]}",
                                )
                            )
        return windows_from_recordings(
            recordings,
            Windowing(length=self.window, stride=self.stride, rate=self.rate),
            label_names=self.label_names,
            dataset=self.name,
        )

    # ---------------------------------------------------------------- domains

    def _person(self, index: int) -> dict:
        import numpy as np

        z = np.random.default_rng([self.seed, 1, index]).standard_normal(8)
        s = self.person_shift
        return {
            "step_hz": 1.9 * np.exp(0.2 * s * z[0]),
            "amplitude": np.exp(0.3 * s * z[1]),
            "h2": 0.5 + 0.3 * s * z[2],
            "h3": 0.2 + 0.15 * s * z[3],
            # where in the step the harmonics peak: a person's gait style
            "style": s * np.pi * np.tanh(z[6:8]),
            "tempo_hz": 0.5 * np.exp(0.2 * s * z[4]),
            "posture": np.deg2rad(8.0 * s * z[5]),
        }

    def _position(self, index: int) -> dict:
        import numpy as np

        rng = np.random.default_rng([self.seed, 2, index])
        axis = rng.standard_normal(3)
        axis /= np.linalg.norm(axis)
        angle = self.position_shift * np.deg2rad(rng.uniform(30.0, 90.0))
        lever = self.position_shift * rng.uniform(-0.3, 0.3, 3)
        swing = np.exp(0.4 * self.position_shift * rng.standard_normal())
        return {"rotation": _rotation(axis * angle), "lever": lever, "swing": swing}

    def _device(self, index: int) -> dict:
        import numpy as np

        rng = np.random.default_rng([self.seed, 3, index])
        s = self.device_shift
        return {
            "rate": float(max(round(self.rate * 2.0 ** (s * rng.uniform(-1.0, 1.0))), 5)),
            "gain": 1.0 + 0.1 * s * rng.standard_normal(6),
            "bias": np.concatenate([0.8 * s * rng.standard_normal(3), 0.1 * s * rng.standard_normal(3)]),
            "noise": self.noise * (1.0 + 6.0 * s * rng.uniform()) * np.array([1, 1, 1, 0.2, 0.2, 0.2]),
        }

    # ---------------------------------------------------------------- one recording

    def _record(self, activity: str, person: dict, position: dict, device: dict, key: tuple) -> np.ndarray:
        """(T, 6) samples at the device's rate: the primitive, seen through the position, measured by the device."""
        import numpy as np

        rng = np.random.default_rng(key)
        rate = device["rate"]
        t = np.arange(int(round(self.duration * rate))) / rate
        theta, linear = _primitive(activity, t, person, position["swing"], rng)
        # the segment's angular velocity and acceleration about its lateral (y) axis
        omega = np.zeros((len(t), 3))
        omega[:, 1] = np.gradient(theta, t)
        alpha = np.gradient(omega, t, axis=0)
        # gravity (as the accelerometer's reaction to it) in the segment frame, rotated by the pitch
        gravity = GRAVITY * np.stack([-np.sin(theta), np.zeros_like(theta), np.cos(theta)], axis=1)
        r = position["lever"]
        lever = np.cross(alpha, r) + np.cross(omega, np.cross(omega, r))
        acc = (linear + gravity + lever) @ position["rotation"].T
        gyro = omega @ position["rotation"].T
        clean = np.concatenate([acc, gyro], axis=1)
        return clean * device["gain"] + device["bias"] + rng.standard_normal(clean.shape) * device["noise"]


def _primitive(activity: str, t: np.ndarray, person: dict, swing: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(pitch angle theta (T,), linear acceleration (T, 3)) of one activity for one person."""
    import numpy as np

    amp = person["amplitude"]
    phase = rng.uniform(0, 2 * np.pi, 4)
    # gait varies a little from one recording to the next, as real steps do
    step = person["step_hz"] * np.exp(0.03 * rng.standard_normal())
    linear = np.zeros((len(t), 3))
    posture = person["posture"]

    def gait(f: float, impact: float, harmonics: tuple[float, float], swing_rad: float, lean: float):
        w = 2 * np.pi * f * t
        h2, h3 = harmonics
        style = person["style"]
        vertical = impact * (
            1.2 * np.sin(w + phase[0])
            + h2 * np.sin(2 * (w + phase[0]) + style[0])
            + h3 * np.sin(3 * (w + phase[0]) + style[1])
        )
        linear[:, 0] = 0.6 * impact * np.sin(w + phase[0] + np.pi / 2)
        linear[:, 1] = 0.3 * impact * np.sin(w / 2 + phase[3])
        linear[:, 2] = vertical
        return lean + posture + swing * swing_rad * np.sin(w / 2 + phase[3])

    def still(tilt: float):
        sway = 0.03 * np.sin(2 * np.pi * 0.2 * t + phase[0])
        tremor_hz = rng.uniform(8.0, 12.0, 3)
        linear[:] = 0.05 * amp * np.sin(2 * np.pi * tremor_hz[None, :] * t[:, None] + phase[1:4])
        return tilt + posture + sway

    h2, h3 = person["h2"], person["h3"]
    if activity == "walking":
        theta = gait(step, 1.5 * amp, (h2, h3), 0.35 * amp, 0.0)
    elif activity == "running":
        theta = gait(1.45 * step, 4.5 * amp, (1.5 * h2, 1.5 * h3), 0.7 * amp, np.deg2rad(8.0))
    elif activity == "stairs":
        theta = gait(0.75 * step, 1.8 * amp, (h2, h3), 0.3 * amp, np.deg2rad(12.0))
        # the alternating step-up: every other step lifts the body higher
        linear[:, 2] += 0.8 * amp * np.sin(np.pi * 0.75 * step * t + phase[3])
    elif activity == "sitting":
        theta = still(np.deg2rad(75.0))
    elif activity == "standing":
        theta = still(0.0)
    elif activity == "arm-raises":
        tempo = person["tempo_hz"] * np.exp(0.05 * rng.standard_normal())
        theta = posture + swing * (np.pi / 2) * 0.5 * (1 - np.cos(2 * np.pi * tempo * t + phase[0]))
        linear[:] = 0.05 * amp * rng.standard_normal(linear.shape)
    else:  # the constructor admits only ACTIVITIES
        raise AssertionError(activity)
    return theta, linear


def _rotation(rotvec: np.ndarray) -> np.ndarray:
    """The rotation matrix of an axis-angle vector (Rodrigues' formula)."""
    import numpy as np

    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


SYNTHETIC_IMU = SyntheticIMU()
