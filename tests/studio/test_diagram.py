"""Diagram layout helpers (pure) and the width of the drawn diagrams."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

from engine.methods import get_method, list_methods  # noqa: E402
from studio.diagram import MIN_SCALE, WRAP_AT, DiagramView, wrap_label  # noqa: E402


def test_wrap_label_splits_long_labels_near_the_middle():
    assert wrap_label("encoder f") == ["encoder f"]
    assert wrap_label("images + depth + segmentation") == ["images + depth +", "segmentation"]
    assert wrap_label("ViT encoder (visible patches only)") == ["ViT encoder", "(visible patches only)"]
    assert wrap_label("averyveryverylongwordwithoutspaces") == ["averyveryverylongwordwithoutspaces"]
    for label in ("patch projections per modality", "random-resized crop + flip", "a b"):
        lines = wrap_label(label)
        assert " ".join(lines) == label  # nothing lost
        assert len(lines) == (2 if len(label) > WRAP_AT else 1)


def test_diagrams_stay_readable_and_scroll_when_too_wide(qtbot):
    """In a 720 x 180 view (the centre pane of a 1400 px window) a diagram is shrunk to fit
    but never below MIN_SCALE: a long pipeline (MultiMAE's seven blocks) scrolls instead and
    shows its data side first; a short one (SimCLR) fits whole."""
    view = DiagramView()
    qtbot.addWidget(view)
    view.resize(720, 180)
    view.show()
    qtbot.waitExposed(view)
    for name in list_methods():
        view.set_diagram(get_method(name).diagram())
        assert view.transform().m11() >= MIN_SCALE - 1e-9, name
        for item in view.blocks.values():
            assert len(item.lines) <= 2, (name, item.lines)
        viewport = view.viewport().rect()
        first = view.blocks[get_method(name).diagram().blocks[0].id]
        assert viewport.contains(view.mapFromScene(first.sceneBoundingRect()).boundingRect()), name
    view.set_diagram(get_method("multimae").diagram())
    qtbot.wait(20)
    assert view.horizontalScrollBar().isVisible() and view.horizontalScrollBar().value() == view.horizontalScrollBar().minimum()
    last = view.blocks["loss"]
    assert not viewport.contains(view.mapFromScene(last.sceneBoundingRect()).boundingRect())
    view.set_diagram(get_method("simclr").diagram())
    qtbot.wait(20)
    assert not view.horizontalScrollBar().isVisible()
    for item in view.blocks.values():
        assert viewport.contains(view.mapFromScene(item.sceneBoundingRect()).boundingRect())
