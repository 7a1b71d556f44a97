"""How the commands that run a local federation (demo, simulate with site tables) take signals."""

import signal


def sigterm_as_interrupt() -> None:
    """SIGTERM and SIGINT both unwind through the federation's cleanup (SIGINT explicitly: a
    shell starting us in the background would otherwise leave it ignored)."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
