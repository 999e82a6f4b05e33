"""The Data page: choose and load a dataset, look at it, preview the augmentation.

* Source: the embedded ``shapes`` dataset, a folder of images or a ``.tar.gz``
  archive (file dialogs or a typed path). Loading runs ``engine.data.load_dataset``
  in a background thread; the page shows the counts, classes, image size, how the
  split was made, warnings, and a thumbnail grid (a row per class).
* Augmentation preview: a few source images, each followed by its augmented views
  from ``engine.augment.GPUAugment(cfg.aug, image_size)`` (global crops, then
  local crops; denormalised for display). For masked-image-modelling methods the
  masked inputs are shown too when the method exposes them (a ``mask_preview``
  classmethod, or a visual probe whose name contains "mask"); otherwise the page
  says there is no masking preview. The preview is recomputed (debounced, 200 ms)
  whenever an ``aug.*`` setting, the method, its params (mask ratio, mask type) or the
  patch size changes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, QThread, QTimer, Signal
from PySide6.QtGui import QFont, QFontMetrics, QImage, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from engine.config import RunConfig

SOURCE_KINDS = [("shapes", "Embedded shapes"), ("folder", "Image folder"), ("archive", "Archive (.tar.gz)")]
PREVIEW_IMAGES = 4
DEBOUNCE_MS = 200


def source_kind(source: str) -> str:
    s = source.strip().lower()
    if s == "shapes":
        return "shapes"
    if s.endswith((".tar.gz", ".tgz", ".tar")):
        return "archive"
    return "folder"


# ----------------------------------------------------------------- images
def to_qimage(img: np.ndarray) -> QImage:
    """uint8 [3, H, W] or [H, W, 3] (or float in [0, 1]) -> a QImage (copied)."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = np.ascontiguousarray(a[:, :, :3])
    h, w = a.shape[:2]
    return QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def compose_rows(rows: list[tuple[str, list[tuple[np.ndarray, str]]]], cell: int, palette: QPalette,
                 label_w: int = 90, header: list[str] | None = None) -> QPixmap:
    """A grid picture: one row per (row label, [(image, caption)]), cells ``cell`` px square."""
    n_cols = max((len(r[1]) for r in rows), default=0)
    pad, cap_h = 4, 14
    head_h = 16 if header else 0
    width = label_w + n_cols * (cell + pad) + pad
    height = head_h + len(rows) * (cell + cap_h + pad) + pad
    pm = QPixmap(max(1, width), max(1, height))
    pm.fill(palette.color(QPalette.ColorRole.Base))
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
    text = palette.color(QPalette.ColorRole.Text)
    small = QFont(p.font())
    small.setPointSizeF(max(6.0, small.pointSizeF() * 0.8))
    p.setFont(small)
    fm = QFontMetrics(small)
    if header:
        for c, h in enumerate(header):
            p.setPen(text)
            p.drawText(QRectF(label_w + pad + c * (cell + pad), 0, cell, head_h),
                       Qt.AlignmentFlag.AlignCenter, fm.elidedText(h, Qt.TextElideMode.ElideRight, cell))
    for r, (row_label, cells) in enumerate(rows):
        y = head_h + pad + r * (cell + cap_h + pad)
        p.setPen(text)
        p.drawText(QRectF(2, y, label_w - 6, cell), int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight),
                   fm.elidedText(row_label, Qt.TextElideMode.ElideRight, label_w - 6))
        for c, (img, caption) in enumerate(cells):
            x = label_w + pad + c * (cell + pad)
            qi = to_qimage(img)
            p.drawImage(QRectF(x, y, cell, cell), qi)
            if caption:
                p.setPen(text)
                p.drawText(QRectF(x, y + cell, cell, cap_h), Qt.AlignmentFlag.AlignCenter,
                           fm.elidedText(caption, Qt.TextElideMode.ElideRight, cell))
    p.end()
    return pm


