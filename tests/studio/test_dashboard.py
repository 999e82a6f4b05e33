"""The dashboard: event stream -> curves, smoothing, collapse badge, probes, reopen, export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from engine import events as ev  # noqa: E402
from studio.dashboard import Dashboard  # noqa: E402
from studio.dashboard.curves import (  # noqa: E402
    EmaState, SeriesBuffer, collapse_message, debiased_ema, sticky_range,
)
from studio.dashboard.images import (  # noqa: E402
    SnapshotHistory, Snapshot, attention_columns, attention_threshold, column_order, mosaic, to_rgb_uint8,
)
from studio.dashboard.snapshots import (  # noqa: E402
    list_probe_files, load_probes, parse_probe_filename, read_probe_file, replay_events, row_to_event, save_probe,
)

HEALTHY = {"std": 0.06, "std_ref": 1 / math.sqrt(256), "rank_me": 90.0, "alignment": 0.6, "uniformity": -2.5}
DINO_HEALTHY = {**HEALTHY, "teacher_entropy": 5.0, "entropy_ref": math.log(4096), "kl": 0.8}


# ------------------------------------------------------------------------- synthetic data
def _images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth colourful test images (gradients + a disc) so screenshots are readable."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.15, 0.3)]
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        base = np.stack([xx, yy, 1 - xx], -1) * 160 + 40
        base[disc] = rng.uniform(60, 255, 3)
        out[i] = base.astype(np.uint8)
    return out


def _recon_probe(step: int, n: int = 4, size: int = 32, extra: bool = True) -> ev.VisualProbe:
    orig = _images(n, size, step)
    mask = np.zeros((n, size, size, 1), bool)
    mask[:, ::8, :] = True
    mask[:, :, ::8] = True
    masked = np.where(np.kron(np.random.default_rng(step).random((n, size // 8, size // 8)) < 0.75,
                              np.ones((8, 8)))[..., None] > 0, 128, orig).astype(np.uint8)
    recon = np.clip(orig.astype(int) + 25, 0, 255).astype(np.uint8)
    images = {"original": orig, "masked": masked, "reconstruction": recon, "pasted": recon}
    if extra:
        images["depth"] = orig.mean(-1).astype(np.float32) / 255.0  # [N, H, W] float modality
    return ev.VisualProbe(step, probe="reconstruction", images=images, meta={"mask_ratio": 0.75})


def _attention_probe(step: int, n: int = 3, heads: int = 4, size: int = 32) -> ev.VisualProbe:
    yy, xx = np.mgrid[0:8, 0:8]
    att = np.empty((n, heads, 8, 8), np.float32)
    for i in range(n):
        for h in range(heads):
            cy, cx = (i + h) % 8, (2 * h + i) % 8
            att[i, h] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
    att /= att.sum(axis=(2, 3), keepdims=True)
    return ev.VisualProbe(step, probe="attention", images={"image": _images(n, size, step + 1), "attention": att})


def _stream(run_dir: str, steps: int = 60, eval_every: int = 20, collapse: bool = False) -> list[ev.Event]:
    out: list[ev.Event] = [ev.RunStarted(0, run_dir=run_dir, method="mae", device="cpu", total_steps=steps,
                                         steps_per_epoch=20, n_train=256, n_test=128, config={},
                                         class_names=[f"shape-{i}" for i in range(10)])]
    rng = np.random.default_rng(0)
    for s in range(1, steps + 1):
        out.append(ev.StepMetrics(s, epoch=(s - 1) // 20, loss=2.0 / math.sqrt(s) + 0.05 * rng.random(),
                                  lr=1e-3 * min(1.0, s / 10), weight_decay=0.05, images_per_s=900 + 10 * rng.random(),
                                  scalars={"loss_rec": 1.0 / s, "loss_aux": 0.5 / s, "teacher_temp": 0.04}))
        if s % 20 == 0:
            out.append(ev.EpochEnd(s, epoch=s // 20 - 1, seconds=1.0))
        if s % eval_every == 0:
            ind = dict(DINO_HEALTHY)
            if collapse and s >= 40:
                ind["std"] = 0.001
            q = 120
            lab = np.arange(q) % 10
            emb = np.stack([np.cos(lab * 0.63), np.sin(lab * 0.63)], 1) * 3 + rng.normal(0, 0.5, (q, 2))
            out.append(ev.Evaluation(s, knn_top1=0.2 + s / 200, indicators=ind, embedding=emb, labels=lab))
        if s % 30 == 0:
            out.append(_recon_probe(s))
            out.append(_attention_probe(s))
        if s == 25:
            out.append(ev.LiveChange(s, key="optim.lr", old=1e-3, new=5e-4))
    out.append(ev.CheckpointSaved(steps, path=f"{run_dir}/checkpoints/last.pt"))
    out.append(ev.Finished(steps, status="completed", seconds=12.0, knn_top1=0.5))
    return out


@pytest.fixture
def dash(qtbot):
    d = Dashboard()
    qtbot.addWidget(d)
    d.resize(1200, 800)
    d.show()
    return d


def _write_run(root: Path, events: list[ev.Event]) -> Path:
    """A run folder as the engine writes it: config.yaml, metrics.jsonl, run.json, probes/*.npz."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("method: mae\ndata:\n  source: shapes\n")
    w = ev.JsonlWriter(str(root / "metrics.jsonl"))
    for e in events:
        w(e)
        if isinstance(e, ev.VisualProbe):
            save_probe(root, e)
    w.close()
    (root / "run.json").write_text(json.dumps({"status": "completed", "method": "mae", "dataset": "shapes",
                                               "step": 60, "total_steps": 60, "best_knn_top1": 0.5}))
    return root


# ------------------------------------------------------------------------- pure logic
def test_debiased_ema_matches_the_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200).cumsum()
    for a in (0.0, 0.6, 0.9, 0.99):
        expected = []
        s = 0.0
        for t, v in enumerate(x, start=1):
            s = a * s + (1 - a) * v
            expected.append(s / (1 - a ** t) if a > 0 else s)
        np.testing.assert_allclose(debiased_ema(x, a), expected, rtol=1e-12, atol=1e-12)
    # the first smoothed value is the first value (debiasing), a constant stays constant
    assert debiased_ema([3.0, 3.0, 3.0], 0.9).tolist() == pytest.approx([3.0, 3.0, 3.0])
    # incremental == batch
    st = EmaState(0.8)
    inc = np.concatenate([st.extend(x[:50]), st.extend(x[50:])])
    np.testing.assert_allclose(inc, debiased_ema(x, 0.8))
    # non-finite values are skipped (NaN out, state untouched)
    y = debiased_ema([1.0, float("nan"), 1.0], 0.5)
    assert math.isnan(y[1]) and y[2] == pytest.approx(1.0)


def test_series_buffer_grows_and_truncates_on_resume():
    b = SeriesBuffer(capacity=4)
    for s in range(10):
        b.append(s, s * 2.0)
    assert len(b) == 10 and b.y[-1] == 18.0
    b.append(6, -1.0)  # a resumed run restarts from its checkpoint at step 6
    assert b.x.tolist() == [0, 1, 2, 3, 4, 5, 6] and b.y[-1] == -1.0 and b.truncated


def test_sticky_range_grows_in_steps_and_always_holds_the_data():
    # a range holding the data, which fill at least half of it, is kept
    assert sticky_range(1.0, 100.0, (0.0, 110.0)) is None
    # data past the top: fitted with padding below, grown by 20 % of the span above
    lo, hi = sticky_range(1.0, 120.0, (0.0, 110.0), padding=0.02)
    assert lo == pytest.approx(1.0 - 0.02 * 119) and hi == pytest.approx(120.0 + 0.02 * 119 + 0.2 * 119)
    # data that shrank to less than half of the range (a cleared or resumed curve): fitted again
    lo, hi = sticky_range(10.0, 20.0, (0.0, 110.0), padding=0.0)
    assert (lo, hi) == (10.0, 20.0)
    # a constant series gets a visible range around its value
    lo, hi = sticky_range(0.05, 0.05, (0.0, 1.0 / 1e9))
    assert lo < 0.05 < hi
    # a steadily growing curve (steps 1..100,000): every point inside the range, few range changes
    cur, changes = (0.0, 1.0), 0
    for hi in np.geomspace(2, 1e5, 2000):
        r = sticky_range(1.0, float(hi), cur)
        if r is not None:
            cur, changes = r, changes + 1
        assert cur[0] <= 1.0 and hi <= cur[1] and (hi - 1.0) >= 0.5 * (cur[1] - cur[0])
    assert changes <= 12 * 5 + 2  # about 12 per tenfold growth, not one per redraw (2,000 here)


def test_live_curves_keep_their_range_between_redraws_and_show_every_point(dash, qtbot, tmp_path):
    """The loss plot's axes are not re-laid out on every redraw of a growing run (that was most of
    the GUI thread's time), yet no point ever falls outside the view."""
    dash.tabs.setCurrentIndex(0)
    events = _stream(str(tmp_path / "run-sticky"), steps=400, eval_every=1000)
    vb = dash.plots["loss"].getPlotItem().getViewBox()
    ranges = []
    for i in range(1, len(events), 10):
        dash.handle_events(events[i:i + 10])
        dash.flush()
        (x0, x1), (y0, y1) = vb.viewRange()
        xs, ys = dash.series("loss")
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        ranges.append(((x0, x1), (y0, y1)))
    changes = sum(a != b for a, b in zip(ranges, ranges[1:]))
    assert changes < len(ranges) // 3, (changes, len(ranges))
    assert vb.autoRangeEnabled()[0] and vb.autoRangeEnabled()[1]


def test_collapse_rules():
    assert collapse_message(HEALTHY) is None
    assert collapse_message(DINO_HEALTHY) is None
    assert collapse_message({}) is None
    assert collapse_message({"std": float("nan"), "std_ref": 0.06}) is None
    assert "std" in collapse_message({**HEALTHY, "std": 0.2 * HEALTHY["std_ref"] * 0.9})
    assert collapse_message({**HEALTHY, "std": 0.2 * HEALTHY["std_ref"] * 1.1}) is None
    assert "rank" in collapse_message({**HEALTHY, "rank_me": 1.3})
    assert collapse_message({"rank_me": 1.3, "std": 0.5, "std_ref": 0.5}) is None  # d = 4: few dims
    assert collapse_message({**HEALTHY, "rank_me": 1.3, "dim": 2.0}) is None  # a batch of 2: rank <= 2 anyway
    logk = math.log(4096)
    assert "one-hot" in collapse_message({**DINO_HEALTHY, "teacher_entropy": 0.01 * logk, "kl": 0.0})
    assert "uniform" in collapse_message({**DINO_HEALTHY, "teacher_entropy": 0.99 * logk, "kl": 1e-5})
    assert collapse_message({**DINO_HEALTHY, "teacher_entropy": 0.99 * logk, "kl": 0.5}) is None


def test_attention_threshold_keeps_the_requested_mass():
    rng = np.random.default_rng(2)
    att = rng.random((3, 4, 14, 14)) ** 4
    for frac in (0.1, 0.6, 0.9):
        keep = attention_threshold(att, frac)
        assert keep.shape == att.shape and keep.dtype == bool
        for m, k in zip(att.reshape(-1, 196), keep.reshape(-1, 196)):
            total = m.sum()
            kept = m[k].sum() / total
            assert kept <= frac + 1e-9
            # the largest value left out would push the kept mass over the fraction
            assert kept + m[~k].max() / total > frac
            # kept values are exactly the top ones
            assert m[k].min() >= m[~k].max()
    assert attention_threshold(att, 1.0).all()
    assert not attention_threshold(np.zeros((2, 4, 4)), 0.6).any()
    # the DINO example: one peak holding 70 % of the mass is all that 0.6 ... 0.7 keeps
    one = np.full((5, 5), 0.3 / 24)
    one[2, 2] = 0.7
    assert attention_threshold(one, 0.6).sum() == 0
    assert attention_threshold(one, 0.71).sum() == 1


def test_image_helpers():
    assert column_order(["pasted", "depth", "original", "reconstruction", "masked"]) == [
        "original", "masked", "reconstruction", "pasted", "depth"]
    g = to_rgb_uint8(np.linspace(-1, 3, 2 * 4 * 4).reshape(2, 4, 4))
    assert g.shape == (2, 4, 4, 3) and g.dtype == np.uint8 and g.min() == 0 and g.max() == 255
    img, h, w = mosaic([np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 4, 4, 3), np.uint8)], pad=2)
    assert (h, w) == (8, 8) and img.shape == (3 * 10 + 2, 2 * 10 + 2, 3)
    cols, titles = attention_columns(_images(2, 16, 0), np.random.rand(2, 3, 4, 4), 0.6)
    assert titles == ["image", "head 0", "head 1", "head 2", "60%\nof mass"] and all(c.shape == (2, 16, 16, 3) for c in cols)
    h = SnapshotHistory(maxlen=3)
    for s in (10, 20, 30, 40):
        h.add(Snapshot(s, {}))
    assert [s.step for s in h.items] == [20, 30, 40] and h.current().step == 40
    h.select(0)
    h.add(Snapshot(50, {}))  # the user looks back: the cursor stays on step 20... which fell out
    assert h.current().step == 30 and not h.follow
    h.select(len(h) - 1)
    h.add(Snapshot(60, {}))
    assert h.current().step == 60


def test_probe_snapshot_files_roundtrip(tmp_path):
    p = _attention_probe(1200)
    p.meta = {"layer": "last"}
    path = save_probe(tmp_path, p)
    assert path.name == "probe-attention-1200.npz"
    assert parse_probe_filename("probe-multi-mae-rgb-00000042.npz") == ("multi-mae-rgb", 42)
    assert parse_probe_filename("probe-x.npz") is None
    back = read_probe_file(path)
    assert back.probe == "attention" and back.step == 1200 and back.meta == {"layer": "last"}
    for k in p.images:
        np.testing.assert_array_equal(back.images[k], p.images[k])
        assert back.images[k].dtype == p.images[k].dtype
    # a torn archive is skipped
    (tmp_path / "probes" / "probe-attention-1300.npz").write_bytes(b"PK\x03\x04 torn")
    assert [e.step for e in load_probes(tmp_path)] == [1200]
    assert list(list_probe_files(tmp_path)) == ["attention"]
    # jsonl rows regroup into typed events
    row = ev.StepMetrics(5, epoch=0, loss=1.0, lr=0.1, weight_decay=0.0, images_per_s=3.0,
                         scalars={"loss_rec": 0.5}).to_json()
    e = row_to_event(json.loads(json.dumps(row)))
    assert isinstance(e, ev.StepMetrics) and e.scalars == {"loss_rec": 0.5} and e.loss == 1.0
    row = ev.Evaluation(5, knn_top1=None, indicators={"std": 0.1}).to_json()
    e = row_to_event(row)
    assert isinstance(e, ev.Evaluation) and e.knn_top1 is None and e.indicators == {"std": 0.1}
    assert e.knn_standardized is False
    e = row_to_event(json.loads(json.dumps(ev.Evaluation(7, knn_top1=0.3, knn_standardized=True).to_json())))
    assert e.knn_standardized is True and e.knn_top1 == 0.3 and e.indicators == {}  # a flag, not an indicator
    assert row_to_event({"event": "nonsense", "step": 1}) is None


# ------------------------------------------------------------------------- the widget
def test_knn_plot_names_the_protocol(dash):
    title = lambda: dash.knn_plot.getPlotItem().titleLabel.text  # noqa: E731
    dash.handle_events([ev.Evaluation(10, knn_top1=0.3, knn_standardized=True)])
    assert "standardised features" in title()
    dash.clear()  # a new run (a contrastive method): plain kNN
    dash.handle_events([ev.Evaluation(10, knn_top1=0.3)])
    assert title() == "kNN top-1"


def test_dashboard_accepts_a_stream(dash, qtbot, tmp_path):
    warnings = []
    dash.collapse_warning.connect(warnings.append)
    events = _stream(str(tmp_path / "run-a"))
    for i in range(0, len(events), 17):  # batches, as the worker's pump delivers them
        dash.handle_events(events[i:i + 17])
    qtbot.waitUntil(lambda: dash.redraw_count > 0, timeout=2000)
    dash.flush()

    assert len(dash.series("loss")[0]) == 60
    for k in ("lr", "weight_decay", "images_per_s"):
        assert len(dash.series(k)[0]) == 60
    assert len(dash.series("knn_top1")[0]) == 3
    assert set(dash.scalar_buffers) == {"loss_rec", "loss_aux", "teacher_temp"}
    for k in dash.scalar_buffers:  # one plot per extra scalar, nothing hard-coded
        assert f"scalar/{k}" in dash.plots
        item = dash.plots[f"scalar/{k}"].getPlotItem().listDataItems()[0]
        assert len(item.getOriginalDataset()[0]) == 60
    loss_items = dash.plots["loss"].getPlotItem().listDataItems()
    assert [len(i.getOriginalDataset()[0]) for i in loss_items] == [60, 60]  # raw + smoothed
    x, y = dash.smoothed_loss()
    np.testing.assert_allclose(y, debiased_ema(dash.series("loss")[1], dash.smoothing))
    knn_item = dash.plots["knn"].getPlotItem().listDataItems()[0]
    assert len(knn_item.getOriginalDataset()[0]) == 3
    std_items = dash.plots["std"].getPlotItem().listDataItems()
    assert len(std_items) == 2  # std + the 1/sqrt(d) reference
    assert len(dash.plots["teacher_entropy"].getPlotItem().listDataItems()) == 2  # + log K
    # live change: one marker on every curve plot
    for name in ("loss", "lr", "throughput", "knn", "std", "scalar/loss_rec"):
        assert dash.marker_count(name) == 1, name
    # probes: history with a step slider
    assert dash.recon_view.steps() == [30, 60]
    assert dash.attention_view.steps() == [30, 60]
    assert dash.embedding_view.points == 120 and dash.embedding_view.step == 60
    legend = dash.embedding_view.legend.text()
    assert all(f"shape-{i}" in legend for i in range(10))  # class names, not indices
    pts = dash.embedding_view.scatter.points()
    assert dash.embedding_view._tip(pts[0].pos().x(), pts[0].pos().y(), pts[0].data()).startswith("shape-")
    assert not warnings and dash.badge.isHidden()
    assert "completed" in dash.status_label.text()

    # smoothing slider recomputes
    dash.smoothing_slider.setValue(90)
    dash.flush()
    np.testing.assert_allclose(dash.smoothed_loss()[1], debiased_ema(dash.series("loss")[1], 0.9))

    # look back through snapshots
    dash.recon_view.slider.setValue(0)
    assert dash.recon_view.history.current().step == 30
    dash.attention_view.set_fraction(0.3)
    assert dash.attention_view.fraction == pytest.approx(0.3)

    for i in range(dash.tabs.count()):
        dash.tabs.setCurrentIndex(i)
        qtbot.wait(20)
        name = dash.tabs.tabText(i).lower().replace(" ", "_")
        assert dash.grab().save(str(tmp_path / f"dashboard-{i}-{name}.png"))
    dash.clear()
    assert len(dash.series("loss")[0]) == 0 and dash.recon_view.steps() == []
    assert not any(n.startswith("scalar/") for n in dash.plots)


def test_collapse_badge_and_signal(dash, qtbot, tmp_path):
    with qtbot.waitSignal(dash.collapse_warning, timeout=1000) as sig:
        dash.handle_events(_stream(str(tmp_path / "run-c"), collapse=True))
    assert "std" in sig.args[0] and "step 40" in sig.args[0]
    dash.flush()
    assert dash.badge.isVisibleTo(dash) and "Collapse" in dash.badge.text()
    dash.grab().save(str(tmp_path / "dashboard-collapse.png"))
    # once per run
    got = []
    dash.collapse_warning.connect(got.append)
    dash.handle_events([ev.Evaluation(80, knn_top1=0.1, indicators={**HEALTHY, "rank_me": 1.0})])
    assert got == []
    # a new run resets it
    dash.handle_events([ev.RunStarted(0, run_dir=str(tmp_path / "run-d"), method="dino", device="cpu",
                                      total_steps=10, steps_per_epoch=10, n_train=1, n_test=1, config={}),
                        ev.Evaluation(5, knn_top1=0.1, indicators={**DINO_HEALTHY, "teacher_entropy": 0.01})])
    assert len(got) == 1 and "one-hot" in got[0]
    # healthy indicators hide the badge again
    dash.handle_events([ev.Evaluation(10, knn_top1=0.2, indicators=DINO_HEALTHY)])
    dash.flush()
    assert dash.badge.isHidden()


def test_healthy_run_never_warns(dash, qtbot, tmp_path):
    got = []
    dash.collapse_warning.connect(got.append)
    dash.handle_events(_stream(str(tmp_path / "run-h")))
    dash.flush()
    assert got == [] and dash.collapse_text is None and dash.badge.isHidden()


def test_load_run_restores_curves_and_snapshots(dash, tmp_path):
    events = _stream(str(tmp_path / "elsewhere" / "run-r"))  # the folder was moved since
    root = _write_run(tmp_path / "run-r", events)
    assert sorted(p.name for p in (root / "probes").iterdir()) == [
        "probe-attention-30.npz", "probe-attention-60.npz",
        "probe-reconstruction-30.npz", "probe-reconstruction-60.npz"]
    replay = replay_events(root)
    assert sum(isinstance(e, ev.VisualProbe) for e in replay) == 4

    dash.load_run(str(root))
    assert len(dash.series("loss")[0]) == 60
    assert len(dash.series("knn_top1")[0]) == 3
    assert set(dash.scalar_buffers) == {"loss_rec", "loss_aux", "teacher_temp"}
    np.testing.assert_allclose(dash.series("scalar/loss_rec")[1], [1.0 / s for s in range(1, 61)])
    assert set(dash.indicator_buffers) == set(DINO_HEALTHY)
    assert dash.marker_count("loss") == 1
    assert dash.embedding_view.class_names == [f"shape-{i}" for i in range(10)]  # from run_started
    assert dash.recon_view.steps() == [30, 60] and dash.attention_view.steps() == [30, 60]
    snap = dash.recon_view.history.current()
    np.testing.assert_array_equal(snap.images["original"], events[[i for i, e in enumerate(events)
                                  if isinstance(e, ev.VisualProbe) and e.probe == "reconstruction"][-1]]
                                  .images["original"])
    assert "run-r" in dash.status_label.text() and "completed" in dash.status_label.text()

    # compare: overlay two runs, legend by run name
    other = _write_run(tmp_path / "run-s", _stream(str(tmp_path / "run-s"), steps=40))
    dash.set_overlay_runs([str(root), str(other)])
    names = [item[1].text for item in dash.plots["compare_loss"].getPlotItem().legend.items]
    assert names == ["run-r", "run-s"]
    assert [len(i.getOriginalDataset()[0]) for i in dash.plots["compare_loss"].getPlotItem().listDataItems()] == [60, 40]
    assert [len(i.getOriginalDataset()[0]) for i in dash.plots["compare_knn"].getPlotItem().listDataItems()] == [3, 2]
    # the smoothing slider re-smooths the overlays at the next (throttled) redraw
    dash.smoothing_slider.setValue(30)
    dash.flush()
    first = dash.plots["compare_loss"].getPlotItem().listDataItems()[0].getOriginalDataset()[1]
    loss_r = [r["loss"] for r in ev.read_metrics(str(root / "metrics.jsonl")) if r["event"] == "train"]
    np.testing.assert_allclose(first, debiased_ema(np.asarray(loss_r, dtype=float), 0.3), rtol=1e-6)
    dash.grab().save(str(tmp_path / "dashboard-compare.png"))
    assert dash.tabs.currentWidget() is dash._compare_page
    dash.load_run(str(other))  # reopening one run shows its own curves, not the overlay
    assert dash.tabs.currentIndex() == 0 and len(dash.series("loss")[0]) == 40
    assert not dash.plots["knn"].getPlotItem().getAxis("left").autoSIPrefix  # 0.15, not "150 (x0.001)"


def test_export_plot_png_and_svg(dash, tmp_path):
    dash.handle_events(_stream(str(tmp_path / "run-e")))
    dash.export_plot("loss", str(tmp_path / "out" / "loss.png"))
    dash.export_plot("knn", str(tmp_path / "out" / "knn.svg"))  # a hidden tab
    dash.export_plot("reconstruction", str(tmp_path / "out" / "recon.png"))
    png = (tmp_path / "out" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    svg = (tmp_path / "out" / "knn.svg").read_text()
    assert "<svg" in svg and "</svg>" in svg and "kNN" in svg
    assert (tmp_path / "out" / "recon.png").stat().st_size > 2000
    with pytest.raises(KeyError):
        dash.export_plot("nope", str(tmp_path / "x.png"))
    with pytest.raises(ValueError):
        dash.export_plot("loss", str(tmp_path / "x.pdf"))


def test_handle_events_is_cheap(dash):
    """5000 train events (a 1 ms/step run's 200 ms batch is 200) are appended in well under 100 ms."""
    import time

    batch = [ev.StepMetrics(s, epoch=0, loss=1.0, lr=0.1, weight_decay=0.0, images_per_s=1.0,
                            scalars={"a": 1.0, "b": 2.0}) for s in range(5000)]
    before = dash.redraw_count
    t = time.perf_counter()
    dash.handle_events(batch)
    assert time.perf_counter() - t < 0.25
    assert dash.redraw_count == before  # drawing waits for the coalescing timer
    assert dash._timer.isActive() and dash._timer.interval() == 200


@pytest.mark.parametrize("height", [360, 700])
def test_probe_column_titles_stay_inside_the_view(qtbot, height):
    """Two-line column titles (drawn in screen pixels) above a tall mosaic (8 rows, as the
    probes send) are not clipped by the view, whatever the widget's height."""
    from studio.dashboard.images import ProbeGridView
    view = ProbeGridView("Reconstructions")
    qtbot.addWidget(view)
    view.resize(700, height)
    view.show()
    qtbot.waitExposed(view)
    view.add(60, _recon_probe(60, n=8).images)
    view.refresh()
    qtbot.wait(20)
    vb = view.plot.getPlotItem().getViewBox()
    top = vb.sceneBoundingRect().top()
    assert len(view._titles) == 5
    for t in view._titles:
        assert "\n" in t.toPlainText() or t.toPlainText() in ("original", "masked", "depth")
        assert t.sceneBoundingRect().top() >= top - 1, (t.toPlainText(), t.sceneBoundingRect(), top)
    view.resize(700, height // 2)  # shrinking the widget keeps them inside too
    qtbot.wait(20)
    top = vb.sceneBoundingRect().top()
    for t in view._titles:
        assert t.sceneBoundingRect().top() >= top - 1, (t.toPlainText(), t.sceneBoundingRect(), top)


def test_flat_curves_get_a_sensible_range_and_user_zoom_is_kept(dash, qtbot, tmp_path):
    """A constant series (weight decay 0.05; a constant teacher temperature whose smoothed
    curve carries float rounding noise) is drawn +-50 % around its value, not zoomed into the
    noise; a y range the user zoomed to by hand survives later updates."""
    events = _stream(str(tmp_path / "run-flat"), steps=40)
    dash.handle_events(events[:60])
    dash.flush()
    for name, value in (("scalar/teacher_temp", 0.04), ("weight_decay", 0.05)):
        lo, hi = dash.plots[name].getPlotItem().getViewBox().viewRange()[1]
        assert lo < value < hi and hi - lo == pytest.approx(value, rel=1e-6), (name, lo, hi)
    # the loss varies: auto-range, untouched; a zoom by hand is kept through later updates
    vb = dash.plots["loss"].getPlotItem().getViewBox()
    assert vb.autoRangeEnabled()[1]
    vb.setYRange(0.4, 0.6, padding=0)
    dash.handle_events(events[60:])
    dash.flush()
    lo, hi = vb.viewRange()[1]
    assert (lo, hi) == pytest.approx((0.4, 0.6))
    # a series that stops being flat goes back to auto-range
    dash.handle_events([ev.StepMetrics(41, epoch=2, loss=0.3, lr=1e-3, weight_decay=0.4, images_per_s=900.0)])
    dash.flush()
    vb = dash.plots["weight_decay"].getPlotItem().getViewBox()
    assert vb.autoRangeEnabled()[1]
    lo, hi = vb.viewRange()[1]
    assert lo <= 0.05 and hi >= 0.4


def test_every_small_plot_catches_up_without_a_forced_redraw(dash, qtbot, tmp_path):
    # the throttled redraw paints half of the small plots per tick; after the last batch the other
    # half must still get its turn (scripted screenshots are taken with no flush)
    dash.tabs.setCurrentIndex(0)
    dash.handle_events(_stream(str(tmp_path / "run-c")))

    def drawn(name: str) -> int:
        items = dash.plots[name].getPlotItem().listDataItems()
        return max((len(i.getOriginalDataset()[0] if i.getOriginalDataset()[0] is not None else []) for i in items),
                   default=0)

    names = ["lr", "weight_decay", "throughput"] + [f"scalar/{k}" for k in dash.scalar_buffers]
    qtbot.waitUntil(lambda: all(drawn(n) == 60 for n in names), timeout=3000)


def test_new_scalar_plots_appear_one_per_redraw_without_a_forced_redraw(dash, qtbot):
    """A run's first metrics can bring several per-term scalars; their plots are created one per
    redraw tick (five at once stalled the GUI for ~0.5 s) and all appear by themselves."""
    names = ["teacher_temp", "momentum", "entropy", "kl", "center_norm"]
    dash.handle_events([ev.RunStarted(0, run_dir="/tmp/r", method="dino", device="cpu", total_steps=10,
                                      steps_per_epoch=5, n_train=64, n_test=32, config={}, class_names=[]),
                        ev.StepMetrics(1, epoch=0, loss=1.0, lr=1e-3, weight_decay=0.04, images_per_s=10.0,
                                       scalars={k: 0.5 for k in names})])
    dash._redraw()  # the run's first curves are painted alone: no new plot in this tick
    assert sum(f"scalar/{k}" in dash.plots for k in names) == 0
    dash._redraw()
    assert sum(f"scalar/{k}" in dash.plots for k in names) == 1
    # the grid is shaped for all five at once: two rows of equal columns, no re-layout per plot
    assert dash.terms_grid.rowMinimumHeight(0) > 0 and dash.terms_grid.rowMinimumHeight(1) > 0
    qtbot.waitUntil(lambda: all(f"scalar/{k}" in dash.plots for k in names), timeout=10_000)
    dash.handle_events([ev.StepMetrics(2, epoch=0, loss=1.0, lr=1e-3, weight_decay=0.04, images_per_s=10.0,
                                       scalars={"a": 1.0, "b": 2.0})])
    dash.flush()  # exports and tests: everything at once
    assert "scalar/a" in dash.plots and "scalar/b" in dash.plots


def test_new_probe_tabs_appear_one_per_redraw_with_every_snapshot(dash, qtbot):
    """MultiMAE's four probes arrive in one batch: their tabs are made one per redraw (all in one
    handle_events stalled the GUI thread for 230 ms), and no snapshot that came meanwhile is lost."""
    names = ["reconstruction_depth", "reconstruction_seg", "cross_modal"]
    img = np.zeros((2, 8, 8, 3), np.uint8)
    dash.handle_events([ev.VisualProbe(10, probe=k, images={"original": img, "reconstruction": img})
                        for k in names])
    assert not any(k in dash.probe_views for k in names)  # handle_events only queues them
    dash._redraw()
    assert sum(k in dash.probe_views for k in names) == 1
    dash.handle_events([ev.VisualProbe(20, probe=k, images={"original": img, "reconstruction": img})
                        for k in names])
    qtbot.waitUntil(lambda: all(k in dash.probe_views for k in names), timeout=10_000)
    assert all([s.step for s in dash.probe_views[k].history.items] == [10, 20] for k in names)
    dash.clear()
    assert not any(k in dash.probe_views for k in names) and not dash._pending_probes


def test_a_redraw_makes_at_most_one_widget_and_then_nothing_else(dash, qtbot):
    """Per-term plots and probe tabs arriving together (a MultiMAE run's first seconds) are made
    one widget per redraw, plots first; such a redraw leaves the curves to the next one."""
    terms = ["loss_rgb", "loss_depth"]
    probes = ["reconstruction_depth", "cross_modal"]
    img = np.zeros((2, 8, 8, 3), np.uint8)
    dash.handle_events([ev.RunStarted(0, run_dir="/tmp/r", method="multimae", device="cpu", total_steps=10,
                                      steps_per_epoch=5, n_train=64, n_test=32, config={}, class_names=[]),
                        ev.StepMetrics(1, epoch=0, loss=1.0, lr=1e-3, weight_decay=0.04, images_per_s=10.0,
                                       scalars={k: 0.5 for k in terms})]
                       + [ev.VisualProbe(1, probe=k, images={"original": img, "reconstruction": img})
                          for k in probes])
    dash._redraw()  # the first curves alone
    for i in range(4):
        dash.handle_events([ev.StepMetrics(2 + i, epoch=0, loss=0.5, lr=1e-3, weight_decay=0.04,
                                           images_per_s=10.0, scalars={k: 0.4 for k in terms})])
        points = dash._loss_curve.raw.getData()[0]
        n_before = 0 if points is None else len(points)
        widgets = sum(f"scalar/{k}" in dash.plots for k in terms) + sum(k in dash.probe_views for k in probes)
        dash._redraw()
        widgets_after = sum(f"scalar/{k}" in dash.plots for k in terms) + sum(k in dash.probe_views for k in probes)
        assert widgets_after == widgets + 1
        points = dash._loss_curve.raw.getData()[0]
        assert (0 if points is None else len(points)) == n_before  # this redraw drew no curve
        if i == 1:  # the plots first, then the probe tabs
            assert all(f"scalar/{k}" in dash.plots for k in terms) and not any(k in dash.probe_views for k in probes)
    assert all(k in dash.probe_views for k in probes)
    dash._redraw()  # nothing left to make: the curves catch up
    assert len(dash._loss_curve.raw.getData()[0]) >= 5
