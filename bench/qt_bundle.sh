#!/usr/bin/env bash
# Builds .qt/ for bench/device.sh's studio part: the GPU machines' image has no Qt.
#   .qt/qt.tar.xz  site/{PySide6 (QtCore, QtGui, QtWidgets, QtSvg, QtOpenGL + their Qt libraries,
#                  ICU and the offscreen platform plugin only), shiboken6, pyqtgraph} from this .venv
#                  (PySide6 wheels are cp310-abi3, manylinux_2_34: they load on the device's Python 3.12)
#   .qt/*.deb      the system libraries those load (Debian 12 packages); device.sh links in only
#                  the ones the machine lacks
# About 29 MB; carry it with .whl (the device call's limit is 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
SP=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
B=$(mktemp -d)/site
mkdir -p "$B/PySide6/Qt/lib" "$B/PySide6/Qt/plugins/platforms" .qt
for m in QtCore QtGui QtWidgets QtSvg QtSvgWidgets QtOpenGL QtOpenGLWidgets; do cp "$SP/PySide6/$m.abi3.so" "$B/PySide6/"; done
cp "$SP"/PySide6/{__init__.py,_config.py,_git_pyside_version.py} "$SP"/PySide6/libpyside6.abi3.so.* "$B/PySide6/"
cp -r "$SP/PySide6/support" "$B/PySide6/"
for l in Core Gui Widgets DBus Svg SvgWidgets OpenGL OpenGLWidgets; do cp "$SP/PySide6/Qt/lib/libQt6$l.so.6" "$B/PySide6/Qt/lib/"; done
cp "$SP"/PySide6/Qt/lib/libicu*.so.* "$B/PySide6/Qt/lib/"
cp "$SP/PySide6/Qt/plugins/platforms/libqoffscreen.so" "$B/PySide6/Qt/plugins/platforms/"
cp -r "$SP/shiboken6" "$SP/pyqtgraph" "$B/"
rm -rf "$B/pyqtgraph/examples"; find "$B" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$(dirname "$B")" -cJf .qt/qt.tar.xz site
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p /tmp/amd64/partial
apt-get $o update >/dev/null
(cd .qt && apt-get $o download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libx11-6 libxcb1 libxau6 libxdmcp6 \
  libdbus-1-3 libfontconfig1 fontconfig-config libfreetype6 libpng16-16 libbrotli1 libexpat1 libglib2.0-0 \
  libxkbcommon0 libzstd1 libbsd0 libmd0)
du -sh .qt
