"""TOML configs: shipped ones by name (`sim`, `fetch_dynamixel`) or any file by path, strictly checked.

Every key is declared with its type and default, so a typo or a wrong value is an error that names
the file, the table and the key, instead of a silently ignored setting. The tables of the server,
its safety layer, CurveZMQ and the client are declared here; a backend's own table
(`[server.<backend>]`) is declared next to the backend (its class's `Settings`), found through the
backend registry: this module names no backend.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .backends.registry import BACKENDS, settings_of
from .bridge.endpoints import parse as parse_endpoint
from .errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"

_num = (int, float)


def _vec3(v):
    return isinstance(v, list) and len(v) == 3 and all(
        isinstance(x, _num) and not isinstance(x, bool) and math.isfinite(x) for x in v)


def _endpoint(bind: bool):
    """An endpoint key's check: empty (the default) or a plain endpoint, else the parser's ConfigError."""
    def check(v):
        if v:
            parse_endpoint(v, bind=bind)
        return True
    return check


# table -> key -> (type(s), default, check or None, what the check wants[, "path": resolved against
# the config file's folder, or a function (value, folder) -> value that resolves a structured value's
# paths]). Backends declare their own table in the same form (`Settings`).
SCHEMA: dict[str, dict[str, tuple]] = {
    "server": {
        "backend": (str, "kinematic", lambda v: v in BACKENDS, "one of " + ", ".join(map(repr, BACKENDS))),
        "clock": (str, "lockstep", lambda v: v in ("lockstep", "realtime"), "'lockstep' or 'realtime'"),
        "control_period": (_num, 0.04, lambda v: 0.001 <= v <= 1.0, "between 0.001 and 1.0 s"),
        "endpoint": (str, "", _endpoint(bind=True), ""),
        "stream_endpoint": (str, "", _endpoint(bind=True), ""),
        "insecure": (bool, False, None, ""),
        "lockstep_lease_timeout": (_num, 300.0, lambda v: 0 <= v <= 86400,
                                   "between 0 (never lapses) and 86400 s"),
        # where a latched e-stop is kept across restarts: "auto" (hardware backends, under
        # $XDG_STATE_HOME/robot-env/), "" (not kept), or a file path (relative to this config)
        "estop_file": (str, "auto", None, ""),
    },
    "server.security": {
        "server_secret_key": (str, "", None, ""),
        "allowed_clients": (list, [], lambda v: all(isinstance(x, str) and x for x in v),
                            "a list of .key files or directories of them"),
    },
    "server.safety": {
        "profile": (str, "default", lambda v: v in ("default", "moveit"), "'default' or 'moveit'"),
        "arm_acceleration": (_num, 0.0, lambda v: v >= 0, ">= 0 (0 = the profile's value)"),
        "workspace_min": (list, [0.0, -0.9, 0.05], _vec3, "a list of 3 numbers (m)"),
        "workspace_max": (list, [1.3, 0.9, 1.7], _vec3, "a list of 3 numbers (m)"),
        "floor_height": (_num, 0.05, lambda v: -1 <= v <= 2, "between -1 and 2 m"),
        "max_ee_step": (_num, 0.06, lambda v: 0 < v <= 0.2, "in (0, 0.2] m"),
        "max_joint_step": (_num, 1.0, lambda v: 0 < v <= 6.3, "in (0, 6.3] rad"),
        "watchdog_timeout": (_num, 0.25, lambda v: 0.01 <= v <= 10, "between 0.01 and 10 s"),
        "velocity_timeout": (_num, 0.25, lambda v: 0.01 <= v <= 10,
                             "between 0.01 and 10 s (base_twist and arm_velocity lapse unless refreshed)"),
    },
    "client": {
        "endpoint": (str, "", _endpoint(bind=False), ""),
        "timeout": (_num, 5.0, lambda v: 0 < v <= 600, "in (0, 600] s"),
        "retries": (int, 2, lambda v: 0 <= v <= 10, "between 0 and 10"),
        "server_public_key": (str, "", None, ""),
        "client_secret_key": (str, "", None, ""),
    },
}


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """A shipped config name, or a path to a TOML file."""
    if name_or_path is None:
        name_or_path = "sim"
    text = str(name_or_path)
    if os.sep not in text and not text.endswith(".toml"):
        path = CONFIG_DIR / f"{text}.toml"
        if not path.exists():
            shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
            raise ConfigError(f"no shipped config named {text!r} (shipped: {', '.join(shipped)}); "
                              "or give a path to a .toml file")
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    return path


def load(name_or_path=None, overrides: dict | None = None) -> dict:
    """Read, check and default-fill a config. `overrides` is {"table": {"key": value}} applied on top."""
    if isinstance(name_or_path, dict):
        raw = {k: v for k, v in name_or_path.items() if k != "source"}
        where = name_or_path.get("source", "<dict>")
        raw = _unflatten(raw)
    else:
        path = resolve(name_or_path)
        where = str(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    flat = _flatten(raw, where)
    for table, values in (overrides or {}).items():
        flat.setdefault(table, {}).update(values)
    out = {}
    backend = flat.get("server", {}).get("backend", SCHEMA["server"]["backend"][1])
    tables = dict(SCHEMA)
    for table in [*flat, f"server.{backend}"]:
        name = table[len("server."):] if table.startswith("server.") else None
        if name in BACKENDS and table not in tables:
            tables[table] = settings_of(name)  # a backend's table: declared next to the backend
    for table, keys in tables.items():
        given = flat.pop(table, {})
        section = {}
        for key, entry in keys.items():
            if key not in given:
                section[key] = entry[1]
                continue
            value = given.pop(key)
            _check_value(where, table, key, value, entry)
            section[key] = value
        if given:
            raise ConfigError(f"{where}: [{table}] unknown key(s) {', '.join(sorted(given))}; "
                              f"known: {', '.join(keys)}")
        out[table] = section
    if flat:
        known = [*SCHEMA, *(f"server.{b}" for b in BACKENDS)]
        raise ConfigError(f"{where}: unknown table(s) {', '.join(f'[{t}]' for t in sorted(flat))}; "
                          f"known: {', '.join(f'[{t}]' for t in known)}")
    # Path settings of the backends: relative to the config file (a dict config: to the shipped configs).
    path_base = Path(where).parent if where != "<dict>" else CONFIG_DIR
    # A callable in that place resolves a structured setting's paths itself: (value, folder) -> value.
    for table, keys in tables.items():
        for key, entry in keys.items():
            if len(entry) > 4 and callable(entry[4]) and table in out and out[table][key]:
                out[table][key] = entry[4](out[table][key], path_base)
            elif len(entry) > 4 and entry[4] == "path" and table in out and out[table][key] \
                    and not os.path.isabs(out[table][key]):
                out[table][key] = str((path_base / out[table][key]).resolve())
    out["source"] = where
    _check_safety(out["server.safety"], where)
    # Key files: relative to the config file (a dict config: to the working directory).
    key_base = Path(where).parent if where != "<dict>" else Path.cwd()
    sec, cc = out["server.security"], out["client"]
    for section, key in ((sec, "server_secret_key"), (cc, "server_public_key"), (cc, "client_secret_key")):
        if section[key]:
            section[key] = str((key_base / Path(section[key]).expanduser()).resolve())
    sec["allowed_clients"] = [str((key_base / Path(p).expanduser()).resolve()) for p in sec["allowed_clients"]]
    estop = out["server"]["estop_file"]
    if estop not in ("", "auto"):
        out["server"]["estop_file"] = str((key_base / Path(estop).expanduser()).resolve())
    return out


def _check_value(where: str, table: str, key: str, value, entry=None) -> None:
    """One key's type, finiteness (numbers and the numbers in lists: TOML has inf and nan) and check."""
    typ, _, check, wants = (entry or SCHEMA[table][key])[:4]
    if isinstance(value, bool) and typ is not bool or not isinstance(value, typ):
        tname = "number" if typ is _num else getattr(typ, "__name__", str(typ))
        raise ConfigError(f"{where}: [{table}] {key}: expected a {tname}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: [{table}] {key}: must be finite, got {value!r}")
    if isinstance(value, list) and any(isinstance(x, float) and not math.isfinite(x) for x in value):
        raise ConfigError(f"{where}: [{table}] {key}: must be finite numbers, got {value!r}")
    try:
        ok = check is None or check(value)
    except ConfigError as exc:  # a check that says what is wrong itself (endpoints)
        raise ConfigError(f"{where}: [{table}] {key}: {exc}") from None
    if not ok:
        raise ConfigError(f"{where}: [{table}] {key}: expected {wants}, got {value!r}")


