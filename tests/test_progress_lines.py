"""Long work is visible in a log too: where a rich bar prints nothing until the end (output to a
file, a pipe, a daemon's journal), a plain line comes every few seconds and at each stage."""

from __future__ import annotations

import io

from rich.console import Console

from synthpool.commands.progress import StageProgress, step_progress


def _log() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_training_steps_print_lines_when_output_is_not_a_terminal():
    console, out = _log()
    with step_progress("DP-SGD", console=console, every=3600) as progress:
        for step in range(1, 481):
            progress(step, 480, 1.5)
    lines = out.getvalue().splitlines()
    # The first step and the last, nothing between within the hour.
    assert [ln.split(",")[0] for ln in lines] == ["DP-SGD: step 1/480", "DP-SGD: step 480/480"]
    console, out = _log()
    with step_progress("DP-SGD", console=console, every=0) as progress:
        for step in range(1, 4):
            progress(step, 3, 0.25)
    assert "DP-SGD: step 2/3, loss 0.250" in out.getvalue()


def test_stages_print_a_line_per_change_and_while_one_lasts():
    console, out = _log()
    with StageProgress(console, 5, "starting", every=0) as stages:
        stages.update(description="round 1/3", completed=1)
        stages.update(description="round 1/3", completed=1)  # unchanged: no line
        stages.tick()  # a stage that lasts: a line saying so
        stages.print("site-0 missing")
    lines = out.getvalue().splitlines()
    assert [ln.split("] ", 1)[-1] for ln in lines] == [
        "0/5 starting", "1/5 round 1/3", "1/5 round 1/3", "site-0 missing"], lines
