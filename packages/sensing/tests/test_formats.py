"""Format loaders on small fixtures written here in each format's exact layout, and one malformed file per format."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from crossedge.sensing.formats import (
    FORMATS,
    FormatError,
    FormatWarning,
    LoadOptions,
    detect_format,
    load_path,
    pamap2,
    uci_har,
)


def values(data, column: str) -> set[str]:
    """The domain values that occur in ``column``."""
    names = data.domains.values[column]
    return {names[c] for c in np.unique(data.domains.codes(column))}


def assert_points_at(error: pytest.ExceptionInfo, path: Path, line: int | None) -> None:
    """The error message starts with ``path:line:`` (or ``path:`` when no line is expected)."""
    message = str(error.value)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert message.startswith(where), message
    assert error.value.line == line
    assert "; " in message  # what is wrong; what to do


# ---------------------------------------------------------------- UCI-HAR


def uci_number(value: float) -> str:
    """A float the way UCI-HAR writes it: ``-2.3285230e-002``, right-aligned in 16 characters."""
    text = f"{value:.7e}"
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent):+04d}".rjust(16)


def write_uci(root: Path, *, labels_file: bool = True) -> dict:
    """A UCI-HAR folder: train rows of subjects 1 and 3, test rows of subject 2, activities 1, 2 and 5."""
    rng = np.random.default_rng(0)
    plan = {"train": ([1, 1, 3, 3, 3], [1, 2, 5, 1, 2]), "test": ([2, 2, 2], [5, 1, 2])}
    signals = {}
    for split, (subjects, labels) in plan.items():
        folder = root / split / "Inertial Signals"
        folder.mkdir(parents=True)
        for channel in uci_har.CHANNELS:
            table = rng.normal(size=(len(labels), 128))
            signals[(split, channel)] = table
            rows = ["".join(uci_number(v) for v in row) for row in table]
            (folder / f"{channel}_{split}.txt").write_text("\n".join(rows) + "\n")
        (root / split / f"subject_{split}.txt").write_text("".join(f"{s}\n" for s in subjects))
        (root / split / f"y_{split}.txt").write_text("".join(f"{y}\n" for y in labels))
    if labels_file:
        names = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
        (root / "activity_labels.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names, 1)))
    return {"plan": plan, "signals": signals}


def test_uci_har_rows_become_windows_with_splits(tmp_path):
    fixture = write_uci(tmp_path / "UCI HAR Dataset")
    root = tmp_path / "UCI HAR Dataset"
    assert detect_format(root) == "uci-har"
    data = load_path(root)
    assert data.shape == (8, 128, 9)
    assert data.label_names == ("WALKING", "WALKING_UPSTAIRS", "STANDING")
    assert values(data, "person") == {"1", "2", "3"}
    assert values(data, "dataset") == {"uci-har"}
    assert data.partitions == [("train", "test")]
    np.testing.assert_array_equal(data.split("train"), np.arange(5))
    np.testing.assert_array_equal(data.split("test"), np.arange(5, 8))
    # the channel order is the documented one: window 6 is test row 1, channel 4 is body_gyro_y
    np.testing.assert_allclose(data.x[6, :, 4], fixture["signals"][("test", "body_gyro_y")][1], rtol=1e-6)
    walk, up, stand = "WALKING", "WALKING_UPSTAIRS", "STANDING"
    assert [data.label_names[y] for y in data.y] == [walk, up, stand, walk, up, stand, walk, up]
    person = data.domains.values["person"]
    assert [person[c] for c in data.domains.codes("person")] == ["1", "1", "3", "3", "3", "2", "2", "2"]
    assert data.manifest["channels"] == list(uci_har.CHANNELS)


def test_uci_har_splits_follow_rows_under_another_windowing(tmp_path):
    write_uci(tmp_path, labels_file=False)
    data = load_path(tmp_path, LoadOptions(window=64, stride=32))
    assert data.shape == (8 * 3, 64, 9)  # (128 - 64) // 32 + 1 windows per row
    np.testing.assert_array_equal(data.split("train"), np.arange(15))
    np.testing.assert_array_equal(data.split("test"), np.arange(15, 24))
    assert data.label_names == ("WALKING", "WALKING_UPSTAIRS", "STANDING")  # the standard names without the file
    resampled = load_path(tmp_path, LoadOptions(rate=25))
    assert resampled.shape == (8, 64, 9)  # one row is still one window at the new rate
    assert len(resampled.split("test")) == 3


def test_uci_har_malformed_rows_name_file_and_line(tmp_path):
    write_uci(tmp_path)
    gyro = tmp_path / "train" / "Inertial Signals" / "body_gyro_y_train.txt"
    lines = gyro.read_text().splitlines()
    lines[2] = lines[2][:-16]  # row 3 loses its last sample
    gyro.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError) as error:
        load_path(tmp_path)
    assert_points_at(error, gyro, 3)
    assert "127 fields, expected 128" in str(error.value)

    write_uci(tmp_path / "b")
    labels = tmp_path / "b" / "test" / "y_test.txt"
    labels.write_text("5\n9\n2\n")
    with pytest.raises(FormatError) as error:
        load_path(tmp_path / "b")
    assert_points_at(error, labels, 2)
    assert "unknown activity id 9" in str(error.value)


# ---------------------------------------------------------------- WISDM


def write_wisdm(path: Path) -> None:
    """WISDM v1.1 raw records: users 33, 7 and 11, Walking and Jogging, with the real file's quirks."""
    rng = np.random.default_rng(1)
    lines, stamp = [], 49105962326000
    for user, activity, count in [
        (33, "Jogging", 120),
        (33, "Walking", 120),
        (7, "Walking", 130),
        (11, "Jogging", 110),
    ]:
        for _ in range(count):
            x, y, z = rng.normal(size=3) * 5
            stamp += 50_000_000
            lines.append(f"{user},{activity},{stamp},{x:.8f},{y:.7f},{z:.8};")
    lines[10] = lines[10] + lines.pop(11)  # two records on one line, as the real file has
    lines.insert(40, "")  # a blank line
    lines.insert(60, "33,Jogging,49105962326001,2.1,-0.5,;")  # a record with an empty field
    path.write_text("\n".join(lines) + "\n")


