"""Progress: a bar in a terminal, plain periodic lines in a log file."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOP = ("import time\nfrom src.core.progress import progress\nbar = progress(range(40), desc='caching')\nfor i in bar:\n"
        "    bar.set_postfix(loss=f'{i / 40:.3f}')  # as the training loop does, every batch\n    time.sleep(0.01)\n")


def test_a_log_file_gets_plain_lines_and_a_terminal_a_bar(tmp_path):
    env = {**os.environ, "PROGRESS_LOG_INTERVAL": "0.1", "TQDM_DISABLE": ""}
    log = tmp_path / "job.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", LOOP], cwd=ROOT, stderr=f, env=env, check=True)
    text = log.read_text()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 2 <= len(lines) <= 8 and all(line.startswith("caching:") for line in lines), lines

    quiet = tmp_path / "quiet.log"
    with open(quiet, "w") as f:  # done within one interval: nothing at all
        subprocess.run([sys.executable, "-c", LOOP], cwd=ROOT, stderr=f, env={**env, "PROGRESS_LOG_INTERVAL": "30"},
                       check=True)  # fmt: skip
    assert quiet.read_text() == ""

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    subprocess.run([sys.executable, "-c", LOOP], cwd=ROOT, stderr=follower, env=env, check=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the pty is closed and drained
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    out = out.decode()
    assert "\r" in out and "caching:" in out  # tqdm's own redrawn bar
