"""bench/trace/sitecustomize.py (the stage stamps bench/trace_lone.py reads) wraps methods of the server by
name: a rename must fail here, not in a GPU round where the traced server would not start."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_ONE_REQUEST = """
import asyncio, numpy as np
from trtop.serve.batching import BatchPolicy, signature_of
from trtop.serve.scheduler import Scheduler

async def main():
    s = Scheduler(lambda f: {"y": f["x"] * 2}, BatchPolicy(4, 0.0), max_queue=4, inline_max_s=0.0,
                  inline_alone_max_s=0.0)
    s.start()
    f = {"x": np.ones((1, 2), np.float32)}
    assert (await s.submit(f, 1, signature_of(f), 5.0))["y"][0, 0] == 2
    await s.close()

asyncio.run(main())
"""


def _run(tmp_path: Path, trace: bool) -> list[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench' / 'trace'}:{ROOT / 'operator'}"}
    env.pop("TRTOP_TRACE_DIR", None)
    if trace:
        env["TRTOP_TRACE_DIR"] = str(tmp_path)
    subprocess.run([sys.executable, "-c", _ONE_REQUEST], env=env, check=True, timeout=60)
    return [line.split()[0] for f in sorted(tmp_path.glob("py-*.txt")) for line in f.read_text().splitlines()]


def test_stamps_are_written_in_order_when_asked_for(tmp_path: Path) -> None:
    names = _run(tmp_path, trace=True)
    assert names[names.index("e_thread"):][:3] == ["e_thread", "e_computed", "e_landed"]


def test_without_a_folder_nothing_is_wrapped_or_written(tmp_path: Path) -> None:
    assert _run(tmp_path, trace=False) == []
