"""``em-traces``: synthetic electromagnetic side-channel traces of AES, one leakage model per device.

After the Crossed-IoT EM-SCA portability study: a profiled attack trained on one device's
traces fails on another copy of the same chip, because the probe, the board and the clock
change how the same computation shows in the trace. Each trace here is the first-round
S-box output ``v = Sbox[p xor k]`` of a random plaintext byte ``p`` under a key byte ``k``
(one per device, or shared), leaking in the Hamming-weight model:

- at a device-specific sample position, ``gain_d * HW(v) + offset_d`` times a
  device-specific pulse (a smooth bump of its own width and ringing over 11 samples);
  gains alternate in sign from device to device (probe polarity), offsets are spread
  apart and positions lie 24 / (devices - 1) samples apart or more, so the
  amplitude-to-weight mapping learnt on one device is wrong on every other;
- on top of a data-independent device fingerprint (clock pulses of a device-specific
  period and amplitude), which lets a model trained on several devices tell them apart;
- the whole trace shifted by a random clock jitter of up to ``jitter_d`` samples;
- plus Gaussian noise of a device-specific level.

Labels are the Hamming-weight class of ``v`` (9 classes, the default) or the byte ``v``
itself (256 classes; the leakage carries only HW(v), so single-trace accuracy there is
bounded by the size of the weight class). The domain table has every sensing column:
``device`` = d0, d1, ..., ``dataset`` = em-traces, the others "unknown".

numpy is imported inside functions: ``plugin.py`` registers this module lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDataset, ArrayDatasetError

if TYPE_CHECKING:
    import numpy as np

LABELS = ("hw", "sbox")
#: samples of the leakage pulse and of each clock pulse
PULSE = 11


def aes_sbox() -> tuple[int, ...]:
    """The AES S-box, computed from its definition (inverse in GF(2^8), then the affine map) rather than typed in."""
    sbox = [0] * 256
    p = q = 1
    while True:
        # p walks GF(2^8)* by multiplying by the generator 3, q by dividing by it: q = p^-1 throughout
        p = p ^ ((p << 1) & 0xFF) ^ (0x1B if p & 0x80 else 0)
        q ^= q << 1
        q ^= q << 2
        q ^= q << 4
        q &= 0xFF
        if q & 0x80:
            q ^= 0x09
        affine = q
        for shift in range(1, 5):
            affine ^= ((q << shift) | (q >> (8 - shift))) & 0xFF
        sbox[p] = affine ^ 0x63
        if p == 1:
            break
    sbox[0] = 0x63
    return tuple(sbox)


SBOX = aes_sbox()


class EMTraces(ArrayDataset):
    """Seeded EM traces (N, length, 1) of AES's first-round S-box leakage on several devices; labels HW(v) or v."""

    version = "1"

    def __init__(
        self,
        name: str = "em-traces",
        *,
        devices: int = 4,
        traces: int = 2000,
        length: int = 100,
        label: str = "hw",
        key: int | None = None,
        noise: float = 1.0,
        seed: int = 0,
    ):
        if label not in LABELS:
            raise ArrayDatasetError(f"em-traces label must be one of {', '.join(LABELS)}, got {label!r}")
        if devices < 1 or traces < 1:
            raise ArrayDatasetError(f"em-traces needs at least one device and one trace, got {devices} and {traces}")
        if length < 40:
            raise ArrayDatasetError(f"em-traces needs traces of at least 40 samples to hold the leakage, got {length}")
        if key is not None and not 0 <= key <= 255:
            raise ArrayDatasetError(f"em-traces key must be a byte (0..255), got {key}")
        if noise < 0:
            raise ArrayDatasetError(f"em-traces noise scale must be >= 0, got {noise}")
        self.name = name
        self.devices, self.traces, self.length, self.label = devices, traces, length, label
        self.key, self.noise, self.seed = key, noise, seed
        self.label_names = (
            tuple(f"hw{w}" for w in range(9)) if label == "hw" else tuple(f"0x{v:02x}" for v in range(256))
        )
        keys = "shared key" if key is not None else "a key per device"
        self.description = (
            f"synthetic AES S-box EM traces: {devices} devices x {traces} traces of {length} samples, {keys}; "
            f"label {'HW(Sbox[p^k]) (9 classes)' if label == 'hw' else 'Sbox[p^k] (256 classes)'}; "
            "per-device gain (alternating sign), offset, pulse shape, leakage position, clock jitter and noise"
        )
        # the parameters change the arrays, so they belong to the recipe's identity
        self.recipe_version = f"1:{devices}.{traces}.{length}.{label}.{key}.{noise}.{seed}"

    def profiles(self) -> list[dict[str, Any]]:
        """Each device's leakage model: key, gain, offset, position, pulse, clock period and height, jitter, noise."""
        import numpy as np

        # offsets (in Hamming-weight steps) and leakage positions (samples) spread evenly and shuffled, so no two
        # devices share one: the same S-box runs a few cycles earlier or later on another board or firmware build.
        # The amplitude gain * (HW + steps) vanishes at HW = -steps <= 1, so a model that looks where another
        # device leaks and finds nothing there reads a weight of 0 or 1, not the common 4.
        shuffle = np.random.default_rng([self.seed, 0])
        spread = shuffle.permutation(np.linspace(-1.0, 4.0, self.devices))
        slots = shuffle.permutation(np.round(np.linspace(-12, 12, self.devices)).astype(int))
        profiles = []
        for device in range(self.devices):
            rng = np.random.default_rng([self.seed, 1, device])
            # a smooth bump with a little ringing: its width and ringing frequency are the device's pulse shape
            centred = np.arange(PULSE) - (PULSE - 1) / 2
            width, ringing = rng.uniform(2.0, 3.5), rng.uniform(0.0, 0.1)
            pulse = np.exp(-((centred / width) ** 2)) * np.cos(2 * np.pi * ringing * centred)
            pulse /= np.abs(pulse).max()
            gain = (1.0 if device % 2 == 0 else -1.0) * rng.uniform(0.7, 1.4)
            profiles.append(
                {
                    "device": f"d{device}",
                    "key": int(self.key if self.key is not None else rng.integers(256)),
                    "gain": float(gain),
                    "offset": float(gain * (spread[device] + rng.uniform(-0.25, 0.25))),
                    "position": int(self.length * 2 // 5 + slots[device]),
                    "pulse": pulse.astype(np.float64),
                    "clock_period": int(rng.integers(7, 14)),
                    "clock_amplitude": float(rng.uniform(0.3, 1.0)),
                    "jitter": int(1 + device % 3),
                    "noise": float(self.noise * rng.uniform(0.1, 0.3)),
                }
            )
        return profiles

    def recipe(self) -> ArrayData:
        """Generate the traces; the same arguments give the same bytes."""
        import numpy as np

        from crossedge.core.contracts.array_dataset import DomainTable, stratified_split

        from ..windows import DOMAIN_COLUMNS, UNKNOWN

        sbox = np.asarray(SBOX, dtype=np.int64)
        weight = hamming_weight(np.arange(256))
        profiles = self.profiles()
        margin = max(p["jitter"] for p in profiles)
        support = self.length + 2 * margin
        xs, ys, device_codes = [], [], []
        for device, profile in enumerate(profiles):
            rng = np.random.default_rng([self.seed, 2, device])
            plaintext = rng.integers(0, 256, self.traces)
            value = sbox[plaintext ^ profile["key"]]
            # the data-independent part: this device's clock pulses, the same in every trace
            clock = np.zeros(support)
            for start in range(int(rng.integers(profile["clock_period"])), support - PULSE, profile["clock_period"]):
                clock[start : start + PULSE] += profile["clock_amplitude"] * np.exp(-np.arange(PULSE))
            traces = np.broadcast_to(clock, (self.traces, support)).copy()
            at = margin + profile["position"]
            amplitude = profile["gain"] * weight[value] + profile["offset"]
            traces[:, at : at + PULSE] += amplitude[:, None] * profile["pulse"][None, :]
            traces += profile["noise"] * rng.standard_normal(traces.shape)
            # clock jitter: the trigger lands up to `jitter` samples early or late
            shift = rng.integers(-profile["jitter"], profile["jitter"] + 1, self.traces)
            take = margin + shift[:, None] + np.arange(self.length)[None, :]
            xs.append(np.take_along_axis(traces, take, axis=1))
            ys.append(weight[value] if self.label == "hw" else value)
            device_codes.append(np.full(self.traces, device, dtype=np.int64))
        x = np.concatenate(xs)[:, :, None].astype(np.float32)
        y = np.concatenate(ys).astype(np.int64)
        device = np.concatenate(device_codes)
        # stratified on (device, label) together, so every split holds each device's label mix
        strata = device * len(self.label_names) + y
        train, rest = stratified_split(strata, 0.6, seed=self.seed)
        val, test = stratified_split(strata, 0.5, seed=self.seed + 1, indices=rest)
        columns, values = {}, {}
        for column in DOMAIN_COLUMNS:
            if column == "device":
                columns[column], values[column] = device, tuple(p["device"] for p in profiles)
            else:
                columns[column] = np.zeros(len(y), dtype=np.int64)
                values[column] = ("em-traces",) if column == "dataset" else (UNKNOWN,)
        return ArrayData(
            x=x,
            y=y,
            label_names=self.label_names,
            domains=DomainTable(columns=columns, values=values),
            splits={"train": train, "val": val, "test": test},
            partitions=[("train", "val", "test")],
        )


def hamming_weight(values: np.ndarray) -> np.ndarray:
    """The number of set bits of every byte in ``values``."""
    import numpy as np

    return np.unpackbits(np.asarray(values, dtype=np.uint8)[..., None], axis=-1).sum(axis=-1).astype(np.int64)


EM_TRACES = EMTraces()
