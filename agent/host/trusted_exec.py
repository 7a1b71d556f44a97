"""The site's SuperExec: takes each task from the site's SuperNode and starts one
agent/host/trusted_app.py process for it, which checks the run's app before anything of it runs.

Why not Flower's own: in its default `--isolation subprocess` a SuperNode starts
`flower-superexec`, whose plugin starts `flwr-clientapp` per task, which installs the FAB and
imports whatever ClientApp component the coordinator's FAB names. The agent instead starts the
SuperNode with `--isolation process` (then the SuperNode starts no executor at all and only
serves its Runtime API on 127.0.0.1) and runs this loop in its place. It does what
flwr/supercore/superexec/run_superexec.py does with the subprocess executor (poll AcquireTask,
start one process per task with the task's token), except that the process started is ours.

Tasks of every type are taken, not only ClientApps: a task nobody takes would leave the
SuperNode waiting for its reply for ever; trusted_app refuses what is not a ClientApp.

Every child is started with PR_SET_PDEATHSIG, as the agent starts this loop: a task process
does not outlive the agent.

Warm tasks (Linux): a fresh Python process per task spends 7-9 s importing Flower's runtime,
torch, Opacus and pandas before it reads a byte of its message (a ClientApp runs in a new
process for every message: docs/ARCHITECTURE.md), which is most of a round at a small site. So this loop imports them
once, from the site's own installation only (what any task would import, never the FAB's), and
forks each task from itself: the child runs exactly what the spawned process runs (trusted_app),
the FAB check first. Nothing of a task survives it. The preloading runs no torch operation, so
no OpenMP pool exists to break in the child; DP noise and Poisson sampling take their seeds from
OS entropy in the task (common/dp_training.py), and the global generators are reseeded in the
child anyway. SYNTHPOOL_TASK_FORK=0 starts each task as a new process instead. A new synthpool
installation takes effect when the agent restarts (the warm modules are the old ones until then).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .lifeline import die_with_parent
from .trusted_app import TOKEN_ENV

POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # the knob Flower's SuperExec reads
FORK_ENV = "SYNTHPOOL_TASK_FORK"
ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"  # the call Flower's SuperExec auth protects
# What every task imports; all of it is the site's installation.
PRELOAD = ("numpy", "pandas", "pyarrow.parquet", "torch", "opacus", "sklearn.ensemble",
           "flwr.app", "flwr.supernode.runtime.run_clientapp", "flwr.supercore.heartbeat",
           "synthpool.agent.clientapp.app", "synthpool.agent.clientapp.site_evaluation",
           "synthpool.common.dp_training", "synthpool.common.generators.autoregressive")


def poll_interval() -> float:
    try:
        value = float(os.environ.get(POLL_ENV, "1.0"))
    except ValueError:
        return 1.0
    return min(max(value, 0.01), 60.0)


def task_argv(runtime_api_address: str, task_type: str, config: Path) -> list[str]:
    """`python -P`: the working directory is not put on sys.path, so nothing lying in it can
    shadow the site's installed modules."""
    return [sys.executable, "-P", "-m", "synthpool.agent.host.trusted_app",
            "--runtime-api-address", runtime_api_address, f"--task-type={task_type}",
            "--config", str(config)]


def forking() -> bool:
    return sys.platform == "linux" and os.environ.get(FORK_ENV, "1") != "0"


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a task that needs it fails with the reason
            print(f"[synthpool-agent] trusted executor: cannot preload {name}: {e!r}",
                  file=sys.stderr, flush=True)


def fork_task(runtime_api_address: str, token: str, task_type: str, config: Path) -> int:
    """Run one task in a child of this warm process; returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        die_with_parent()
        _reseed()
        from .trusted_app import run_task

        code = run_task(runtime_api_address, token, task_type, config)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must never return into the loop
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _running(pid: int) -> bool:
    """Reap `pid` if it ended."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def _reseed() -> None:
    """A forked child starts with its parent's generator states: draw fresh ones."""
    import numpy as np

    np.random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def serve(runtime_api_address: str, config: Path, secret: bytes | None = None) -> None:
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret:  # the SuperNode hands tasks only to a caller that signs with the agent's secret
        from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor

        interceptors.append(SuperExecAuthHttpInterceptor(
            master_secret=secret, protected_methods=frozenset({ACQUIRE_TASK})))
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=True, root_certificates=None,
        interceptors=interceptors,
        # Retries connection errors for ever: the SuperNode's API comes up after this loop.
        retry_invoker=make_simple_http_retry_invoker())
    request = AcquireTaskRequest(supported_task_types=[t.value for t in TaskType])
    interval = poll_interval()
    warm = forking()
    if warm:
        preload()
    children: list[subprocess.Popen] = []
    forked: set[int] = set()
    how = "forked from this warm process" if warm else "one new process each"
    print(f"[synthpool-agent] trusted executor: tasks from {runtime_api_address}, each checked "
          f"against {config} before it runs ({how})", flush=True)
    while True:
        children = [c for c in children if c.poll() is None]  # reap finished tasks
        forked = {pid for pid in forked if _running(pid)}
        try:
            res = client.AcquireTask(request)
        except Exception as e:  # noqa: BLE001 - keep serving; the agent watches the SuperNode
            print(f"[synthpool-agent] trusted executor: AcquireTask failed: {e!r}",
                  file=sys.stderr, flush=True)
            time.sleep(1.0)
            continue
        if res.HasField("task") and res.token and warm:
            forked.add(fork_task(runtime_api_address, res.token, res.task.type, config))
        elif res.HasField("task") and res.token:
            env = dict(os.environ)
            env[TOKEN_ENV] = res.token
            children.append(subprocess.Popen(
                task_argv(runtime_api_address, res.task.type, config), env=env,
                preexec_fn=die_with_parent if sys.platform == "linux" else None))
        time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--config", required=True, type=Path, help="the site's site.toml")
    parser.add_argument("--auth-secret-file", type=Path, default=None,
                        help="the secret the SuperNode was started with (agent/host/daemon.py)")
    args = parser.parse_args(argv)
    secret = args.auth_secret_file.read_bytes() if args.auth_secret_file else None
    try:
        serve(args.runtime_api_address, args.config.resolve(), secret)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
