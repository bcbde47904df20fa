"""`make explorer` as a visitor meets it, without a browser: the page Voila serves shows the explorer's
description and no developer text, and the kernel each page load starts is shut down once idle."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE_TIMEOUT = 240  # seconds: the page executes the notebook (imports torch, loads the model) before it is sent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds} s; Voila's log:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def test_make_explorer_serves_only_what_a_visitor_needs_and_culls_idle_kernels(tmp_path):
    port, log = free_port(), tmp_path / "voila.log"
    env = {key: value for key, value in os.environ.items() if key not in ("IGPT_SMOKE", "IGPT_EXPLORER_MODEL", "MAKEFLAGS")}
    # -o setup-page: the environment is this one, already set up (no pip install here).
    command = [shutil.which("make"), "-s", "-o", "setup-page", "explorer", f"PORT={port}", f"VENV={Path(sys.prefix)}",
               "EXPLORER_IDLE_SECONDS=2", "EXPLORER_CULL_INTERVAL=1"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def listening() -> bool:
            assert server.poll() is None, f"make explorer stopped:\n{log.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 60, "Voila did not listen", log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=PAGE_TIMEOUT) as response:
            page = response.read().decode()
        text = re.sub(r"<[^>]+>", " ", page)
        assert "Cut an image, watch the model finish it." in text and "Open In Colab" in page
        for developer_text in ("make explorer", "test run", "smoke", "Voila", "JupyterLab or Colab", "_names_before",
                               "IGPT_", "course.parameters"):
            assert developer_text not in text, developer_text

        started = re.findall(r"Kernel started: ([0-9a-f-]+)", log.read_text())
        assert len(started) == 1
        wait_for(lambda: f"Kernel shutdown: {started[0]}" in log.read_text(), 60, "the idle kernel was not culled", log)
        assert re.search(rf"Culling 'idle' kernel 'python3' \({started[0]}\) .* due to \d+ seconds of inactivity",
                         log.read_text())
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the Voila it started
        server.wait(timeout=30)