def test_wisdm_runs_of_user_and_activity(tmp_path):
    path = tmp_path / "WISDM_ar_v1.1_raw.txt"
    write_wisdm(path)
    assert detect_format(path) == "wisdm"
    assert detect_format(tmp_path) == "wisdm"
    with pytest.warns(FormatWarning, match=r"skipped 1 record\(s\) with an empty field \(the first on line 61\)"):
        data = load_path(tmp_path)
    # 2.56 s at 20 Hz is 51 samples, stride 26: (120-51)//26+1 = 3, 3, (130-51)//26+1 = 4, (110-51)//26+1 = 3
    assert data.shape == (13, 51, 3)
    assert data.label_names == ("Walking", "Jogging")
    assert values(data, "person") == {"7", "11", "33"}
    assert values(data, "session") == {"unknown"}


def test_wisdm_malformed_records_name_file_and_line(tmp_path):
    path = tmp_path / "raw.txt"
    write_wisdm(path)
    lines = path.read_text().splitlines()
    lines[20] = "33,Jogging,49106062271000,5.012288,11.264028;"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError) as error, warnings.catch_warnings():
        warnings.simplefilter("ignore", FormatWarning)
        load_path(path)
    assert_points_at(error, path, 21)
    assert "5 fields, expected 6" in str(error.value)

    lines[20] = "33,Jogging,49106062271000,5.01,eleven,0.95;"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=r"raw.txt:21: y 'eleven' is not a number"):
        load_path(path, LoadOptions(format="wisdm"))


# ---------------------------------------------------------------- PAMAP2


def write_pamap2(root: Path) -> dict:
    """Protocol/subject101.dat and subject102.dat: 54 columns at 100 Hz with transient rows and NaN gaps."""
    rng = np.random.default_rng(2)
    folder = root / "Protocol"
    folder.mkdir(parents=True)
    tables = {}
    for subject, plan in [(101, [(0, 50), (1, 300), (0, 40), (4, 400)]), (102, [(4, 300), (0, 30), (5, 320)])]:
        ids = np.concatenate([np.full(n, a) for a, n in plan])
        table = rng.normal(size=(len(ids), 54))
        table[:, 0] = np.arange(len(ids)) / 100 + 5.0
        table[:, 1] = ids
        table[:, 2] = np.nan
        table[::11, 2] = 100  # heart rate is sampled at about 9 Hz
        tables[subject] = table
        path = folder / f"subject{subject}.dat"
        rows = [
            " ".join("NaN" if np.isnan(v) else (str(int(v)) if i == 1 else f"{v:.5f}") for i, v in enumerate(r))
            for r in table
        ]
        path.write_text("\n".join(rows) + "\n")
    return tables


