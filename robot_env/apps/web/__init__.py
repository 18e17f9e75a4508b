"""`robot-env web`: a control page in the browser (cameras, live state, hold-to-run jogs, e-stop).

The web server is one ordinary client of the robot server (`robot.connect`): the lease, the safety
layer and the command watchdog apply to it as to any client. Modules: `controls` (what a page may
send, the hold-to-run jogs), `link` (the thread that talks to the robot), `server` (HTTP, WebSocket,
login token, origin checks) and `static/` (the page: plain HTML, JS and CSS, no build step).
"""
from __future__ import annotations

import asyncio
import secrets
import signal
import sys

from ...errors import RobotEnvError

CAMERA_SIZE = (320, 240)


class WebError(RobotEnvError):
    """The web server cannot start (bad options, a lockstep server)."""


def run_web(config=None, *, endpoint: str | None = None, host: str = "127.0.0.1", port: int = 8080,
            token: str | None = None, fps: float = 12.0, speed: float = 0.5, hold_timeout: float = 0.3,
            camera_size=CAMERA_SIZE) -> int:
    """Connect to the robot (spawning an embedded server when the config names none), serve the page
    until SIGINT/SIGTERM, then stop the robot, release it and close."""
    from ...robot import connect
    from .server import WebServer, is_loopback

    if not 0 < port < 65536:
        raise WebError(f"--port must be 1..65535, got {port}")
    if not 0 <= fps <= 30:
        raise WebError(f"--fps must be in [0, 30] (0: no camera frames), got {fps}")
    if not 0 < hold_timeout <= 2.0:
        raise WebError(f"--hold-timeout must be in (0, 2] s, got {hold_timeout}")
    if not 0.05 <= speed <= 1.0:
        raise WebError(f"--speed must be in [0.05, 1], got {speed}")
    if token is not None and len(token) < 8:
        raise WebError("--token must have at least 8 characters")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(18)  # another address: nobody drives without it
    overrides: dict = {}
    if endpoint:
        overrides["client"] = {"endpoint": endpoint}
    else:  # a server we spawn renders at the page's size (a running one keeps its own)
        w, h = camera_size
        overrides["server.mujoco"] = {"camera_width": int(w), "camera_height": int(h)}
    robot = connect(config, overrides=_only_known(config, overrides))
    try:
        if robot.clock != "realtime":
            raise WebError("the server runs the lockstep clock, where the robot moves only on step(); the web page "
                           "needs a realtime server (robot-env serve --clock realtime)")
        robot.client.timeout = min(robot.client.timeout, 2.0)
        server = WebServer(robot, token=token,
                           link_options={"fps": fps, "speed": speed, "hold_timeout": hold_timeout})
        asyncio.run(_serve(server, host, port, token, f"{robot.backend} backend, "
                                                         f"{len(server.link.cameras)} camera(s)"))
        return 0
    finally:
        try:
            robot.close()
        except Exception as exc:
            print(f"robot-env web: closing the robot: {exc}", file=sys.stderr)


async def _serve(server, host: str, port: int, token: str | None, what: str) -> None:
    """Listen, say where (only once the socket is bound: a script may connect at once), serve until
    SIGINT/SIGTERM; then the pages are closed and the robot thread stops the robot."""
    from aiohttp import web

    runner = web.AppRunner(server.app, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise WebError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        print(f"WEB {url}  ({what}); Ctrl-C stops", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _only_known(config, overrides: dict) -> dict:
    """Drop the camera size for a config whose backend is not mujoco (its section would be unknown)."""
    if "server.mujoco" not in overrides:
        return overrides
    from ... import config as config_mod
    cfg = config_mod.load(config)
    if cfg["server"]["backend"] != "mujoco" or cfg["client"]["endpoint"]:
        overrides = {k: v for k, v in overrides.items() if k != "server.mujoco"}
    return overrides
