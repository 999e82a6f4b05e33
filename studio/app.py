"""ssl-studio: the desktop studio's entry point, interactive or scripted.

    ssl-studio                                  # quick preset, embedded shapes, last method/dataset
    ssl-studio --preset simclr_cifar --data ~/images
    ssl-studio --config runs/demo/config.yaml
    ssl-studio --run quick_cpu --steps 20 --screenshot /tmp/studio.png --quit
    ssl-studio --run my.yaml --data shapes --runs-dir /tmp/runs --quit

``--run PRESET_OR_CONFIG`` opens the window with that preset (a name from
``ssl-train --list-presets``) or YAML config, starts a run, and after the run's
Finished event saves ``--screenshot`` (the whole window); with ``--quit`` it
then exits: 0 when the run completed or was stopped, 1 when it failed (the
engine's message on stderr), 2 for bad arguments or settings. Works headless
with ``QT_QPA_PLATFORM=offscreen``.

Settings (window layout, last method, last dataset, device, runs folder) live in
QSettings: ``--settings FILE.ini`` or ``SSL_STUDIO_SETTINGS`` picks an INI file;
otherwise the organisation / application names are ``SSL_STUDIO_ORG`` /
``SSL_STUDIO_APP`` (default ``ssl-studio`` / ``ssl-studio``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer

from . import gui_gc

ORG_NAME = os.environ.get("SSL_STUDIO_ORG", "ssl-studio")
APP_NAME = os.environ.get("SSL_STUDIO_APP", "ssl-studio")
_MISSING = object()
SCREENSHOT_DELAY_MS = 400  # lets the dashboard draw the last batch before the picture
DATA_WAIT_MS = 180_000  # the longest a screenshot waits for a shown data page to finish loading


def parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: '--set' must not be read as an abbreviation of '--settings'
    p = argparse.ArgumentParser(prog="ssl-studio", description="SSL Studio: self-supervised learning experiments.",
                                allow_abbrev=False)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", metavar="NAME", help="open with this preset (default: quick_cpu and the last "
                                                      "session's method and dataset)")
    src.add_argument("--config", metavar="FILE.yaml", help="open with this YAML config (ssl-train --config format)")
    src.add_argument("--run", metavar="PRESET_OR_CONFIG",
                     help="open with this preset or YAML config and start a run right away")
    p.add_argument("--method", help="select this method (its paper defaults)")
    p.add_argument("--data", metavar="shapes|PATH", help="dataset: 'shapes', a folder of images or a .tar.gz")
    p.add_argument("--steps", type=int, help="training length in optimiser steps")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a setting, as ssl-train --set, e.g. --set data.shapes_size=32 (repeatable)")
    p.add_argument("--runs-dir", metavar="DIR", help="folder for run folders (default ~/ssl-studio-runs)")
    p.add_argument("--screenshot", metavar="FILE.png",
                   help="save a picture of the window (after the run with --run, else once it is shown)")
    p.add_argument("--tab", metavar="NAME[,NAME]", help="show these tabs before the screenshot, e.g. "
                   "'reconstructions' or 'attention' (case-insensitive prefixes of tab titles)")
    p.add_argument("--quit", action="store_true", help="exit after the run (--run) or the screenshot")
    p.add_argument("--size", metavar="WxH", help="window size, e.g. 1600x1000 (default: the last session's; "
                                                 "1500x940 with --screenshot)")
    p.add_argument("--theme", choices=("system", "dark", "light"), default="system", help="colour scheme")
    p.add_argument("--settings", metavar="FILE.ini", help="window settings file (default: the user's QSettings)")
    return p


def make_settings(path: str | None = None) -> QSettings:
    """The studio's QSettings: an INI file when given (or SSL_STUDIO_SETTINGS), else per user."""
    path = path or os.environ.get("SSL_STUDIO_SETTINGS")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return QSettings(str(path), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG_NAME, APP_NAME)


def _is_config_path(target: str) -> bool:
    return Path(target).is_file() or target.endswith((".yaml", ".yml")) or os.sep in target