def _check_safety(s: dict, where: str) -> None:
    """The rules across [server.safety] keys: a box with min < max on every axis (an inverted or flat
    one holds no target) and a floor below the box's top (else no height is allowed)."""
    lo, hi = s["workspace_min"], s["workspace_max"]
    bad = [f"{axis}: {a!r} >= {b!r}" for axis, a, b in zip("xyz", lo, hi) if not a < b]
    if bad:
        raise ConfigError(f"{where}: [server.safety] workspace_min: must be below workspace_max on every axis; "
                          f"{', '.join(bad)}")
    if not s["floor_height"] < hi[2]:
        raise ConfigError(f"{where}: [server.safety] floor_height: {s['floor_height']!r} is at or above the "
                          f"workspace top (workspace_max z = {hi[2]!r}): no gripper height would be allowed")


def _unflatten(raw: dict) -> dict:
    """Accept the flat {"server.safety": {...}} form that `load` returns, as well as nested TOML."""
    out: dict = {}
    for key, body in raw.items():
        top, _, sub = key.partition(".")
        if sub:
            out.setdefault(top, {})[sub] = body
        else:
            out.setdefault(top, {}).update(body if isinstance(body, dict) else {"": body})
    return out


def _flatten(raw: dict, where: str) -> dict:
    """{"server": {"safety": {...}, "clock": ...}} -> {"server": {...}, "server.safety": {...}}."""
    flat: dict[str, dict] = {}
    for top, body in raw.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: top-level key {top!r} must be a table like [{top}]")
        flat.setdefault(top, {})
        for key, value in body.items():
            if isinstance(value, dict):
                flat[f"{top}.{key}"] = dict(value)
            else:
                flat[top][key] = value
    return flat