def test_pamap2_drops_transients_and_picks_imus(tmp_path):
    tables = write_pamap2(tmp_path / "PAMAP2_Dataset")
    root = tmp_path / "PAMAP2_Dataset"
    # a short gap in subject 101's hand acc16 is interpolated; a long one in its ankle gyro splits the run
    path = root / "Protocol" / "subject101.dat"
    lines = path.read_text().splitlines()
    for row in range(100, 103):
        fields = lines[row].split()
        fields[4] = "NaN"
        lines[row] = " ".join(fields)
    for row in range(500, 530):
        fields = lines[row].split()
        fields[44] = "NaN"
        lines[row] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(root) == "pamap2"
    data = load_path(root, LoadOptions(window=100, stride=100))
    assert data.shape[1:] == (100, 18)
    assert data.label_names == ("lying", "walking", "running")
    assert values(data, "person") == {"101", "102"}
    assert values(data, "position") == {"unknown"}
    # 101: lying 300 -> 3; walking 400 cut by the 30-row gap (its rows 110-139) into 110 and 260 -> 1 + 2
    # 102: walking 300 -> 3; running 320 -> 3
    assert len(data.x) == 3 + 1 + 2 + 3 + 3
    assert np.isfinite(data.x).all()
    first = tables[101][50:150, [3 + 1, 3 + 2, 3 + 3, 3 + 7, 3 + 8, 3 + 9]]
    np.testing.assert_allclose(data.x[0, :50, :6], first[:50], atol=1e-4)
    # file rows 100-102 (window rows 50-52) were missing: window row 51 lies on the line from row 49 to 53
    np.testing.assert_allclose(data.x[0, 51, 0], (first[49, 0] + first[53, 0]) / 2, atol=1e-4)

    each = load_path(root, LoadOptions(imu="each", window=100, stride=100, channels="acc16"))
    assert each.shape[2] == 3
    assert values(each, "position") == {"hand", "chest", "ankle"}
    assert each.manifest["channels"] == ["acc16_x", "acc16_y", "acc16_z"]
    chest = load_path(root, LoadOptions(imu="chest", window=100, stride=100))
    assert values(chest, "position") == {"chest"} and chest.shape[2] == 6