def show_tabs(win, names: list[str]) -> list[str]:
    """Select every tab (in any QTabWidget of ``win``) whose title starts with one of ``names``,
    and the outer tabs that contain it; returns the titles selected."""
    from PySide6.QtWidgets import QTabWidget

    all_tabs = win.findChildren(QTabWidget)
    chosen = []
    for name in names:
        key = name.strip().lower()
        for tabs in all_tabs:
            for i in range(tabs.count()):
                if not tabs.tabText(i).replace("&", "").lower().startswith(key):
                    continue
                tabs.setCurrentIndex(i)
                chosen.append(tabs.tabText(i))
                for host in all_tabs:  # the outer tabs holding this tab widget
                    for j in range(host.count()):
                        page = host.widget(j)
                        if page is not None and page.isAncestorOf(tabs):
                            host.setCurrentIndex(j)
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.steps is not None and args.steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return 2

    from PySide6.QtWidgets import QApplication

    from .theme import apply_theme, splash_screen

    app = QApplication.instance() or QApplication(sys.argv[:1] + (argv if argv is not None else sys.argv[1:]))
    app.setOrganizationName(ORG_NAME)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName("SSL Studio")
    apply_theme(app, None if args.theme == "system" else args.theme == "dark")
    # something on screen at once: importing PyTorch, timm and the methods takes seconds
    splash = None if args.quit else splash_screen("loading PyTorch and the methods…")

    from engine.config import parse_override  # (heavy imports from here on)
    from engine.errors import ConfigError, UserError

    from .inspector import get_dotted
    from .main_window import DEFAULT_PRESET, MainWindow

    win = MainWindow(settings=make_settings(args.settings), runs_dir=args.runs_dir)
    if splash is not None:
        splash.finish(win)  # closes when the window shows
    # a scripted session (--quit) leaves the user's own settings as they were (unless --settings names a file)
    win.persist_settings = not (args.quit and not args.settings)
    try:
        if args.run:
            if _is_config_path(args.run):
                win.load_config_file(args.run)
            else:
                win.load_preset(args.run)
        elif args.config:
            win.load_config_file(args.config)
        elif args.preset:
            win.load_preset(args.preset)
        else:
            win.restore_session(DEFAULT_PRESET, restore_last=True)
        if args.method:
            from engine.methods import get_method

            get_method(args.method)
            win.select_method(args.method)
        if args.data:
            win.inspector.set_value("data.source", args.data)
            win.data_page.set_config(win.inspector.config())
        if args.steps is not None:
            win.inspector.set_value("train.steps", args.steps)
        if args.device:
            win.inspector.set_value("train.device", args.device)
        for text in args.set:
            path, value = parse_override(text)
            key = ".".join(path)
            if get_dotted(win.inspector.raw_config(), key, _MISSING) is _MISSING:  # a key the config has
                raise ConfigError(f"unknown setting '{key}' in --set {text} (the keys of ssl-train --set)")
            win.inspector.set_value(key, value)
        if args.set and not win.inspector.check_now():  # (the method's own checks too)
            raise ConfigError(win.inspector.error_text())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        if splash is not None:
            splash.close()
        win.deleteLater()
        return 2

    size = args.size or ("1500x940" if args.screenshot else None)
    if size:
        try:
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError:
            print(f"error: --size must look like 1600x1000, got {size!r}", file=sys.stderr)
            if splash is not None:
                splash.close()
            return 2
        win.resize(w, h)
    win.show()
    state = {"rc": 0}

    def finish(code: int) -> None:
        state["rc"] = code
        if args.tab:  # show the tabs, then give the dashboard's throttled redraw time to paint them
            show_tabs(win, [t for t in args.tab.split(",") if t.strip()])
            QTimer.singleShot(SCREENSHOT_DELAY_MS, shoot_when_idle)
        else:
            shoot_when_idle()

    def shoot_when_idle(waited_ms: int = 0) -> None:
        # a shown data page loads its dataset and preview in the background: picture the result
        if win.data_page.is_busy() and waited_ms < DATA_WAIT_MS:
            QTimer.singleShot(100, lambda: shoot_when_idle(waited_ms + 100))
        elif waited_ms:
            QTimer.singleShot(SCREENSHOT_DELAY_MS, shoot)  # let the new pixmaps paint
        else:
            shoot()

    def shoot() -> None:
        if args.screenshot:
            if not win.save_screenshot(args.screenshot):
                print(f"error: cannot write the screenshot {args.screenshot}", file=sys.stderr)
                state["rc"] = state["rc"] or 2
            else:
                print(f"screenshot: {args.screenshot}", file=sys.stderr)
        if args.quit:
            app.exit(state["rc"])

    if args.run:
        if not win.inspector.check_now():
            print(f"error: {win.inspector.error_text()}", file=sys.stderr)
            win.close()
            return 2

        def on_finished(status: str, message: str) -> None:
            run_dir = win.last_run_dir
            if status == "failed":
                print(f"ssl-studio: run failed: {message}", file=sys.stderr)
            else:
                print(f"ssl-studio: run {status}; run folder {run_dir}", file=sys.stderr)
            QTimer.singleShot(SCREENSHOT_DELAY_MS, lambda: finish(1 if status == "failed" else 0))

        win.run_finished.connect(on_finished)
        QTimer.singleShot(0, win.start_run)
    elif args.screenshot or args.quit:
        QTimer.singleShot(SCREENSHOT_DELAY_MS * 2, lambda: finish(0))

    def on_sigint(*_a) -> None:  # Ctrl-C: stop a run cleanly (checkpoint kept), then quit
        if win.controller.is_running():
            win._close_after_run = True
            win.controller.stop()
        else:
            win.close()

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    gui_gc.install()  # cyclic garbage (pyqtgraph items) is freed in this thread, never the trainer's
    tick = QTimer()
    tick.start(250)  # lets Python see the signal while Qt's loop runs
    tick.timeout.connect(lambda: None)
    try:
        rc = app.exec()
    finally:
        tick.stop()
        signal.signal(signal.SIGINT, old_handler)
        win.shutdown()
        win.hide()
        win.deleteLater()
        gui_gc.uninstall()
    return int(state["rc"] if rc == 0 else rc)


if __name__ == "__main__":
    sys.exit(main())
