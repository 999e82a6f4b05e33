"""Studio tests run as the application does: Python's cyclic garbage collector only in the GUI
thread (studio.gui_gc), and no garbage left behind for another test's threads to collect."""

import pytest

pytest.importorskip("PySide6")


@pytest.fixture(autouse=True)
def gui_thread_gc(qapp):
    from studio import gui_gc

    g = gui_gc.install()
    yield g
    gui_gc.uninstall()  # one full collection here, in the GUI thread
