"""Calibration files: the shipped one loads, limits are narrowed to what servos reach, errors name the place."""
import math

import pytest

from drivers.calibration import load_calibration
from robot_env import config
from robot_env.errors import ConfigError
from robot_env.model.description import FETCH

SHIPPED = config.load("fetch_dynamixel")["server.dynamixel"]["calibration"]


def test_shipped_calibration_covers_every_joint_and_two_wheels():
    cal = load_calibration(SHIPPED)
    assert [s.joint for s in cal.joints] == list(FETCH.names)
    assert len(cal.wheels) == 2 and all(s.mode == "velocity" for s in cal.wheels)
    assert len({s.id for s in cal.servos}) == 13


def test_ticks_round_trip_and_limits_fit_one_turn():
    cal = load_calibration(SHIPPED)
    for s in cal.joints:
        for x in (s.lower, 0.5 * (s.lower + s.upper), s.upper):
            assert abs(s.to_units(s.to_ticks(x)) - x) <= 1.0 / s.ticks_per_unit
        lo, hi = s.tick_limits()
        if s.mode == "position":
            assert 0 <= lo < hi <= 4095
        joint = FETCH.joints[s.index]
        assert joint.lower <= s.lower < s.upper <= joint.upper
    roll = cal.joints[3]
    assert roll.upper < math.pi  # +π would be tick 4096: narrowed to the servo's range


def _write(tmp_path, text):
    p = tmp_path / "cal.toml"
    p.write_text(open(SHIPPED).read() + text)
    return p


@pytest.mark.parametrize("extra,words", [
    ("\n[joints.bogus_joint]\nid = 40\nmodel = 'XM430-W350'\nmode = 'position'\nzero = 0\nticks_per_unit = 1.0\n",
     ["bogus_joint"]),
    ("\n[nonsense]\nx = 1\n", ["nonsense"]),
])
def test_unknown_entries_are_errors(tmp_path, extra, words):
    with pytest.raises(ConfigError) as info:
        load_calibration(_write(tmp_path, extra))
    assert all(w in str(info.value) for w in words) and "cal.toml" in str(info.value)


@pytest.mark.parametrize("old,new,words", [
    ("id = 2\n", "id = 1\n", ["used twice"]),
    ('model = "XM540-W270"\nmode = "position"', 'model = "XL999"\nmode = "position"', ["XL999"]),
    ('mode = "position"\ndirection = 1\nzero = 2048', 'mode = "spin"\ndirection = 1\nzero = 2048', ["spin"]),
    ("direction = -1\nzero = 2048", "direction = 2\nzero = 2048", ["direction"]),
])
def test_bad_values_name_the_joint(tmp_path, old, new, words):
    text = open(SHIPPED).read()
    assert old in text
    p = tmp_path / "cal.toml"
    p.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_calibration(p)
    assert all(w in str(info.value) for w in words)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_calibration("/nonexistent/cal.toml")