def thumbnail_rows(s) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    """The data page's grid: up to 8 training images per class (12 classes; unlabelled: the
    first 32), then, when the set has depth / segmentation maps, the first 8 images with their
    maps below them, so their alignment can be checked by eye."""
    imgs = s.train.images
    rows: list[tuple[str, list[tuple[np.ndarray, str]]]] = []
    if s.train.labels is not None and s.classes:
        labels = s.train.labels.numpy()
        for c, name in enumerate(s.classes[:12]):
            idx = np.flatnonzero(labels == c)[:8]
            if len(idx):
                rows.append((name, [(imgs[int(i)].numpy(), "") for i in idx]))
    else:
        n = min(len(imgs), 32)
        for r in range(0, n, 8):
            rows.append((f"#{r}", [(imgs[i].numpy(), "") for i in range(r, min(n, r + 8))]))
    ex, n = s.train.extras, min(len(imgs), 8)
    if n and ("depth" in ex or "seg" in ex):
        rows.append(("images", [(imgs[i].numpy(), "") for i in range(n)]))
        if "depth" in ex:  # uint8 [N, 1, H, W], brighter = nearer
            rows.append(("depth", [(np.repeat(ex["depth"][i].numpy(), 3, axis=0), "") for i in range(n)]))
        if "seg" in ex:  # uint8 [N, H, W] class ids, 0 = background (dark grey)
            from engine.methods.multimae import seg_palette

            seg = ex["seg"][:n].long()
            pal = seg_palette(int(seg.max()) + 1).numpy()  # [K, 3]
            rows.append(("segmentation", [(pal[seg[i].numpy()].transpose(2, 0, 1), "") for i in range(n)]))
    return rows


# ------------------------------------------------------------- background

def _preview_key(cfg: RunConfig) -> tuple:
    """What the augmentation preview depends on: aug.*, the method, its params (mask ratio and
    type, ...) and the patch size (masked inputs of masked-image methods)."""
    return (cfg.aug.model_dump(mode="json"), cfg.method, cfg.params, cfg.model.arch, cfg.model.patch_size)

class DataLoader(QThread):
    """Loads a dataset off the GUI thread: ``done(splits, data_config_dict, error_message)``."""

    done = Signal(object, object, str)

    def __init__(self, data_cfg, parent=None) -> None:
        super().__init__(parent)
        self.data_cfg = data_cfg

    def run(self) -> None:
        from engine.data import load_dataset
        from engine.errors import Cancelled, UserError

        key = self.data_cfg.model_dump(mode="json")
        try:  # superseded or closing: requestInterruption() ends the decode at the next chunk
            splits = load_dataset(self.data_cfg, should_stop=self.isInterruptionRequested)
        except Cancelled:
            self.done.emit(None, key, "cancelled")
            return
        except UserError as e:
            self.done.emit(None, key, str(e))
            return
        except Exception as e:  # noqa: BLE001 - shown to the user, never a crash
            self.done.emit(None, key, f"{type(e).__name__}: {e}")
            return
        self.done.emit(splits, key, "")


def augmentation_preview(cfg: RunConfig, images, seed: int = 0) -> dict[str, Any]:
    """Augmented views of uint8 ``images`` [N, 3, H, W]: {'views': [N][V] float [3, s, s] in [0, 1],
    'names': view names, 'masked': optional [N] images, 'mask_note': str}."""
    import torch

    from engine.augment import GPUAugment, denormalize

    x = images.cpu()
    img_size = int(x.shape[-1])
    aug = GPUAugment(cfg.aug, img_size)
    g = torch.Generator().manual_seed(seed)
    views = aug(x, generator=g)
    names = [f"global {i + 1}" for i in range(aug.n_global)] + [f"local {i + 1}" for i in range(aug.n_local)]
    shown = [denormalize(v, cfg.aug.mean, cfg.aug.std).numpy() for v in views]  # each [N, 3, s, s]
    out: dict[str, Any] = {
        "views": [[shown[v][i] for v in range(len(shown))] for i in range(x.shape[0])],
        "names": names,
        "masked": None,
        "mask_note": "",
    }
    out.update(masking_preview(cfg, x, img_size))
    return out