def test_pamap2_malformed_rows_name_file_and_line(tmp_path):
    write_pamap2(tmp_path)
    path = tmp_path / "Protocol" / "subject102.dat"
    lines = path.read_text().splitlines()
    lines[7] = " ".join(lines[7].split()[:53])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError) as error:
        load_path(tmp_path)
    assert_points_at(error, path, 8)
    assert "53 fields, expected 54" in str(error.value)

    lines = (tmp_path / "Protocol" / "subject101.dat").read_text().splitlines()
    fields = lines[99].split()
    fields[1] = "8"
    lines[99] = " ".join(fields)
    (tmp_path / "Protocol" / "subject101.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=r"subject101.dat:100: unknown activity id 8; the ids are 0"):
        load_path(tmp_path / "Protocol")
    with pytest.raises(FormatError, match="no sensor group 'accel'.*acc16"):
        load_path(tmp_path, LoadOptions(channels="accel"))
    assert pamap2.GROUPS["gyro"] == (7, 8, 9)


# ---------------------------------------------------------------- MotionSense

MOTIONSENSE_HEADER = (
    ",attitude.roll,attitude.pitch,attitude.yaw,gravity.x,gravity.y,gravity.z,"
    "rotationRate.x,rotationRate.y,rotationRate.z,userAcceleration.x,userAcceleration.y,userAcceleration.z"
)


def write_motionsense(root: Path) -> dict:
    """A_DeviceMotion_data with walking, jogging and standing trials of subjects 1, 2 and 3."""
    rng = np.random.default_rng(3)
    tables = {}
    for trial, subjects in [("wlk_7", (1, 2)), ("jog_9", (1, 2)), ("std_6", (3,))]:
        folder = root / "A_DeviceMotion_data" / trial
        folder.mkdir(parents=True)
        for subject in subjects:
            table = rng.normal(size=(200, 12))
            tables[(trial, subject)] = table
            rows = [f"{i}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(table)]
            (folder / f"sub_{subject}.csv").write_text(MOTIONSENSE_HEADER + "\n" + "\n".join(rows) + "\n")
    return tables


def test_motionsense_trials_and_subjects(tmp_path):
    tables = write_motionsense(tmp_path / "motion-sense")
    root = tmp_path / "motion-sense"
    assert detect_format(root) == "motionsense"
    data = load_path(root)
    assert data.shape == (5 * 2, 128, 6)  # (200 - 128) // 64 + 1 windows per file
    assert data.label_names == ("walking", "jogging", "standing")
    assert values(data, "person") == {"1", "2", "3"}
    assert values(data, "session") == {"6", "7", "9"}
    assert data.manifest["channels"][:3] == ["userAcceleration.x", "userAcceleration.y", "userAcceleration.z"]
    # files are read in trial-folder order: jog_9/sub_1 first
    np.testing.assert_allclose(data.x[0, :, 0], tables[("jog_9", 1)][:128, 9], atol=1e-5)
    np.testing.assert_allclose(data.x[0, :, 3], tables[("jog_9", 1)][:128, 6], atol=1e-5)
    every = load_path(root, LoadOptions(feature_columns="*"))
    assert every.shape[2] == 12  # the unnamed index column is not a feature


def test_motionsense_malformed_files_name_file_and_line(tmp_path):
    write_motionsense(tmp_path)
    path = tmp_path / "A_DeviceMotion_data" / "wlk_7" / "sub_2.csv"
    lines = path.read_text().splitlines()
    cells = lines[4].split(",")
    cells[11] = "abc"
    lines[4] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError) as error:
        load_path(tmp_path)
    assert_points_at(error, path, 5)
    assert "'abc' is not a finite number" in str(error.value)

    (tmp_path / "A_DeviceMotion_data" / "run_1").mkdir()
    with pytest.raises(FormatError, match=r"run_1: is not an '<act>_<trial>' folder; .*dws, ups"):
        load_path(tmp_path)


# ---------------------------------------------------------------- ESP32 CSI

ESP_HEADER = (
    "type,id,mac,rssi,rate,sig_mode,mcs,bandwidth,smoothing,not_sounding,aggregation,stbc,fec_coding,sgi,"
    "noise_floor,ampdu_cnt,channel,secondary_channel,local_timestamp,ant,sig_len,rx_state,len,first_word,data"
)


def csi_rows(rng, count: int, *, subcarriers: int = 8, start: int = 1_000_000, step: int = 10_000):
    """(esp-csi CSI_DATA rows with quoted comma lists, the integer lists)."""
    rows, lists = [], []
    for i in range(count):
        pairs = rng.integers(-30, 30, size=2 * subcarriers)
        lists.append(pairs)
        stamp = start + i * step + int(rng.integers(-500, 500))
        data = "[" + ",".join(str(v) for v in pairs) + "]"
        rows.append(
            f"CSI_DATA,{i},1a:00:00:00:00:01,-45,11,1,0,1,1,1,0,0,0,0,-93,0,11,1,{stamp},0,67,0,{2 * subcarriers},"
            f'1,"{data}"'
        )
    return rows, lists


def test_esp_csi_logs_labelled_by_folder(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "captures"
    (root / "wave").mkdir(parents=True)
    (root / "person_2" / "clap").mkdir(parents=True)
    wave, wave_lists = csi_rows(rng, 60)
    log = ["I (312) wifi:mode : sta (1a:00:00:00:00:02)", ESP_HEADER, *wave[:30], "I (900) csi: still here", *wave[30:]]
    (root / "wave" / "session1.csv").write_text("\n".join(log) + "\n")
    clap, _ = csi_rows(rng, 50)
    # a log saved without its header, with the space-separated, unquoted lists some firmware prints
    clap = [re.sub(r'"\[(.*)\]"', lambda m: "[ " + m[1].replace(",", " ") + " ]", row) for row in clap]
    (root / "person_2" / "clap" / "log.txt").write_text("\n".join(clap) + "\n")
    assert detect_format(root) == "esp32-csi"
    data = load_path(root, LoadOptions(window=20, stride=10))
    assert data.shape == (4 + 5, 20, 8)  # (50-20)//10+1 = 4 and (60-20)//10+1 = 5
    assert data.label_names == ("clap", "wave")
    assert values(data, "person") == {"2", "unknown"}
    first_wave = np.flatnonzero(data.y == data.label_names.index("wave"))[0]
    imaginary, real = wave_lists[0][0::2], wave_lists[0][1::2]
    np.testing.assert_allclose(data.x[first_wave, 0], np.hypot(imaginary, real), rtol=1e-6)

    with_phase = load_path(root, LoadOptions(window=20, stride=10, phase=True))
    assert with_phase.shape[2] == 16
    np.testing.assert_allclose(with_phase.x[first_wave, 0, 8:], np.arctan2(imaginary, real), rtol=1e-5)
    # packet times in microseconds, about 10 ms apart, on a 50 Hz grid: half as many samples
    timed = load_path(root, LoadOptions(time_column="local_timestamp", time_unit="us", rate=50, window=10, stride=5))
    assert timed.manifest["rate"] == 50
    assert len(timed.x) == (25 - 10) // 5 + 1 + (30 - 10) // 5 + 1


def test_wigesture_style_csv_with_label_and_domain_columns(tmp_path):
    rng = np.random.default_rng(5)
    rows = ["seq,timestamp,label,person,room,rssi,data"]
    for i in range(120):
        label, person, room = ("swipe", "4", "lab") if i < 70 else ("push", "5", "office")
        pairs = rng.integers(-20, 20, size=12)
        rows.append(f'{i},{i * 0.01:.2f},{label},{person},{room},-50,"[' + ",".join(map(str, pairs)) + ']"')
    path = tmp_path / "wigesture.csv"
    path.write_text("\n".join(rows) + "\n")
    assert detect_format(path) == "esp32-csi"
    data = load_path(path, LoadOptions(window=25, stride=25))
    assert data.shape == (2 + 2, 25, 6)
    assert data.label_names == ("push", "swipe")
    assert values(data, "person") == {"4", "5"} and values(data, "room") == {"lab", "office"}
    rooms = data.domains.values["room"]
    assert [rooms[c] for c in data.domains.codes("room")] == ["lab", "lab", "office", "office"]
    # a mapped column takes its domain; columns named after the others still set theirs
    mapped = load_path(path, LoadOptions(window=25, group_column="room=session"))
    assert values(mapped, "session") == {"lab", "office"} and values(mapped, "room") == {"unknown"}
    assert values(mapped, "person") == {"4", "5"}


def test_esp_csi_malformed_lists_name_file_and_line(tmp_path):
    rng = np.random.default_rng(6)
    rows, _ = csi_rows(rng, 30)
    rows[12] = rows[12].replace(',1,"[', ',1,"[7,', 1)  # one value too many: an odd count
    path = tmp_path / "wave" / "bad.csv"
    path.parent.mkdir()
    path.write_text(ESP_HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(FormatError) as error:
        load_path(tmp_path)
    assert_points_at(error, path, 14)
    assert "17 values, an odd count" in str(error.value)

    rows[12] = rows[12][:-10]  # a line cut off mid-list, as serial captures end
    path.write_text(ESP_HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(FormatError, match=r"bad.csv:14: its CSI list is not closed"):
        load_path(tmp_path)
    good, _ = csi_rows(rng, 30)
    (tmp_path / "single.csv").write_text(ESP_HEADER + "\n" + "\n".join(good) + "\n")
    with pytest.raises(FormatError, match=r"single.csv: has no label; name a label column"):
        load_path(tmp_path / "single.csv")


# ---------------------------------------------------------------- labelled CSV


def write_csv(path: Path, *, rate: float, plan, rng, extra: str = "") -> None:
    """time,subject,label,csi_0..csi_3,rssi rows at ``rate`` Hz; ``plan`` is [(subject, label, rows), ...]."""
    header = "time,subject,label,csi_0,csi_1,csi_2,csi_3,rssi" + extra
    rows, t = [header], 0.0
    for subject, label, count in plan:
        for _ in range(count):
            cells = ",".join(f"{v:.4f}" for v in rng.normal(size=4))
            rows.append(f"{t:.4f},{subject},{label},{cells},-40" + (",x" if extra else ""))
            t += 1.0 / rate
    path.write_text("\n".join(rows) + "\n")


def test_labelled_csv_columns_groups_and_stride(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "recording.csv"
    write_csv(path, rate=50, plan=[("a", "sit", 100), ("a", "walk", 100), ("b", "walk", 100)], rng=rng, extra=",note")
    assert detect_format(path) == "labelled-csv"
    options = LoadOptions(label_column="label", feature_columns="csi_*", group_column="subject", window=50)
    data = load_path(path, options)
    assert data.shape == (3 * 3, 50, 4)  # stride defaults to half the window: (100-50)//25+1
    assert data.manifest["channels"] == ["csi_0", "csi_1", "csi_2", "csi_3"]
    assert values(data, "person") == {"a", "b"}
    assert data.label_names == ("sit", "walk")
    strided = load_path(path, LoadOptions(feature_columns="csi_*,rssi", group_column="subject", window=50, stride=10))
    assert strided.shape == (3 * 6, 50, 5)
    mapped = load_path(path, LoadOptions(feature_columns="csi_*", group_column="subject=session", window=50))
    assert values(mapped, "session") == {"a", "b"} and values(mapped, "person") == {"unknown"}


def test_labelled_csv_resamples_to_a_common_rate(tmp_path):
    rng = np.random.default_rng(8)
    write_csv(tmp_path / "slow.csv", rate=50, plan=[("a", "sit", 100), ("a", "walk", 100)], rng=rng)
    write_csv(tmp_path / "fast.csv", rate=100, plan=[("b", "sit", 200), ("b", "walk", 200)], rng=rng)
    options = LoadOptions(feature_columns="csi_*", time_column="time", rate=50, window=40, stride=20)
    data = load_path(tmp_path, options)
    # every run spans 1.98 s (slow) or 1.99 s (fast): 100 samples at 50 Hz, (100-40)//20+1 windows each
    assert data.shape == (4 * 4, 40, 4)
    assert data.manifest["rate"] == 50
    assert values(data, "person") == {"a", "b"}
    # without a rate the grid is the median rate of all timed rows: 100 Hz, so slow.csv is upsampled
    common = load_path(tmp_path, LoadOptions(feature_columns="csi_*", time_column="time", window=40))
    assert common.manifest["rate"] == pytest.approx(100)
    assert len(common.x) == 2 * ((199 - 40) // 20 + 1) + 2 * ((200 - 40) // 20 + 1)
    # without a time column the rows' rate comes from source_rate; resampling 100 -> 50 Hz halves them
    halved = load_path(tmp_path / "fast.csv", LoadOptions(feature_columns="csi_*", source_rate=100, rate=50, window=40))
    assert halved.shape == (2 * 4, 40, 4)  # 200 rows -> 100 samples -> (100-40)//20+1


def test_labelled_csv_malformed_rows_name_file_and_line(tmp_path):
    rng = np.random.default_rng(9)
    path = tmp_path / "rec.csv"
    write_csv(path, rate=50, plan=[("a", "sit", 40)], rng=rng)
    lines = path.read_text().splitlines()
    lines[6] = lines[6].replace(",-40", ",oops")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError) as error:
        load_path(path, LoadOptions(window=10))
    assert_points_at(error, path, 7)
    assert "column 'rssi' 'oops' is not a finite number" in str(error.value)
    lines[6] = lines[6].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=r"rec.csv:7: has 7 cells, the header has 8"):
        load_path(path, LoadOptions(window=10))
    write_csv(path, rate=50, plan=[("a", "sit", 40)], rng=rng)
    with pytest.raises(FormatError, match=r"rec.csv:1: no column matches 'acc_\*'.*time, subject, label"):
        load_path(tmp_path, LoadOptions(feature_columns="acc_*"))


# ---------------------------------------------------------------- detection and options


def test_detection_refuses_unknown_layouts_and_stray_options(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("hello\n")
    with pytest.raises(FormatError) as error:
        detect_format(tmp_path / "notes")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'notes'}: matches no known format; give --format")
    assert all(name in message for name in FORMATS)
    (tmp_path / "UCI HAR Dataset.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(FormatError, match=r"Dataset.zip: is an archive; unpack it"):
        load_path(tmp_path / "UCI HAR Dataset.zip")
    with pytest.raises(FormatError, match="does not exist"):
        load_path(tmp_path / "missing")
    write_wisdm(tmp_path / "raw.txt")
    with pytest.raises(FormatError, match="option imu does not apply to the wisdm format .*pamap2"):
        load_path(tmp_path / "raw.txt", LoadOptions(imu="hand"))
    with pytest.raises(FormatError, match="unknown format 'hdf5'; the formats are: uci-har"):
        load_path(tmp_path / "raw.txt", LoadOptions(format="hdf5"))
    with pytest.raises(FormatError, match="option group_column maps 'env' to 'floor'"):
        LoadOptions(group_column="env=floor")


def test_options_parse_from_a_spec():
    options = LoadOptions.parse("pamap2:imu=each,channels=acc16+gyro,window=200,max_gap=5")
    assert (options.format, options.imu, options.channels, options.window, options.max_gap) == (
        "pamap2",
        "each",
        ("acc16", "gyro"),
        200,
        5,
    )
    assert LoadOptions.parse("auto:rate=25").format is None
    assert LoadOptions(group_column="subject,env=room").group_column == {"subject": "person", "env": "room"}
    with pytest.raises(FormatError, match="window must be a whole number"):
        LoadOptions(window=0)
