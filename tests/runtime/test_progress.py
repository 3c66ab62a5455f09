"""Progress lines where no terminal is attached: one at least every ``every_s`` seconds, and a final one."""

from __future__ import annotations

import io

from runtime.progress import LineProgress, progress


def test_line_progress_prints_periodic_and_final_lines() -> None:
    out = io.StringIO()
    bar = LineProgress(range(3), "train epoch 1", total=3, every_s=0.0, stream=out)
    bar.set_postfix(loss="0.5")
    assert list(bar) == [0, 1, 2]
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # one per item (every_s=0) + the final line
    assert "train epoch 1: 1/3 (33%)" in lines[0] and "loss=0.5" in lines[0]
    assert lines[-1].endswith("done, loss=0.5") and "3/3 (100%)" in lines[-1]


def test_short_loops_stay_quiet_and_disabled_is_silent(capsys) -> None:
    out = io.StringIO()
    assert list(LineProgress(range(5), "quick", total=5, every_s=3600, stream=out)) == list(range(5))
    assert out.getvalue() == ""
    bar = progress(range(2), "off", enabled=False)
    bar.set_postfix(x=1)
    assert list(bar) == [0, 1]
    assert capsys.readouterr().out == ""
