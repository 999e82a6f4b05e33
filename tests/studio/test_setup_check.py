"""SetupCheck: the method's own checks run off the GUI thread, debounced, newest setup only."""

import pytest

pytest.importorskip("PySide6")

from engine.config import validate_config  # noqa: E402
from helpers import with_  # noqa: E402
from studio import setup_check  # noqa: E402
from test_cli import _tiny  # noqa: E402


def test_rapid_edits_check_only_the_newest_setup_and_answer_it(qtbot, monkeypatch):
    checked: list[int] = []
    real = setup_check.setup_problem

    def counting(cfg, size):
        checked.append(cfg.aug.global_crops.count)
        return real(cfg, size)

    monkeypatch.setattr(setup_check, "setup_problem", counting)
    sc = setup_check.SetupCheck()
    for count in (2, 3, 1):  # typed quickly: 2 and 3 are fine, 1 is refused by SimCLR
        assert not sc.request(validate_config(with_(_tiny(), **{"aug.global_crops.count": count})), 32)
    assert sc.pending()
    with qtbot.waitSignal(sc.checked, timeout=10_000):
        pass
    assert checked == [1] and "SimCLR contrasts two views" in sc.problem and not sc.pending()
    # a setup seen before answers at once, without a thread
    assert sc.request(validate_config(with_(_tiny(), **{"aug.global_crops.count": 1})), 32)
    assert checked == [1]
    # Start after an edit: answered synchronously, no waiting for the timer
    assert not sc.request(validate_config(_tiny()), 32)
    assert sc.check_now() == "" and checked == [1, 2] and not sc.pending()
    sc.wait()