def masking_preview(cfg: RunConfig, x, img_size: int) -> dict[str, Any]:
    """Masked inputs of a masked-image-modelling method, when it exposes them."""
    from engine.methods import get_method

    cls = get_method(cfg.method)
    if cls.family != "masked image modelling":
        return {}
    try:
        hook = getattr(cls, "mask_preview", None)
        if callable(hook):
            masked = hook(x, cfg)
        else:
            size = cfg.aug.global_crops.size or img_size
            method = cls(cfg, size)
            method.eval()
            probes = method.probes(x if size == img_size else _resize_u8(x, size))
            masked = None
            for name, res in probes.items():
                for k, arr in (res.get("images") or {}).items():
                    if "mask" in name.lower() or "mask" in k.lower():
                        masked = arr
                        break
                if masked is not None:
                    break
        if masked is None:
            return {"mask_note": f"{cfg.method} exposes no masking preview"}
        arr = masked.detach().cpu().numpy() if hasattr(masked, "detach") else np.asarray(masked)
        if arr.ndim == 4 and arr.shape[-1] == 3:  # [N, H, W, 3]
            arr = arr.transpose(0, 3, 1, 2)
        return {"masked": [arr[i] for i in range(min(len(arr), x.shape[0]))], "mask_note": ""}
    except Exception as e:  # noqa: BLE001 - a preview is optional
        return {"mask_note": f"no masking preview ({type(e).__name__}: {e})"}


def _resize_u8(x, size: int):
    import torch.nn.functional as F

    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(x.dtype)


class PreviewJob(QThread):
    """Computes one augmentation preview off the GUI thread: ``done(result, error)``."""

    done = Signal(object, str)

    def __init__(self, cfg: RunConfig, images, seed: int, parent=None) -> None:
        super().__init__(parent)
        self.cfg, self.images, self.seed = cfg, images, seed

    def run(self) -> None:
        try:
            self.done.emit(augmentation_preview(self.cfg, self.images, self.seed), "")
        except Exception as e:  # noqa: BLE001
            self.done.emit(None, f"{type(e).__name__}: {e}")


