"""A seeded Wi-Fi CSI generator: a multipath channel per room and a moving body reflector per gesture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDataset, ArrayDatasetError

if TYPE_CHECKING:
    import numpy as np

#: every gesture the generator knows, in label order
GESTURES = ("push-pull", "swipe", "circle", "clap", "lift", "wave")
#: how long each gesture takes at speed 1, in seconds
GESTURE_SECONDS = {"push-pull": 0.7, "swipe": 0.5, "circle": 0.9, "clap": 0.6, "lift": 0.9, "wave": 0.8}
FEATURES = ("amplitude", "amplitude+phase")
LOSS_FILLS = ("hold", "interpolate")
LIGHT_SPEED = 299_792_458.0
CARRIER_HZ = 5.32e9
SUBCARRIER_SPACING_HZ = 312.5e3
#: transmitter and receiver sit 1 m above the floor; the receiver's array is along y
ANTENNA_HEIGHT_M = 1.0


class SyntheticCSI(ArrayDataset):
    """Seeded Wi-Fi CSI windows of hand gestures, with room, person, orientation and device shifts.

    **Channel model.** For subcarrier frequency ``f_k = fc + k * 312.5 kHz`` (``fc`` = 5.32
    GHz, ``k`` evenly spaced over -28..28 like the Intel 5300's 30 grouped subcarriers) and
    receive antenna ``m`` of a half-wavelength linear array,

    ``H(f_k, m, t) = sum_p a_p exp(-j (2 pi f_k L_p(t) / c + phi_p)) exp(-j pi m sin(theta_p(t)))``

    over paths ``p`` of length ``L_p``, gain ``a_p``, reflection phase ``phi_p`` and angle of
    arrival ``theta_p``. The transmitter is at the origin and the receiver ``D`` metres away
    on the x axis, both 1 m high. The static paths are the line of sight (gain 1), the
    room's ``static_paths`` wall and furniture reflections (excess lengths 1..20 m, gains
    ``U(0.2, 0.9) * exp(-excess / 15)``, random phases and angles) and the person's torso
    standing at the room's gesture spot (gain ``0.3 * body``). The moving hand is a
    reflector whose path runs transmitter -> hand -> receiver (gain ``0.3 * body``, its angle
    of arrival following the hand) plus two room-specific echoes of it (the same path
    length plus 1..6 m, gains ``U(0.1, 0.3) * body``, fixed angles). ``|H|`` thus carries a
    large static pattern over subcarriers and antennas set by the room, and the gesture as
    Doppler fluctuations whose depth and shape depend on that pattern and on where in the
    room the hand moves.

    **Gestures** (``gestures``, any subset of :data:`GESTURES`, in that label order) are
    hand trajectories in the person's frame (``u`` facing the link, ``v`` sideways, ``w``
    up), scaled by the person's amplitude ``A``: ``push-pull`` goes out ``A`` along ``u``
    and back; ``swipe`` sweeps once along ``v`` in an arc bulging 0.3 ``A`` toward the
    link; ``circle`` draws two turns of radius 0.4 ``A`` in the ``u``-``v`` plane; ``clap``
    is three quick pushes of 0.25 ``A``; ``lift`` raises the arm forward (0.6 ``A``) and
    high (1.5 ``A``) and lowers it; ``wave`` swings the hand three times along ``v`` about
    the elbow. A gesture takes :data:`GESTURE_SECONDS` divided by the person's speed
    (jittered by 10% per repetition, at most 90% of the window) and starts at a random
    onset inside the window; the hand rests before and after.

    **Shifts**, each scaled by a strength ``s`` (0 removes it, 1 is the default):

    - ``room_shift``: room ``r``'s link length (3..7 m), static path lengths, gains,
      phases and angles, its gesture spot (``0.35..0.65 D`` along the link, 0.7..1.5 m to
      either side, 1..1.3 m high, where the person stands facing the link) and the hand's
      echoes are a seeded draw, interpolated from a base room by ``s``
      (``base + s * (draw - base)``): at 0 every room is the base room, at 1 the rooms are
      independent. This is the strongest shift by design: the static multipath changes the
      amplitude pattern of every channel and the phase at which the hand's path beats
      against it, and the spot changes how a trajectory maps onto path length. At the
      defaults (calibrated on seeds 0 and 1), the 1-D CNN of core's ``erm`` (500 Adam
      steps, 16 windows per training room) scores 0.8 to 0.9 on held-out repetitions of its
      training rooms and about 0.3 on a held-out room; fine-tuning it on one labelled window
      per class of that room plus class-wise MMD to target windows pseudo-labelled by
      nearest support window lifts that by 10 to 20 points.
    - ``person_shift``: person ``p`` has speed ``exp(0.2 s z)``, amplitude
      ``A = 0.2 m * exp(0.2 s z)`` and body size ``body = exp(0.3 s z)`` (``z`` standard
      normal draws).
    - ``orientation_shift``: orientation ``o`` turns the person's frame by ``s * o * 45``
      degrees about the vertical from facing the link, so the same gesture moves the hand
      along a different direction relative to the link (the ``position`` domain).
    - ``device_shift``: device ``d`` has per-antenna gains of ``2 s z`` dB, a per-subcarrier
      gain ripple of up to ``1.5 s`` dB, per-antenna phase offsets ``s * U(-pi, pi)``, a
      timing offset of ``s * U(-50, 50)`` ns (a phase slope over subcarriers; the phase
      offsets and the timing reach only the phase features), an SNR of
      ``snr_db - 6 s u`` dB and a packet loss rate of ``packet_loss * (1 + 2 s u)``
      (``u`` uniform in 0..1).

    **Impairments**: complex white noise at the device's SNR (relative to the window's mean
    channel power); ``phase_noise``, the standard deviation in radians of each antenna's
    per-packet phase jitter, on top of a common random phase per packet (carrier frequency
    offset), neither of which reaches ``|H|``, only the phase features; ``packet_loss``, the
    fraction of packets dropped after the first, refilled by ``loss_fill``: ``hold``
    repeats the last received packet, ``interpolate`` interpolates linearly between
    received ones.

    **Features**: ``amplitude`` gives ``|H|`` as ``antennas x subcarriers`` channels
    (antenna-major: channel ``m * subcarriers + k``); ``amplitude+phase`` appends the phase
    of ``H_m * conj(H_0)`` for antennas ``m >= 1`` (the usual sanitized phase: the common
    phase cancels, the per-antenna offsets and jitter do not).

    **Sizes**: ``rooms x persons x orientations x devices x gestures x repetitions`` windows
    of ``length`` packets at ``rate`` packets per second. The default, 4 x 3 x 2 x 2 x 6 x
    3 = 864 windows of (100, 90), builds in about a second. Every window is drawn from a
    generator seeded by ``(seed, room, person, orientation, device, gesture,
    repetition)`` and each domain's parameters from one seeded by ``(seed, kind, index)``,
    so adding rooms never changes the others. Domains: room ``room1..``, person ``p1..``,
    position ``o1..`` (the orientation), device ``dev1..``; session is ``unknown``. There
    are no predefined splits.

    **Arguments**: ``name`` (registered name, default ``synthetic-csi``); ``rooms``,
    ``persons``, ``orientations``, ``devices`` (4, 3, 2, 2: values per domain);
    ``gestures`` (all six); ``repetitions`` (3 per combination); ``subcarriers`` (30) and
    ``antennas`` (3); ``rate`` (100 packets/s) and ``length`` (100 packets per window);
    ``static_paths`` (6 reflections per room); ``room_shift``, ``person_shift``,
    ``orientation_shift``, ``device_shift`` (1.0 each); ``snr_db`` (35 dB before the
    device's loss); ``phase_noise`` (0.05 rad); ``packet_loss`` (0.03) and ``loss_fill``
    (``hold``); ``features`` (``amplitude``); ``seed`` (0). Every argument is part of
    ``recipe_version``, so a cache built with other arguments is rebuilt.
    """

    version = "1"

    def __init__(
        self,
        name: str = "synthetic-csi",
        *,
        rooms: int = 4,
        persons: int = 3,
        orientations: int = 2,
        devices: int = 2,
        gestures: Sequence[str] = GESTURES,
        repetitions: int = 3,
        subcarriers: int = 30,
        antennas: int = 3,
        rate: float = 100.0,
        length: int = 100,
        static_paths: int = 6,
        room_shift: float = 1.0,
        person_shift: float = 1.0,
        orientation_shift: float = 1.0,
        device_shift: float = 1.0,
        snr_db: float = 35.0,
        phase_noise: float = 0.05,
        packet_loss: float = 0.03,
        loss_fill: str = "hold",
        features: str = "amplitude",
        seed: int = 0,
    ):
        unknown = [g for g in gestures if g not in GESTURES]
        if unknown or not gestures:
            raise ArrayDatasetError(
                f"{name}: unknown gestures {unknown or '(none given)'}; choose from {', '.join(GESTURES)}"
            )
        counts = {
            "rooms": rooms,
            "persons": persons,
            "orientations": orientations,
            "devices": devices,
            "repetitions": repetitions,
            "subcarriers": subcarriers,
            "length": length,
        }
        for label, count in counts.items():
            if count < 1:
                raise ArrayDatasetError(f"{name}: {label} must be at least 1, got {count}")
        if antennas < 1 or (features == "amplitude+phase" and antennas < 2):
            raise ArrayDatasetError(f"{name}: needs at least 1 antenna (2 for phase features), got {antennas}")
        if static_paths < 0 or min(room_shift, person_shift, orientation_shift, device_shift, phase_noise) < 0:
            raise ArrayDatasetError(f"{name}: static_paths, shift strengths and phase_noise must not be negative")
        if not 0.0 <= packet_loss < 1.0:
            raise ArrayDatasetError(f"{name}: packet_loss must be in [0, 1), got {packet_loss}")
        if loss_fill not in LOSS_FILLS:
            raise ArrayDatasetError(f"{name}: loss_fill must be one of {', '.join(LOSS_FILLS)}, got {loss_fill!r}")
        if features not in FEATURES:
            raise ArrayDatasetError(f"{name}: features must be one of {', '.join(FEATURES)}, got {features!r}")
        if rate <= 0:
            raise ArrayDatasetError(f"{name}: rate must be positive, got {rate}")
        self.name = name
        self.rooms, self.persons, self.orientations, self.devices = rooms, persons, orientations, devices
        self.gestures = tuple(g for g in GESTURES if g in gestures)
        self.repetitions, self.subcarriers, self.antennas = repetitions, subcarriers, antennas
        self.rate, self.length, self.static_paths = float(rate), length, static_paths
        self.room_shift, self.person_shift = room_shift, person_shift
        self.orientation_shift, self.device_shift = orientation_shift, device_shift
        self.snr_db, self.phase_noise, self.packet_loss = snr_db, phase_noise, packet_loss
        self.loss_fill, self.features, self.seed = loss_fill, features, seed
        self.label_names = self.gestures
        self.description = (
            f"synthetic Wi-Fi CSI: {len(self.gestures)} gestures x {rooms} rooms x {persons} persons x "
            f"{orientations} orientations x {devices} devices, {antennas}x{subcarriers} {features} at "
            f"{rate:g} packets/s; shifts room={room_shift:g} person={person_shift:g} "
            f"orientation={orientation_shift:g} device={device_shift:g}"
        )
        # every argument changes the arrays, so all of them belong to the recipe's identity
        self.recipe_version = (
            f"1:{rooms}.{persons}.{orientations}.{devices}.{repetitions}:{'+'.join(self.gestures)}:"
            f"{subcarriers}.{antennas}.{rate:g}.{length}.{static_paths}:"
            f"{room_shift:g}.{person_shift:g}.{orientation_shift:g}.{device_shift:g}:"
            f"{snr_db:g}.{phase_noise:g}.{packet_loss:g}.{loss_fill}.{features}:{seed}"
        )

    # ---------------------------------------------------------------- the recipe

    def recipe(self) -> ArrayData:
        """Simulate every window and pass them through the common windowing; the same arguments give the same bytes."""
        import numpy as np

        from ..windows import Recording, Windowing, windows_from_recordings

        freqs = CARRIER_HZ + np.linspace(-28, 28, self.subcarriers) * SUBCARRIER_SPACING_HZ
        base = self._room_draw(np.random.default_rng([self.seed, 9]))
        rooms = [self._room(r, base) for r in range(self.rooms)]
        persons = [self._person(p) for p in range(self.persons)]
        devices = [self._device(d, freqs) for d in range(self.devices)]
        recordings = []
        for r, room in enumerate(rooms):
            for p, person in enumerate(persons):
                for o in range(self.orientations):
                    facing = room["facing"] + self.orientation_shift * o * np.pi / 4
                    for d, device in enumerate(devices):
                        for gesture in self.gestures:
                            for rep in range(self.repetitions):
                                key = (self.seed, r, p, o, d, GESTURES.index(gesture), rep)
                                signal = self._window(gesture, room, person, facing, device, freqs, key)
                                recordings.append(
                                    Recording(
                                        signal=signal,
                                        label=gesture,
                                        rate=self.rate,
                                        domains={
                                            "room": f"room{r + 1}",
                                            "person": f"p{p + 1}",
                                            "position": f"o{o + 1}",
                                            "device": f"dev{d + 1}",
                                        },
                                        source=f"{self.name} window {key[1:]}",
                                    )
                                )
        return windows_from_recordings(
            recordings, Windowing(length=self.length), label_names=self.label_names, dataset=self.name
        )

    # ---------------------------------------------------------------- domains

    def _room_draw(self, rng) -> dict:
        """One independent draw of everything a room sets (its geometry, static paths and the hand's echoes)."""
        import numpy as np

        n = self.static_paths
        link = rng.uniform(3.0, 7.0)
        excess = rng.uniform(1.0, 20.0, n)
        side = rng.choice([-1.0, 1.0])
        spot = np.array([link * rng.uniform(0.35, 0.65), side * rng.uniform(0.7, 1.5), rng.uniform(1.0, 1.3)])
        return {
            "link": link,
            "excess": excess,
            "gain": rng.uniform(0.2, 0.9, n) * np.exp(-excess / 15.0),
            "phase": rng.uniform(0, 2 * np.pi, n),
            "sin_aoa": rng.uniform(-1.0, 1.0, n),
            "spot": spot,
            "echo_excess": rng.uniform(1.0, 6.0, 2),
            "echo_gain": rng.uniform(0.1, 0.3, 2),
            "echo_phase": rng.uniform(0, 2 * np.pi, 2),
            "echo_sin_aoa": rng.uniform(-1.0, 1.0, 2),
        }

    def _room(self, index: int, base: dict) -> dict:
        import numpy as np

        own = self._room_draw(np.random.default_rng([self.seed, 10, index]))
        s = self.room_shift
        room = {key: base[key] + s * (own[key] - base[key]) for key in base}
        # the person faces the link line from the spot's side
        room["facing"] = -np.pi / 2 if room["spot"][1] > 0 else np.pi / 2
        return room

    def _person(self, index: int) -> dict:
        import numpy as np

        z = np.random.default_rng([self.seed, 11, index]).standard_normal(3)
        s = self.person_shift
        return {
            "speed": np.exp(0.2 * s * z[0]),
            "amplitude": 0.2 * np.exp(0.2 * s * z[1]),
            "body": np.exp(0.3 * s * z[2]),
        }

    def _device(self, index: int, freqs: np.ndarray) -> dict:
        import numpy as np

        rng = np.random.default_rng([self.seed, 12, index])
        s = self.device_shift
        k = np.linspace(0.0, 1.0, self.subcarriers)
        antenna_db = 2.0 * s * rng.standard_normal(self.antennas)
        ripple_db = 1.5 * s * np.cos(2 * np.pi * rng.uniform(0.5, 2.0) * k + rng.uniform(0, 2 * np.pi))
        gain = 10 ** ((antenna_db[None, :] + ripple_db[:, None]) / 20.0)
        antenna_phase = s * rng.uniform(-np.pi, np.pi, self.antennas)
        timing = s * rng.uniform(-50e-9, 50e-9)
        phase = antenna_phase[None, :] - 2 * np.pi * (freqs - CARRIER_HZ)[:, None] * timing
        return {
            "response": gain * np.exp(1j * phase),  # (K, M)
            "snr_db": self.snr_db - 6.0 * s * rng.uniform(),
            "loss": min(self.packet_loss * (1.0 + 2.0 * s * rng.uniform()), 0.95),
        }

    # ---------------------------------------------------------------- one window

    def _window(
        self, gesture: str, room: dict, person: dict, facing: float, device: dict, freqs: np.ndarray, key: tuple
    ) -> np.ndarray:
        """The (length, channels) features of one gesture repetition."""
        import numpy as np

        rng = np.random.default_rng(key)
        t = np.arange(self.length) / self.rate
        window_s = self.length / self.rate
        duration = min(GESTURE_SECONDS[gesture] / person["speed"] * rng.uniform(0.9, 1.1), 0.9 * window_s)
        onset = rng.uniform(0.05 * window_s, max(0.05 * window_s, 0.95 * window_s - duration))
        progress = np.clip((t - onset) / duration, 0.0, 1.0)
        local = _trajectory(gesture, progress) * person["amplitude"] * rng.uniform(0.9, 1.1)
        turn = np.array([[np.cos(facing), -np.sin(facing), 0], [np.sin(facing), np.cos(facing), 0], [0, 0, 1]])
        spot = room["spot"] + rng.normal(0.0, 0.05, 3)
        hand = spot + local @ turn.T
        tx = np.array([0.0, 0.0, ANTENNA_HEIGHT_M])
        rx = np.array([room["link"], 0.0, ANTENNA_HEIGHT_M])
        to_rx = np.linalg.norm(hand - rx, axis=1)
        hand_length = np.linalg.norm(hand - tx, axis=1) + to_rx
        hand_sin = (hand[:, 1] - rx[1]) / to_rx
        body = person["body"]
        m = np.arange(self.antennas)

        def paths(length, gain, phase, sin_aoa):
            """Sum of paths: length, gain, phase, sin_aoa broadcast to (..., P); returns (..., K, M)."""
            delay = np.exp(-2j * np.pi * freqs[:, None] * (length[..., None, :] / LIGHT_SPEED))  # (..., K, P)
            steer = np.exp(-1j * np.pi * m[:, None] * sin_aoa[..., None, :])  # (..., M, P)
            weight = gain * np.exp(-1j * phase)
            return np.einsum("...kp,...mp,...p->...km", delay, steer, weight)

        torso_length = np.linalg.norm(spot - tx) + np.linalg.norm(spot - rx) + 0.3
        torso_sin = (spot[1] - rx[1]) / np.linalg.norm(spot - rx)
        static = paths(
            np.concatenate([[room["link"]], room["link"] + room["excess"], [torso_length]]),
            np.concatenate([[1.0], room["gain"], [0.3 * body]]),
            np.concatenate([[0.0], room["phase"], [np.pi]]),
            np.concatenate([[0.0], room["sin_aoa"], [torso_sin]]),
        )
        moving_length = hand_length[:, None] + np.concatenate([[0.0], room["echo_excess"]])[None, :]
        moving_sin = np.concatenate([hand_sin[:, None], np.broadcast_to(room["echo_sin_aoa"], (len(t), 2))], axis=1)
        moving = paths(
            moving_length,
            np.concatenate([[0.3], room["echo_gain"]]) * body,
            np.concatenate([[np.pi], room["echo_phase"]]),
            moving_sin,
        )
        channel = (static[None] + moving) * device["response"][None]  # (T, K, M)
        # the carrier offset turns every antenna alike; each RF chain adds its own jitter
        common = rng.uniform(0, 2 * np.pi, (len(t), 1, 1))
        jitter = self.phase_noise * rng.standard_normal((len(t), 1, self.antennas))
        channel = channel * np.exp(1j * (common + jitter))
        power = np.mean(np.abs(channel) ** 2)
        sigma = np.sqrt(power / 10 ** (device["snr_db"] / 10.0) / 2.0)
        channel = channel + sigma * (rng.standard_normal(channel.shape) + 1j * rng.standard_normal(channel.shape))
        features = np.abs(channel).transpose(0, 2, 1).reshape(len(t), -1)
        if self.features == "amplitude+phase":
            relative = np.angle(channel[:, :, 1:] * np.conj(channel[:, :, :1]))
            features = np.concatenate([features, relative.transpose(0, 2, 1).reshape(len(t), -1)], axis=1)
        return _drop_packets(features, device["loss"], self.loss_fill, rng)


def _trajectory(gesture: str, progress: np.ndarray) -> np.ndarray:
    """The hand's offset (T, 3) in the person's frame (u toward the link, v sideways, w up) for unit amplitude."""
    import numpy as np

    s = progress
    out = np.zeros((len(s), 3))
    if gesture == "push-pull":
        out[:, 0] = 0.5 * (1 - np.cos(2 * np.pi * s))
    elif gesture == "swipe":
        # an arc about the shoulder: sideways, bulging toward the link halfway
        out[:, 1] = 0.5 * (1 - np.cos(np.pi * s)) - 0.5
        out[:, 0] = 0.3 * np.sin(np.pi * s)
    elif gesture == "circle":
        # two turns, so its path length oscillates twice where a push-pull's rises and falls once
        out[:, 0] = 0.4 * np.sin(4 * np.pi * s)
        out[:, 1] = 0.4 * (1 - np.cos(4 * np.pi * s))
    elif gesture == "clap":
        out[:, 0] = 0.25 * 0.5 * (1 - np.cos(6 * np.pi * s))
    elif gesture == "lift":
        # the arm rises forward and high, then comes down
        bump = 0.5 * (1 - np.cos(2 * np.pi * s))
        out[:, 0] = 0.6 * bump
        out[:, 2] = 1.5 * bump
    elif gesture == "wave":
        # the hand swings about the elbow, so it also moves a little toward the link
        out[:, 1] = 0.35 * np.sin(6 * np.pi * s) * np.sin(np.pi * s)
        out[:, 0] = 0.1 * np.abs(np.sin(6 * np.pi * s)) * np.sin(np.pi * s)
    else:  # the constructor admits only GESTURES
        raise AssertionError(gesture)
    return out


def _drop_packets(features: np.ndarray, loss: float, fill: str, rng) -> np.ndarray:
    """Drop each packet after the first with probability ``loss`` and refill it by holding or interpolating."""
    import numpy as np

    received = rng.uniform(size=len(features)) >= loss
    received[0] = True
    if received.all():
        return features
    kept = np.flatnonzero(received)
    if fill == "hold":
        last = np.maximum.accumulate(np.where(received, np.arange(len(features)), 0))
        return features[last]
    steps = np.arange(len(features))
    return np.stack([np.interp(steps, kept, features[kept, c]) for c in range(features.shape[1])], axis=1)


SYNTHETIC_CSI = SyntheticCSI()
