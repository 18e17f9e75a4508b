"""`robot-env setup-servos`: give fresh servos their IDs and the bus baud rate, one at a time.

New Dynamixels all answer as ID 1 at 57600 baud, so they must be connected alone: for each
joint of the calibration, connect only that servo, press Enter, and it is found (at any
standard baud rate), given the joint's ID and the bus baud rate, and checked at the new setting.
"""
from __future__ import annotations

from . import control_table as ct
from .bus import BusError, DynamixelBus
from .calibration import Calibration

SEARCH_BAUDS = (57600, 1_000_000, 115200, 2_000_000, 3_000_000, 4_000_000, 9600)


def find_single_servo(port: str, bauds=SEARCH_BAUDS) -> tuple[int, int, int]:
    """(baud, id, model) of the one servo on the bus; an error if none or several answer."""
    for baud in bauds:
        with DynamixelBus(port, baud, retries=0) as bus:
            found = bus.broadcast_ping(timeout=0.15)
        if len(found) == 1:
            (sid, model), = found.items()
            return baud, sid, model
        if len(found) > 1:
            raise BusError(f"{len(found)} servos answer at {baud} baud (ids {sorted(found)}): "
                           "connect only the one to set up")
    raise BusError(f"no servo answers on {port} at any of {', '.join(map(str, bauds))} baud")


def assign(port: str, servo_id: int, baud: int, expect_model: int | None = None) -> str:
    """Set the lone servo's ID and baud rate; returns a one-line report."""
    old_baud, old_id, model = find_single_servo(port)
    if expect_model is not None and model != expect_model:
        raise BusError(f"the connected servo is a {ct.MODELS.get(model, model)}, expected "
                       f"{ct.MODELS.get(expect_model, expect_model)}")
    with DynamixelBus(port, old_baud) as bus:
        bus.write_field(old_id, "torque_enable", 0)
        if old_id != servo_id:
            bus.write_field(old_id, "id", servo_id)
        if old_baud != baud:
            bus.write_field(servo_id, "baud_rate", ct.BAUD_CODES[baud])
    with DynamixelBus(port, baud) as bus:
        got_model, _ = bus.ping(servo_id)
    if got_model != model:
        raise BusError(f"servo {servo_id} answers at {baud} baud with model {got_model}, expected {model}")
    return f"{ct.MODELS.get(model, model)}: id {old_id} @ {old_baud} -> id {servo_id} @ {baud}"


def run(port: str, cal: Calibration, baud: int, ask=input, say=print, only=None) -> int:
    """Walk through every servo of the calibration (or the joints named in `only`)."""
    done = 0
    for s in cal.servos:
        if only and s.joint not in only:
            continue
        ask(f"Connect ONLY the servo for {s.joint} (will be id {s.id}, {s.model}), then press Enter. ")
        say(f"  {s.joint}: {assign(port, s.id, baud, s.model_number)}")
        done += 1
    say(f"{done} servo(s) set up at {baud} baud")
    return done
