"""Runs one training job's command and records how it ended: ``RUN_DIR/exit.json``.

    python runner.py RUN_DIR -- python -m stateset_agents train CONFIG --output-dir RUN_DIR

The server starts this file (by path, so it imports nothing of the package) as the leader of a new session; the
train command is its child in the same process group, so cancelling the job signals both. It survives SIGTERM and
SIGINT itself (a no-op handler, which ``exec`` resets to the default in the child), waits for the child, and writes ``{"returncode": ..., "finished": ...}`` atomically (temp file +
``os.replace``). A server restarted while the job ran reads that file to learn the outcome; when the file is
missing and the process is gone, the job died without a record (e.g. SIGKILL) and is marked failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def write_exit(run_dir: str, returncode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".exit.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"returncode": returncode, "finished": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(run_dir, "exit.json"))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: runner.py RUN_DIR -- COMMAND...", file=sys.stderr)
        return 2
    run_dir, cmd = argv[0], argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    child = subprocess.Popen(cmd)
    returncode = child.wait()
    write_exit(run_dir, returncode)
    return 0 if returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