def safety_config(cfg: dict):
    """The backend's SafetyConfig; the table is checked again, since a loaded config can be edited."""
    from .control.safety import SafetyConfig
    s = cfg["server.safety"]
    where = cfg.get("source", "<dict>")
    for key, value in s.items():
        _check_value(where, "server.safety", key, value)
    _check_safety(s, where)
    return SafetyConfig(profile=s["profile"], arm_acceleration=s["arm_acceleration"] or None,
                        workspace_min=tuple(s["workspace_min"]), workspace_max=tuple(s["workspace_max"]),
                        floor_height=s["floor_height"], max_ee_step=s["max_ee_step"],
                        max_joint_step=s["max_joint_step"], watchdog_timeout=s["watchdog_timeout"],
                        velocity_timeout=s["velocity_timeout"])


def backend_kwargs(cfg: dict) -> dict:
    """What the config's backend is built with: its safety config, the control period and its own
    `[server.<backend>]` table (the server, the benchmarks and their children build it alike)."""
    return dict(safety=safety_config(cfg), control_period=cfg["server"]["control_period"],
                **cfg.get(f"server.{cfg['server']['backend']}", {}))


def serial_port_override(config, port: str | None) -> dict:
    """`overrides` that set the config's backend's `serial_port` (the CLIs' --serial-port); {} for None."""
    if not port:
        return {}
    cfg = load(config)
    backend = cfg["server"]["backend"]
    if "serial_port" not in settings_of(backend):
        raise ConfigError(f"{cfg['source']}: --serial-port is for a hardware backend; [server] backend "
                          f"{backend!r} has no serial port")
    return {f"server.{backend}": {"serial_port": port}}
