"""Cooperating test processes on this machine: torch.distributed (gloo) and jax.distributed.

The distributed tests run their own file as a script in each process; these helpers
start the processes on the loopback interface, wait for them with a bound, and fail the
test with every process's output when one fails or the bound passes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pythonpath():
    return os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")]))


def gloo_env(world):
    """The environment of a ``torch.distributed`` gloo group of ``world`` processes."""
    return dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(world),
        GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=_pythonpath(),
    )


def jax_env():
    """The environment of ``jax.distributed`` CPU processes, one local device each."""
    env = dict(
        os.environ,
        JAX_COORDINATOR=f"127.0.0.1:{free_port()}",
        JAX_PLATFORMS="cpu",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=_pythonpath(),
    )
    env.pop("XLA_FLAGS", None)
    return env


def start(script, args, world, env, rank_variable="RANK"):
    """``python script *args`` in ``world`` processes, each with its rank in ``rank_variable``."""
    return [
        subprocess.Popen(
            [sys.executable, str(script), *map(str, args)],
            env=dict(env, **{rank_variable: str(rank)}),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]


def wait_all(procs, timeout_s):
    """Wait for every process; fail the test with their output if one fails or times out."""
    outputs, timed_out = [], False
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            for p in procs:
                p.kill()
            outputs.append(proc.communicate())
    for p in procs:
        p.wait()
    if timed_out or any(p.returncode != 0 for p in procs):
        report = "\n".join(
            f"--- process {r} (exit {p.returncode}) stderr:\n{err[-4000:]}\n--- stdout:\n{out}"
            for r, (p, (out, err)) in enumerate(zip(procs, outputs))
        )
        why = f"processes timed out after {timeout_s} s" if timed_out else "a process failed"
        pytest.fail(why + "\n" + report)
    return outputs
