"""SSL Studio: the desktop experiment studio (PySide6 + pyqtgraph).

The studio is a client of the Qt-free engine: it builds configs through
``engine.config``, starts runs with ``engine.trainer.Trainer`` in a worker thread
(:mod:`studio.worker`) and only ever observes a run through its event stream and
its control calls (pause, resume, stop, set_param).

Modules:

* :mod:`studio.app`          entry point ``ssl-studio`` (``main()``), scripted mode
* :mod:`studio.main_window`  the window: library, diagram, inspector, dashboard, data, runs
* :mod:`studio.library`      method library grouped by family
* :mod:`studio.diagram`      the method's component diagram (QGraphicsView)
* :mod:`studio.inspector`    parameter forms generated from the config's JSON schema
* :mod:`studio.data_page`    dataset loading, thumbnails, augmentation preview
* :mod:`studio.worker`       the run worker thread and the event pump
* :mod:`studio.theme`        Fusion style with a palette that follows the system scheme
"""

__version__ = "0.1.0"
