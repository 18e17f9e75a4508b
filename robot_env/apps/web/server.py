"""The HTTP + WebSocket server: the page's files, the login token, and one socket per page.

Every socket is checked before it is upgraded: its Origin must be this server's own address (a page
from another site cannot drive the robot through the user's browser), and, when a token is set, the
token must come with it (the `robot_env_token` cookie that `/?token=...` sets, or `?token=` on the
socket's URL). On loopback without a token, the Host must be a loopback name too (a DNS-rebound
site's Origin would match its Host). Messages are checked by `controls.parse`; events from the robot
thread are fanned out to the pages, camera frames as binary messages, dropped for a page that has not
taken the previous one yet.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import json
import logging
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from .controls import MAX_MESSAGE, BadMessage, parse

log = logging.getLogger(__name__)
COOKIE = "robot_env_token"
STATIC = ("index.html", "app.js", "style.css")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
MAX_PENDING = 256  # events queued for a page that does not read; past that they are dropped
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                                               "frame-ancestors 'none'"}


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Page:
    """One open socket: its queue of JSON events and the newest unsent frame of each camera."""

    def __init__(self, pid: int, ws: web.WebSocketResponse, name: str):
        self.id = pid
        self.ws = ws
        self.name = name
        self.events: list[str] = []
        self.state: str | None = None  # only the newest state is worth sending
        self.frames: dict[str, bytes] = {}
        self.wake = asyncio.Event()

    async def sender(self) -> None:
        while not self.ws.closed:
            await self.wake.wait()
            self.wake.clear()
            events, self.events = self.events, []
            if self.state is not None:
                events.append(self.state)
                self.state = None
            frames, self.frames = self.frames, {}
            try:
                for text in events:
                    await self.ws.send_str(text)
                for cam, jpeg in frames.items():
                    name = cam.encode()
                    await self.ws.send_bytes(bytes([len(name)]) + name + jpeg)
            except (ConnectionError, RuntimeError):
                return


class WebServer:
    def __init__(self, robot, *, token: str | None, link_options: dict | None = None):
        from .link import RobotLink

        self.robot = robot
        self.token = token
        self.pages: dict[int, Page] = {}
        self._ids = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.link = RobotLink(robot, self._publish, **(link_options or {}))
        self.app = web.Application(client_max_size=MAX_MESSAGE, middlewares=[self._headers])
        self.app.router.add_get("/", self._index)
        for name in STATIC[1:]:
            self.app.router.add_get(f"/{name}", self._static)
        self.app.router.add_get("/ws", self._socket)
        self.app.on_startup.append(self._startup)
        self.app.on_shutdown.append(self._shutdown)

    # -- lifecycle ---------------------------------------------------------------------------
    async def _startup(self, app) -> None:
        self.loop = asyncio.get_running_loop()
        self.link.start()

    async def _shutdown(self, app) -> None:
        for page in list(self.pages.values()):
            await page.ws.close(code=1001, message=b"server shutting down")
        await self.loop.run_in_executor(None, self.link.close)

    @web.middleware
    async def _headers(self, request, handler):
        resp = await handler(request)
        if not isinstance(resp, web.WebSocketResponse):
            resp.headers.update(SECURITY_HEADERS)
        return resp

    # -- auth ---------------------------------------------------------------------------------
    def _token_ok(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _host_ok(self, request: web.Request) -> bool:
        """Without a token the server is loopback-only: the Host must name loopback (DNS rebinding)."""
        if self.token is not None:
            return True
        host = urlsplit("//" + (request.host or "")).hostname or ""
        return host in LOOPBACK_NAMES or is_loopback(host)

    def _origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return False
        return origin == f"{request.scheme}://{request.host}"

    # -- routes -------------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        if not self._host_ok(request):
            return web.Response(status=403, text="this server answers only on loopback names")
        if not self._token_ok(request):
            return web.Response(status=401, content_type="text/html", text=LOGIN)
        if "token" in request.query:  # keep the token out of the address bar and the history
            resp = web.HTTPFound("/")
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
            raise resp
        return self._file("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        if not self._host_ok(request):
            return web.Response(status=403, text="this server answers only on loopback names")
        if not self._token_ok(request):
            return web.Response(status=401, text="login token needed")
        return self._file(request.path.lstrip("/"))

    @staticmethod
    def _file(name: str) -> web.Response:
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        ext = name[name.rfind("."):]
        return web.Response(body=data, content_type=TYPES[ext], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if not self._host_ok(request):
            return web.Response(status=403, text="this server answers only on loopback names")
        if not self._origin_ok(request):
            return web.Response(status=403, text="WebSocket refused: its Origin is not this server")
        if not self._token_ok(request):
            return web.Response(status=401, text="WebSocket refused: login token missing or wrong")
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=5.0)
        await ws.prepare(request)
        pid = next(self._ids)
        page = Page(pid, ws, f"page {pid} ({request.remote})")
        self.pages[pid] = page
        sender = asyncio.create_task(page.sender())
        self._send(page, {"type": "hello", "you": pid, "name": page.name, **self._spec()})
        self.link.submit(pid, "open:" + page.name)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        req = parse(msg.data)
                    except BadMessage as exc:
                        self._send(page, {"type": "error", "code": exc.code, "message": str(exc)})
                        continue
                    if req.type == "ping":  # the page <-> web round trip, answered here
                        self._send(page, {"type": "pong", "value": req.value})
                    else:
                        self.link.submit(pid, req)
                elif msg.type == WSMsgType.BINARY:
                    self._send(page, {"type": "error", "code": "bad_message", "message": "messages are JSON text"})
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            # the socket is gone, however it went: whatever this page held stops now
            self.link.submit(pid, "closed")
            del self.pages[pid]
            page.wake.set()
            sender.cancel()
        return ws

    def _spec(self) -> dict:
        """What the page needs from the robot's hello, and nothing else (no endpoints, no keys)."""
        info = self.robot.client.info or {}
        spec = info.get("spec") or {}
        joints = (info.get("description") or {}).get("joints") or []
        return {
            "backend": info.get("backend"), "clock": info.get("clock"), "period": info.get("control_period"),
            "channels": sorted(info.get("channels") or ()),
            "joints": [{"name": j.get("name"), "kind": j.get("kind"), "lower": j.get("lower"),
                        "upper": j.get("upper"), "velocity": j.get("velocity")} for j in joints],
            "cameras": {n: {"width": c.get("width"), "height": c.get("height")} for n, c in
                        (spec.get("cameras") or {}).items() if n in self.link.cameras},
        }

    # -- events from the robot thread ---------------------------------------------------------
    def _publish(self, event: dict) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dispatch, event)

    def _dispatch(self, event: dict) -> None:
        to = event.pop("to", None)
        pages = [self.pages[to]] if to in self.pages else [] if to is not None else list(self.pages.values())
        if event["type"] == "frame":
            for page in pages:
                page.frames[event["camera"]] = event["jpeg"]
                page.wake.set()
            return
        text = json.dumps(event, allow_nan=False)
        for page in pages:
            if event["type"] == "state":
                page.state = text
            elif len(page.events) < MAX_PENDING:
                page.events.append(text)
            page.wake.set()

    def _send(self, page: Page, event: dict) -> None:
        page.events.append(json.dumps(event, allow_nan=False))
        page.wake.set()


LOGIN = """<!doctype html><meta charset="utf-8"><title>robot-env: login</title>
<style>body{font:16px system-ui;margin:4em auto;max-width:28em}input{font:inherit;width:100%}</style>
<h1>robot-env web</h1><p>This server needs the login token it printed when it started.</p>
<form method="get" action="/"><input name="token" type="password" autofocus placeholder="token">
<p><button>Log in</button></form>"""
