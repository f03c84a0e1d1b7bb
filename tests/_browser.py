"""A real browser for tests: load a local HTML file in headless Chromium and report what happened.

``load_page(path)`` starts Chromium headless, opens the file over the Chrome DevTools Protocol
(CDP) and returns a :class:`PageResult`: the console errors and uncaught exceptions, every
request the page made (anything but the page itself and ``data:`` URLs), a full-page PNG
screenshot and, optionally, the value of a JavaScript expression evaluated after load.
:class:`Browser` keeps one Chromium for several pages (``with Browser() as b: b.load(path)``).

Requests stay off the network: the browser blocks http(s)/ws(s) sub-resources and resolves no
host name (frames and images on a literal IP such as 127.0.0.1 are still tried), so a page that
reaches out is reported at once instead of waiting on a timeout. The CDP websocket is a small stdlib client (``_WebSocket``): no extra dependency.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ENV_VAR = "PRUNEKIT_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# what a page may not load from: the network (file:// sub-resources are still reported as requests)
BLOCKED_URL_PATTERNS = ("http://*", "https://*", "ws://*", "wss://*", "ftp://*")
MAX_SCREENSHOT_HEIGHT = 16384  # Chromium's limit on one captured surface


class BrowserError(RuntimeError):
    """Chromium could not be started, timed out, or could not load or evaluate the page."""


@dataclass
class PageResult:
    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)  # URLs whose load failed
    screenshot_png: bytes = b""
    value: Any = None  # the value of ``evaluate`` (JSON), None without one


def find_chromium() -> str | None:
    """The Chromium (or Chrome) to run: ``$PRUNEKIT_CHROMIUM`` first, then the usual names."""
    override = os.environ.get(ENV_VAR)
    if override:
        return shutil.which(override) or (override if os.access(override, os.X_OK) else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def load_page(
    path: Path,
    *,
    width: int = 1200,
    height: int = 900,
    timeout: float = 30,
    evaluate: str | None = None,
    settle: float = 0.25,
) -> PageResult:
    """Load ``path`` in a fresh headless Chromium and report what happened (see the module).

    ``timeout`` bounds starting the browser and loading the page together; past it a
    :class:`BrowserError` is raised. The browser and its profile are always removed.
    """
    deadline = time.monotonic() + timeout
    with Browser(timeout=timeout) as browser:
        left = max(0.1, deadline - time.monotonic())
        return browser.load(
            path, width=width, height=height, timeout=left, evaluate=evaluate, settle=settle
        )


def is_blank(png: bytes, *, tolerance: int = 16) -> bool:
    """Whether a screenshot is (nearly) one colour: no pixel differs from the most common colour
    by more than ``tolerance`` (of 255) in any channel. One short word of text is not blank.
    """
    from PIL import Image, ImageChops

    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height) or []
    if len(colours) <= 1:
        return True
    _, dominant = max(colours, key=lambda count_colour: count_colour[0])
    diff = ImageChops.difference(image, Image.new("RGB", image.size, dominant))
    r, g, b = diff.split()
    worst = ImageChops.lighter(ImageChops.lighter(r, g), b)  # per pixel, the largest difference
    return worst.point(lambda v: 255 if v > tolerance else 0).getbbox() is None


# --- the browser ----------------------------------------------------------------------------------


class Browser:
    """One headless Chromium, its temporary profile and a CDP connection; a context manager."""

    def __init__(self, executable: str | None = None, *, timeout: float = 30) -> None:
        found = executable or find_chromium()
        if found is None:
            raise BrowserError(f"no Chromium found (install chromium or set ${ENV_VAR})")
        self.executable = found
        self.timeout = timeout
        self._profile: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._cdp: _Cdp | None = None

    def __enter__(self) -> Browser:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The browser's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def profile_dir(self) -> Path | None:
        """The temporary profile while the browser runs (removed by :meth:`close`)."""
        return Path(self._profile) if self._profile is not None else None

    def start(self) -> None:
        deadline = time.monotonic() + self.timeout
        self._profile = tempfile.mkdtemp(prefix="prunekit-chromium-")
        args = [
            self.executable,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-sync",
            "--disable-breakpad",
            "--disable-crash-reporter",
            "--disable-dev-shm-usage",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--disable-site-isolation-trials",  # cross-site frames stay in the page's session
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-device-scale-factor=1",
            "--force-color-profile=srgb",
            "--window-size=1200,900",
            "about:blank",
        ]
        stderr_path = Path(self._profile, "stderr.log")
        with open(stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group: close() ends every child
            )
        port_file = Path(self._profile, "DevToolsActivePort")
        while True:
            lines = port_file.read_text().split("\n") if port_file.exists() else []
            if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].strip():
                port, ws_path = int(lines[0]), lines[1].strip()
                break
            if self._proc.poll() is not None:
                raise BrowserError(
                    f"{self.executable} exited with {self._proc.returncode} before DevTools "
                    f"was up:\n{_tail(stderr_path)}"
                )
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"{self.executable}: no DevTools port after {self.timeout:g} s:\n"
                    f"{_tail(stderr_path)}"
                )
            time.sleep(0.02)
        self._cdp = _Cdp(_WebSocket.connect("127.0.0.1", port, ws_path, deadline))

    def close(self) -> None:
        """End Chromium and all its children, remove the profile; safe to call twice."""
        if self._cdp is not None:
            with contextlib.suppress(OSError, BrowserError):
                self._cdp.call("Browser.close", deadline=time.monotonic() + 2)
            self._cdp.close()
            self._cdp = None
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)  # the group: renderers, zygote, crashpad
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # any child left after the main process
        profile, self._profile = self._profile, None
        if profile is not None:
            for _ in range(5):  # a dying child may still write into the profile
                shutil.rmtree(profile, ignore_errors=True)
                if not os.path.exists(profile):
                    break
                time.sleep(0.1)

    def load(
        self,
        path: Path,
        *,
        width: int = 1200,
        height: int = 900,
        timeout: float | None = None,
        evaluate: str | None = None,
        settle: float = 0.25,
    ) -> PageResult:
        """Open ``path`` in a new tab of this browser; see the module for what is reported."""
        if self._cdp is None:
            raise BrowserError("the browser is not running (use it as a context manager)")
        cdp = self._cdp
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        url = Path(path).resolve().as_uri()
        target = cdp.call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)
        target_id = target["targetId"]
        try:
            session = cdp.call(
                "Target.attachToTarget", {"targetId": target_id, "flatten": True}, deadline=deadline
            )["sessionId"]
            return self._load(cdp, session, url, width, height, deadline, timeout, evaluate, settle)
        finally:
            with contextlib.suppress(OSError, BrowserError):
                cdp.call(
                    "Target.closeTarget",
                    {"targetId": target_id},
                    deadline=max(deadline, time.monotonic() + 2),
                )

    def _load(
        self,
        cdp: _Cdp,
        session: str,
        url: str,
        width: int,
        height: int,
        deadline: float,
        timeout: float,
        evaluate: str | None,
        settle: float,
    ) -> PageResult:
        def call(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
            return cdp.call(method, params, session=session, deadline=deadline)

        first_event = len(cdp.events)
        for domain in ("Runtime", "Log", "Network", "Page"):
            call(f"{domain}.enable")
        call("Page.setLifecycleEventsEnabled", {"enabled": True})
        call("Network.setCacheDisabled", {"cacheDisabled": True})
        call("Network.setBlockedURLs", {"urls": list(BLOCKED_URL_PATTERNS)})
        call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        nav = call("Page.navigate", {"url": url})
        if nav.get("errorText"):
            raise BrowserError(f"could not open {url}: {nav['errorText']}")
        frame_id, loader_id = nav["frameId"], nav.get("loaderId")

        def loaded(event: _Event) -> bool:
            if event.session != session or event.method != "Page.lifecycleEvent":
                return False
            p = event.params
            return bool(
                p.get("name") == "load"
                and p.get("frameId") == frame_id
                and (loader_id is None or p.get("loaderId") == loader_id)
            )

        if cdp.wait_for(loaded, since=first_event, deadline=deadline) is None:
            raise BrowserError(f"{url}: no load event after {timeout:g} s")
        cdp.pump(until=min(deadline, time.monotonic() + settle))

        result = PageResult(url=url)
        if evaluate is not None:
            answer = call(
                "Runtime.evaluate",
                {"expression": evaluate, "returnByValue": True, "awaitPromise": True},
            )
            if "exceptionDetails" in answer:
                raise BrowserError(f"evaluating {evaluate!r}: {_exception_text(answer)}")
            result.value = answer.get("result", {}).get("value")

        metrics = call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
        shot_w = max(1, math.ceil(size.get("width", width)))
        shot_h = min(MAX_SCREENSHOT_HEIGHT, max(1, math.ceil(size.get("height", height))))
        shot = call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": shot_w, "height": shot_h, "scale": 1},
            },
        )
        result.screenshot_png = base64.b64decode(shot["data"])
        cdp.pump(until=time.monotonic())  # anything already on the wire

        urls: dict[str, str] = {}
        for event in cdp.events[first_event:]:
            if event.session != session:
                continue
            p = event.params
            if event.method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                text = " ".join(_remote_text(arg) for arg in p.get("args", []))
                result.console_errors.append(f"console.{p['type']}: {text}")
            elif event.method == "Runtime.exceptionThrown":
                result.console_errors.append(_exception_text(p))
            elif event.method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                where = f" ({entry['url']})" if entry.get("url") else ""
                result.console_errors.append(
                    f"{entry.get('source', 'log')}: {entry['text']}{where}"
                )
            elif event.method == "Network.requestWillBeSent":
                request_url = p["request"]["url"]
                urls[p["requestId"]] = request_url
                if _is_request(request_url, url):
                    result.requests.append(request_url)
            elif event.method == "Network.loadingFailed":
                failed = urls.get(p["requestId"], f"<request {p['requestId']}>")
                if _is_request(failed, url):
                    result.failed_requests.append(failed)
        return result


def _is_request(request_url: str, page_url: str) -> bool:
    """Whether a URL the page asked for is a real request: not the page itself, not ``data:``."""
    return request_url.split("#")[0] != page_url and not request_url.startswith("data:")


def _remote_text(arg: dict[str, Any]) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("unserializableValue") or arg.get("type", ""))


def _exception_text(p: dict[str, Any]) -> str:
    details = p.get("exceptionDetails", {})
    exception = details.get("exception", {})
    text = exception.get("description") or details.get("text") or "exception"
    return f"uncaught: {text}"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the DevTools protocol over a websocket ---------------------------------------------------------


@dataclass
class _Event:
    method: str
    params: dict[str, Any]
    session: str | None


class _Cdp:
    """Calls and events of the DevTools protocol on one websocket (flat sessions)."""

    def __init__(self, ws: _WebSocket) -> None:
        self.ws = ws
        self.events: list[_Event] = []
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        deadline: float,
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send_text(json.dumps(message))
        while self._next_id not in self._replies:
            if not self._read(deadline):
                raise BrowserError(f"DevTools: no answer to {method} in time")
        reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise BrowserError(f"DevTools {method}: {reply['error'].get('message', reply)}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def wait_for(
        self, matches: Callable[[_Event], bool], *, since: int, deadline: float
    ) -> _Event | None:
        """The first event from index ``since`` on that ``matches``; None at the deadline."""
        seen = since
        while True:
            for event in self.events[seen:]:
                if matches(event):
                    return event
            seen = len(self.events)
            if not self._read(deadline):
                return None

    def pump(self, *, until: float) -> None:
        """Read events until the given time (at least what is already waiting)."""
        while self._read(until):
            pass

    def _read(self, deadline: float) -> bool:
        """Read one message into the events or replies; False when the deadline came first."""
        text = self.ws.recv_text(deadline)
        if text is None:
            return False
        message = json.loads(text)
        if "id" in message:
            self._replies[int(message["id"])] = message
        elif "method" in message:
            self.events.append(
                _Event(message["method"], message.get("params", {}), message.get("sessionId"))
            )
        return True

    def close(self) -> None:
        self.ws.close()


class _WebSocket:
    """The client end of a websocket (RFC 6455), only as much as a local DevTools needs."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self._buf = bytearray(buffered)

    @classmethod
    def connect(cls, host: str, port: int, path: str, deadline: float) -> _WebSocket:
        sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            data = b""
            while b"\r\n\r\n" not in data:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    raise BrowserError("DevTools closed the connection during the handshake")
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            if " 101 " not in f"{lines[0]} ":
                raise BrowserError(f"DevTools refused the websocket: {lines[0]}")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)
            }
            accept = base64.b64encode(hashlib.sha1((key + cls.GUID).encode()).digest()).decode()
            if headers.get("sec-websocket-accept") != accept:
                raise BrowserError("DevTools answered the websocket handshake wrongly")
        except (OSError, BrowserError) as error:
            sock.close()
            if isinstance(error, TimeoutError):
                raise BrowserError("DevTools websocket handshake timed out") from error
            raise
        return cls(sock, rest)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv_text(self, deadline: float) -> str | None:
        """The next text message, or None when none came by the deadline."""
        fragments: list[bytes] = []
        while True:
            frame = self._frame(deadline)
            if frame is None:
                if fragments:  # never give up halfway through a message
                    deadline = time.monotonic() + 10
                    continue
                return None
            fin, opcode, payload = frame
            if opcode == 0x8:
                raise BrowserError("DevTools closed the websocket")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x2) or (opcode == 0x0 and fragments):
                fragments.append(payload)
                if fin:
                    return b"".join(fragments).decode("utf-8", errors="replace")
            # pong and anything else: ignored

    def _frame(self, deadline: float) -> tuple[bool, int, bytes] | None:
        if not self._fill(2, deadline):
            return None
        b0, b1 = self._buf[0], self._buf[1]
        n, at = b1 & 0x7F, 2
        if n == 126:
            self._need(4, deadline)
            n, at = struct.unpack("!H", self._buf[2:4])[0], 4
        elif n == 127:
            self._need(10, deadline)
            n, at = struct.unpack("!Q", self._buf[2:10])[0], 10
        mask = b""
        if b1 & 0x80:
            self._need(at + 4, deadline)
            mask, at = bytes(self._buf[at : at + 4]), at + 4
        self._need(at + n, deadline)
        payload = bytes(self._buf[at : at + n])
        del self._buf[: at + n]
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def _need(self, n: int, deadline: float) -> None:
        # once a frame has begun, finish it (a little past the deadline rather than lose sync)
        if not self._fill(n, max(deadline, time.monotonic() + 10)):
            raise BrowserError("DevTools: a websocket frame stopped halfway")

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self._buf) < n:
            # past the deadline, still take what is already waiting
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buf)))
            except TimeoutError:
                return False
            if not chunk:
                raise BrowserError("DevTools closed the connection")
            self._buf += chunk
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, b"")
        self.sock.close()