# ------------------------------------------------------------------- page
class DataPage(QWidget):
    """Dataset chooser, summary, thumbnails and augmentation preview.

    Signals:
        source_chosen(str)     the user picked a source (the window puts it in data.source)
        data_loaded(object)    a DataSplits finished loading
        load_failed(str)       loading failed (engine message)
        preview_updated()      a new augmentation preview is shown
    """

    source_chosen = Signal(str)
    data_loaded = Signal(object)
    load_failed = Signal(str)
    preview_updated = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cfg: RunConfig | None = None
        self.splits = None
        self.loaded_key: dict | None = None  # data config the splits were loaded with
        self.loader: DataLoader | None = None
        self.preview_job: PreviewJob | None = None
        self._preview_pending = False
        self._preview_aug: dict | None = None
        self._seed = 0
        self.open_folder_dialog = self._ask_folder
        self.open_archive_dialog = self._ask_archive
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.refresh_preview)
        self._reload = QTimer(self)
        self._reload.setSingleShot(True)
        self._reload.setInterval(3 * DEBOUNCE_MS)
        self._reload.timeout.connect(self._reload_if_needed)
        self._attempted_key: dict | None = None
        self._stale = False
        self._old_loaders: list[DataLoader] = []
        self._build_ui()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.kind = QComboBox()
        for k, label in SOURCE_KINDS:
            self.kind.addItem(label, k)
        self.path = QLineEdit(placeholderText="folder or .tar.gz path")
        self.path.setClearButtonEnabled(True)
        self.browse = QPushButton("Browse…")
        self.load_btn = QPushButton("Load")
        self.load_btn.setDefault(True)
        self.kind.activated.connect(self._kind_activated)
        self.browse.clicked.connect(self._browse)
        self.load_btn.clicked.connect(self._load_clicked)
        self.path.returnPressed.connect(self._load_clicked)

        src = QGroupBox("Source")
        sl = QVBoxLayout(src)
        sl.addWidget(self.kind)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(self.browse)
        sl.addLayout(row)
        sl.addWidget(self.load_btn)

        self.status = QLabel("No dataset loaded.")
        self.status.setWordWrap(True)
        info_box = QGroupBox("Dataset")
        self.info_form = QFormLayout(info_box)
        self.info_labels: dict[str, QLabel] = {}
        for key in ("name", "train", "test", "image size", "classes", "split", "notes"):
            lab = QLabel("–")
            lab.setWordWrap(True)
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.info_labels[key] = lab
            self.info_form.addRow(key, lab)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(src)
        ll.addWidget(self.status)
        ll.addWidget(info_box)
        ll.addStretch(1)

        self.thumbs = QLabel()
        self.thumbs.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        thumbs_box = QGroupBox("Samples")
        tl = QVBoxLayout(thumbs_box)
        tl.addWidget(self.thumbs)

        self.preview = QLabel("Load a dataset to preview the augmentation.")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.preview_note = QLabel()
        self.preview_note.setWordWrap(True)
        self.resample = QPushButton("New sample")
        self.resample.setToolTip("Draw new random augmentations")
        self.resample.clicked.connect(self._resample)
        prev_box = QGroupBox("Augmentation preview (global crops, then local crops)")
        pl = QVBoxLayout(prev_box)
        pl.addWidget(self.preview)

        content = QWidget()
        cl = QVBoxLayout(content)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(prev_box)
        cl.addWidget(thumbs_box)
        cl.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(content)
        # the note and "New sample" stay in view above the scrolled pictures (which may be wide)
        head = QHBoxLayout()
        head.addWidget(self.preview_note, 1)
        head.addWidget(self.resample)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addLayout(head)
        rl.addWidget(scroll, 1)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([280, 700])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(split)
        self._sync_kind("shapes")

    def _sync_kind(self, source: str) -> None:
        k = source_kind(source)
        self.kind.setCurrentIndex(self.kind.findData(k))
        self.path.setText("" if k == "shapes" else source)
        self.path.setEnabled(k != "shapes")
        self.browse.setEnabled(k != "shapes")

    # ------------------------------------------------------------ actions
    def _ask_folder(self) -> str:
        return QFileDialog.getExistingDirectory(self, "Image folder", self.path.text() or str(Path.home()))

    def _ask_archive(self) -> str:
        path, _ = QFileDialog.getOpenFileName(self, "Image archive", self.path.text() or str(Path.home()),
                                              "Archives (*.tar.gz *.tgz *.tar);;All files (*)")
        return path

    def _kind_activated(self, _i: int) -> None:
        k = self.kind.currentData()
        self.path.setEnabled(k != "shapes")
        self.browse.setEnabled(k != "shapes")
        if k == "shapes":
            self.choose_source("shapes")
        elif not self.path.text().strip() or source_kind(self.path.text()) != k:
            self.path.clear()
            self._browse()

    def _browse(self) -> None:
        k = self.kind.currentData()
        path = self.open_folder_dialog() if k == "folder" else self.open_archive_dialog()
        if path:
            self.choose_source(path)

    def _load_clicked(self) -> None:
        k = self.kind.currentData()
        source = "shapes" if k == "shapes" else self.path.text().strip()
        if not source:
            self._set_status("Choose a folder or an archive first.", error=True)
            return
        self.choose_source(source)

    def _resample(self) -> None:
        self._seed += 1
        self.refresh_preview()

    # ---------------------------------------------------------------- API
    def source(self) -> str:
        return "shapes" if self.kind.currentData() == "shapes" else self.path.text().strip()

    def choose_source(self, source: str) -> None:
        """Select ``source``, tell the window (``source_chosen``) and load it."""
        self._sync_kind(source)
        self.source_chosen.emit(source)
        self.load(source)

    def set_config(self, cfg: RunConfig | None) -> None:
        """The current setup changed: follow data.source, refresh the preview when what it shows changed."""
        if cfg is None:
            return
        self.cfg = cfg
        if cfg.data.source != self.source():
            self._sync_kind(cfg.data.source)
        if self.splits is not None and _preview_key(cfg) != self._preview_aug:
            self._debounce.start()
        # the setup names another dataset than the last load (which may have failed): reload it
        # (now when the page is visible, else when shown)
        attempted = self.splits is not None or self._attempted_key is not None
        if attempted and cfg.data.model_dump(mode="json") != self._attempted_key:
            if self.isVisible():
                self._reload.start()
            else:
                self._stale = True

    def load(self, source: str | None = None) -> None:
        """Load the dataset of the current setup (``source`` replaces data.source) in the background."""
        from engine.config import DataConfig

        base = self.cfg.data.model_dump() if self.cfg is not None else {}
        if source is not None:
            base["source"] = source
        try:
            data_cfg = DataConfig(**base)
        except Exception as e:  # noqa: BLE001
            self._set_status(str(e), error=True)
            return
        if self.loaded_key == data_cfg.model_dump(mode="json") and self.splits is not None:
            self._attempted_key = self.loaded_key  # back to the loaded dataset (e.g. after a failed path)
            self._set_status(f"Loaded {self.splits.name}.")
            return
        if self.loader is not None and self.loader.isRunning():
            self.loader.done.disconnect()  # superseded: stop it at its next chunk, ignore its result
            self.loader.requestInterruption()
            self._old_loaders = [t for t in self._old_loaders if t.isRunning()] + [self.loader]
        self._attempted_key = data_cfg.model_dump(mode="json")
        self._stale = False
        self._set_status(f"Loading {data_cfg.source} …")
        self.load_btn.setEnabled(False)
        self.loader = DataLoader(data_cfg)
        self.loader.done.connect(self._loaded)
        self.loader.start()

    def _reload_if_needed(self) -> None:
        if self.cfg is not None and self.cfg.data.model_dump(mode="json") != self._attempted_key:
            self.load()

    def is_loading(self) -> bool:
        return self.loader is not None and self.loader.isRunning()

    def is_busy(self) -> bool:
        """Loading a dataset or computing the augmentation preview (scripted screenshots wait)."""
        preview = self.preview_job is not None and self.preview_job.isRunning()
        return self.is_loading() or preview or self._preview_pending

    def data_for(self, cfg: RunConfig):
        """The loaded splits when they were loaded with ``cfg.data`` (the trainer can reuse them)."""
        if self.splits is not None and self.loaded_key == cfg.data.model_dump(mode="json"):
            return self.splits
        return None

    def shutdown(self) -> None:
        """Stop the background threads and wait for them (window closing): a dataset load ends at
        its next decoded chunk, not after the whole dataset."""
        self._debounce.stop()
        self._reload.stop()
        threads = [t for t in (self.loader, self.preview_job, *self._old_loaders) if t is not None]
        for t in threads:
            t.requestInterruption()
        for t in threads:
            if t.isRunning():
                t.wait()
        self._old_loaders.clear()

    # ---------------------------------------------------------- internals
    def _set_status(self, text: str, error: bool = False) -> None:
        from . import theme

        if error:
            self.status.setText(f"<span style='color:{theme.pick(theme.ERROR_COLOR).name()}'>{text}</span>")
        else:
            self.status.setText(text)

    def _loaded(self, splits, key: dict, error: str) -> None:
        if key != self._attempted_key:  # a superseded load, delivered late: the current one follows
            return
        self.load_btn.setEnabled(True)
        if self.loader is not None:
            self.loader.wait()
        if splits is None:
            self._set_status(error, error=True)
            self.load_failed.emit(error)
            return
        self.splits, self.loaded_key = splits, key
        self._set_status(f"Loaded {splits.name}.")
        self._show_info(splits)
        self._show_thumbnails(splits)
        self._preview_aug = None
        self.refresh_preview()
        self.data_loaded.emit(splits)

    def _show_info(self, s) -> None:
        L = self.info_labels
        L["name"].setText(f"{s.name}  <small>({s.source})</small>")
        L["train"].setText(f"{len(s.train):,} images")
        L["test"].setText(f"{len(s.test):,} images" if s.test is not None else "none held out")
        maps = sorted(s.train.extras)  # depth / segmentation maps (shapes; rgb/ + depth/ + seg/ folders)
        L["image size"].setText(f"{s.image_size} × {s.image_size} px" + (f", with {' and '.join(maps)} maps"
                                                                          if maps else ""))
        classes = s.classes
        L["classes"].setText(f"{len(classes)}: " + ", ".join(classes[:20]) + (" …" if len(classes) > 20 else "")
                             if classes else "unlabelled")
        L["split"].setText(str(s.info.get("split", "–")))
        notes = []
        if s.info.get("skipped"):
            notes.append(f"{s.info['skipped']} unreadable images skipped")
        if s.info.get("converted"):
            notes.append(f"{s.info['converted']} images converted")
        notes += [str(w) for w in s.info.get("warnings", [])]
        L["notes"].setText("\n".join(notes) or "–")

    def _show_thumbnails(self, s) -> None:
        self.thumbs.setPixmap(compose_rows(thumbnail_rows(s), 56, self.palette()))

    def _preview_images(self):
        import torch

        s = self.splits
        src = s.test if s.test is not None and len(s.test) else s.train
        n = len(src)
        idx = torch.linspace(0, n - 1, steps=min(PREVIEW_IMAGES, n)).round().long()
        return src.images[idx].clone()

    def refresh_preview(self) -> None:
        """Recompute the augmentation preview for the current aug settings (background thread)."""
        if self.splits is None or self.cfg is None:
            return
        if self.preview_job is not None and self.preview_job.isRunning():
            self._preview_pending = True
            return
        self._preview_pending = False
        self._preview_aug = _preview_key(self.cfg)
        self.preview_job = PreviewJob(copy.deepcopy(self.cfg), self._preview_images(), self._seed)
        self.preview_job.done.connect(self._preview_done)
        self.preview_job.start()

    def _preview_done(self, result, error: str) -> None:
        if self.preview_job is not None:
            self.preview_job.wait()
        if self._preview_pending:
            self.refresh_preview()
            return
        if result is None:
            self.preview.setText(f"Preview failed: {error}")
            self.preview_note.setText("")
            return
        names = ["source"] + result["names"]
        src = self._preview_images().numpy()
        rows = []
        has_mask = result.get("masked") is not None
        if has_mask:
            names.append("masked")
        for i, views in enumerate(result["views"]):
            cells = [(src[i], "")] + [(v, f"{v.shape[-1]} px") for v in views]
            if has_mask and i < len(result["masked"]):
                cells.append((result["masked"][i], ""))
            rows.append((f"image {i + 1}", cells))
        cell = 84
        self.preview.setPixmap(compose_rows(rows, cell, self.palette(), label_w=56, header=names))
        n_views = len(result["names"])
        note = f"{n_views} view{'s' if n_views != 1 else ''} per image; crops drawn at their own size, shown at {cell} px."
        if result.get("mask_note"):
            note += " " + result["mask_note"] + "."
        self.preview_note.setText(note)
        self.preview_updated.emit()

    def showEvent(self, event) -> None:  # noqa: N802 - load lazily on first show
        super().showEvent(event)
        if (self.splits is None or self._stale) and not self.is_loading() and self.cfg is not None:
            self.load()

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(900, 500)

