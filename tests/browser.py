"""Headless Chromium (Debian's `chromium` package) driven over the DevTools protocol, for the app's tests.

No driver and no websocket package: with --remote-debugging-pipe, Chromium reads JSON commands from its fd 3 and
writes answers and events to its fd 4, each message ending in a NUL byte.

    python tests/browser.py URL IMAGE OUT.png    # the screenshot in the README: IMAGE uploaded, its classes shown
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless browser with one page. Every URL the page requests is kept in `requests`."""

    def __init__(self, width: int = 1280, height: int = 1100):
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        to_browser, self.commands = os.pipe()
        self.answers, from_browser = os.pipe()

        def browser_fds():  # in the child: the pipes become fds 3 and 4, whatever their numbers were
            command_fd, answer_fd = os.dup(to_browser), os.dup(from_browser)
            os.dup2(command_fd, 3)
            os.dup2(answer_fd, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe",
             "--disable-background-networking", "--no-proxy-server", f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}"],
            pass_fds=(3, 4), preexec_fn=browser_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self.buffer, self.next_id, self.events, self.requests = b"", 0, [], []
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Network", "Runtime", "DOM"):
                self.call(f"{domain}.enable", session=True)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        """Sends one command (to the page when `session`) and returns its result; events met on the way are kept."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self.read(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            if answer.get("method") == "Network.requestWillBeSent":
                self.requests.append(answer["params"]["request"]["url"])
            self.events.append(answer)

    def read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.answers], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.answers, 1 << 20) if ready else b""
            if not chunk:  # the deadline passed, or Chromium closed its end
                raise TimeoutError("Chromium did not answer" if not ready else "Chromium has exited")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)["result"].get(
            "value")

    def wait_for(self, expression: str, timeout: float = 120):
        """Polls a JavaScript expression until it is truthy, and returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"after {timeout} s, still false in the page: {expression}")

    def upload(self, selector: str, path: Path) -> None:
        """Sets the file of the <input type=file> at `selector`, as choosing it in the file dialog would."""
        root = self.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise LookupError(f"nothing in the page matches {selector}")
        self.call("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(Path(path).resolve())])

    def click(self, text: str) -> None:
        """Clicks the tab, or else the button, whose text is `text` (Gradio keeps a hidden copy of its tab buttons,
        to measure them)."""
        self.click_on(f"""[...document.querySelectorAll('[role=tab]'), ...document.querySelectorAll('button')].find(
            b => b.innerText.trim() == {json.dumps(text)} && b.checkVisibility())""")

    def click_on(self, element: str) -> None:
        """Clicks, with the mouse, the middle of the element a JavaScript expression names, once it is there."""
        x, y = self.wait_for(f"(e => e && (r => [r.x + r.width / 2, r.y + r.height / 2])(e.getBoundingClientRect()))"
                             f"({element})", timeout=30)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, OSError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self.commands, self.answers):
            os.close(fd)
        self.profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def classify_upload(browser: Chromium, url: str, image: Path) -> str:
    """Opens the app at `url`, uploads `image`, and returns the text of its top-classes box once it has one."""
    browser.open(url)
    browser.wait_for("document.querySelector('#upload input[type=file]') !== null")
    browser.upload("#upload input[type=file]", image)
    # Before an answer, the box holds its label only.
    return browser.wait_for("(t => t.split('\\n').length > 2 && t)(document.querySelector('#top-classes').innerText)")


if __name__ == "__main__":
    url, image, out = sys.argv[1:4]
    with Chromium() as browser:
        print(classify_upload(browser, url, Path(image)).splitlines()[0])
        browser.wait_for("[...document.querySelectorAll('#cam img')].some(i => i.complete && i.naturalWidth > 0)")
        browser.screenshot(Path(out))
