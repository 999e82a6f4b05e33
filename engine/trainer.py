"""The trainer: one loop for every method, driven by control calls, observed through events.

One training step (see docs/ARCHITECTURE.md):

    uint8 batch on device  --BatchStream.batch(epoch, i)-->  [B, 3, H, W] uint8
    GPUAugment(x, gen)     -->  views: list of [B, 3, s, s] float (global crops, then local)
    method.training_step   -->  StepOutput(loss, scalars)       (bf16 autocast on CUDA)
    backward, clip, optimiser step, method.after_optimizer_step  (EMA, queues)
    every log_every steps: one host sync -> StepMetrics event (loss, lr, images/s, scalars)

Control (thread-safe, cooperative, applied between steps): ``pause()``,
``resume()``, ``stop()``, ``set_param(key, value)``. ``run()`` blocks the calling
thread (the studio calls it from a worker thread) and emits events to listeners.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import ValidationError

from . import events as ev
from .augment import GPUAugment
from .checkpoint import config_differences, load_checkpoint, save_checkpoint
from .compiling import Compiled, compile_units
from .config import OptimConfig, RunConfig, live_keys, total_steps, validate_config
from .data import DataSplits, load_dataset
from .data.stream import BatchStream
from .errors import Cancelled, CheckpointError, ConfigError, DataError, TrainingError, UserError
from .methods import create_method, get_method
from .methods.base import Batch, Method
from .evaluation import knn_evaluate, standardize_features
from .monitors import collapse_indicators
from .optim import build_optimizer, cosine_schedule, peak_lr, set_lr_wd, warmup_steps
from .preflight import check_crops, crop_size, known_image_size, preflight
from .probes import save_probe
from .rundir import prepare_run_dir


def _dotted(d: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' requested but CUDA is not available here; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA devices)")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        listeners: tuple[Callable[[ev.Event], None], ...] = (),
        data: DataSplits | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_path = Path(run_dir)
        self.resume_requested = resume
        self.overwrite = overwrite
        self.bus = ev.EventBus()
        for fn in listeners:
            self.bus.subscribe(fn)
        self._data = data
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._changes: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._live_keys = set(live_keys(cfg))
        self.step = 0
        self.live: dict[str, Any] = {}
        self.best_knn: float | None = None
        self.last_knn: float | None = None
        self._saved_at = self._evaluated_at = self._probed_at = -1  # steps of the last of each
        self.status = "created"
        self._started = False  # RunStarted emitted (a resume that fails before keeps run.json as it was)
        self._paused_s = 0.0  # time spent paused (the time limit counts training time only)
        self._reset_acc()

    # ----------------------------------------------------------- control API
    def subscribe(self, fn: Callable[[ev.Event], None]) -> Callable[[], None]:
        return self.bus.subscribe(fn)

    def pause(self) -> None:
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def stop(self) -> None:
        self._stop.set()
        self._pause.clear()

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    def set_param(self, key: str, value: Any) -> None:
        """Queue a live change; validated now (ConfigError), applied before the next step."""
        if key not in self._live_keys:
            raise ConfigError(
                f"'{key}' cannot change during a run; live settings: {', '.join(sorted(self._live_keys))}"
            )
        section, name = key.split(".", 1)
        try:
            if section == "optim":
                checked = OptimConfig(**{**self.cfg.optim.model_dump(), name: value})
            else:
                checked = get_method(self.cfg.method).Params(**{**self.cfg.params, **self.live_params(), name: value})
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"invalid value for '{key}': {err['msg']} (got {value!r})") from None
        self._changes.put((key, checked.model_dump(mode="json")[name]))  # plain, validated (checkpoint-safe)

    def live_params(self) -> dict[str, Any]:
        live = list(self.live.items())  # one atomic copy: the training thread may add keys meanwhile
        return {k.split(".", 1)[1]: v for k, v in live if k.startswith("params.")}

    # --------------------------------------------------------------- running
    def run(self) -> ev.Finished:
        """Train until done, stopped or failed. Emits Finished last; re-raises errors after emitting them."""
        t0 = time.time()
        self.status = "running"
        try:
            self._prepare()
            self._loop(t0)
            self._read_back()  # steps since the last read-back are checked before anything is saved
            status = "stopped" if self._stop.is_set() and self.step < self.total else "completed"
            self._final_save_and_eval()
            return self._finish(status, t0)
        except Cancelled:  # Stop pressed while the data were still loading: nothing to train or save
            self._emit(ev.RunWarning(self.step, message="stopped while loading the data; nothing was trained"))
            return self._finish("stopped", t0)
        except KeyboardInterrupt:
            self._fail(f"interrupted at step {self.step}; the last checkpoint is kept", "interrupted", t0)
            raise
        except UserError as e:
            self._fail(str(e), "input", t0)
            raise
        except torch.OutOfMemoryError:
            msg = (
                f"out of GPU memory at step {self.step} with batch size {self.cfg.train.batch_size}: "
                f"lower train.batch_size (e.g. --batch-size {max(2, self.cfg.train.batch_size // 2)}), "
                "the crop sizes or the model size; the last good checkpoint is kept"
            )
            self._fail(msg, "out_of_memory", t0)
            raise TrainingError(msg) from None
        except TrainingError as e:
            self._fail(str(e), "training", t0)
            raise
        except Exception as e:  # noqa: BLE001 - report every failure through the stream
            self._fail(f"{type(e).__name__}: {e}", "internal", t0)
            raise

    # ------------------------------------------------------------ internals
    def _emit(self, e: ev.Event) -> None:
        self.bus.emit(e)

    def _fail(self, message: str, kind: str, t0: float) -> None:
        self._emit(ev.Error(self.step, message=message, error_type=kind))
        self._finish("failed", t0, error=message)

    def _finish(self, status: str, t0: float, error: str | None = None) -> ev.Finished:
        self.status = status
        fin = ev.Finished(self.step, status=status, seconds=time.time() - t0, knn_top1=self.last_knn)
        try:
            if self._started or not self.resume_requested:  # a failed resume leaves run.json as it was
                self._write_summary(status, error)
        except OSError as e:  # the folder is gone or full: still end the stream and close the files
            self._emit(ev.RunWarning(self.step, message=f"could not write run.json: {e}"))
        finally:
            self._emit(fin)
            for close in getattr(self, "_closers", []):
                close()
            rd = getattr(self, "rd", None)
            if rd is not None:
                rd.release()
        return fin

    def _write_summary(self, status: str, error: str | None = None) -> None:
        rd = getattr(self, "rd", None)
        if rd is None or not rd.root.exists():
            return
        rd.write_summary({
            "status": status,
            "method": self.cfg.method,
            "dataset": self.cfg.data.source,
            "step": self.step,
            "total_steps": getattr(self, "total", None),
            "best_knn_top1": self.best_knn,
            "last_knn_top1": self.last_knn,
            "live": dict(self.live),  # settings changed during the run: their last values (config.yaml: the first)
            "error": error,
            "updated": time.time(),
        })

    def _prepare(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.train.device)
        state = None
        if self.resume_requested:
            rd = prepare_run_dir(self.run_path, resume=True, overwrite=False)
            rd.acquire()
            self.rd = rd
            state = load_checkpoint(self.rd.checkpoint)
            diffs = [
                d for d in config_differences(state["config"], cfg.model_dump(mode="json"))
                if d.split(":")[0] not in self._live_keys
            ]
            if diffs:
                raise CheckpointError(
                    "cannot resume: the config differs from the checkpoint's in " + "; ".join(diffs[:3])
                    + ("" if len(diffs) <= 3 else f" and {len(diffs) - 3} more")
                )
            if cfg.train.steps is not None and cfg.train.steps <= int(state["step"]):
                raise ConfigError(_nothing_to_resume(int(state["step"])))
        else:
            rd = prepare_run_dir(self.run_path, resume=False, overwrite=self.overwrite)
            rd.acquire()
            self.rd = rd
        # the run folder's own listeners
        writer = ev.JsonlWriter(str(self.rd.metrics))
        log = open(self.rd.events, "a", buffering=1)
        self._closers = [writer.close, log.close]
        self.bus.subscribe(writer)
        self.bus.subscribe(lambda e: _log_line(log, e))
        cfg.save(self.rd.config)

        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)

        # the setup's own checks first (a method refusing its encoder), before a load of minutes
        preflight(cfg, self._data.image_size if self._data is not None else known_image_size(cfg.data))
        # data
        data = self._data or load_dataset(cfg.data, should_stop=self._stop.is_set)
        self.data = data
        n_train = len(data.train)
        if n_train < cfg.train.batch_size:
            raise DataError(
                f"the training split has {n_train} images, fewer than the batch size "
                f"{cfg.train.batch_size}; lower --batch-size"
            )
        img = data.image_size
        check_crops(cfg, img)
        gsize = crop_size(cfg, img)
        for w in data.info.get("warnings", []):  # skipped files, resized images, no test split, no cache...
            self._emit(ev.RunWarning(0, message=w))
        self.total, self.spe = total_steps(cfg, n_train)
        if state is not None and self.total <= int(state["step"]):  # (an --epochs length, known only now)
            raise ConfigError(_nothing_to_resume(int(state["step"])))
        self.stream = BatchStream(data.train, cfg.train.batch_size, self.device, seed=cfg.train.seed,
                                  on_device=cfg.data.on_device)
        aug = cfg.aug
        if aug.local_crops.count and not get_method(cfg.method).uses_local_crops:  # e.g. a DINO preset's 6
            self._emit(ev.RunWarning(0, message=f"{cfg.method} uses no local crops: aug.local_crops.count="
                                                f"{aug.local_crops.count} is ignored (none are made)"))
            aug = aug.model_copy(update={"local_crops": aug.local_crops.model_copy(update={"count": 0})})
        self.augment = GPUAugment(aug, img)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.train.seed + 1)

        # model
        self.method: Method = create_method(cfg, gsize).to(self.device)
        self.method.setup(self.total, self.spe)
        self.cuda = self.device.type == "cuda"
        if self.cuda and cfg.train.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.autocast_dtype = (
            torch.bfloat16 if cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and self.cuda)
            else None
        )
        self.peak_lr = peak_lr(cfg.optim, cfg.train.batch_size)
        self.opt = build_optimizer(self.method, self.method.param_groups(), cfg.optim, self.peak_lr, self.device)
        self._plan_schedules()

        if state is not None:
            self._restore(state)
        self.compiled = Compiled(compile_units(self.method) if cfg.train.compile and _compile_applies(self.cuda)
                                 else [], cfg.train.compile_mode)
        self.compiled.compile()
        self.fixed_images = (data.test or data.train).images[:8].to(self.device)
        self._emit(ev.RunStarted(
            self.step, run_dir=str(self.rd.root), method=cfg.method, device=_device_name(self.device),
            total_steps=self.total, steps_per_epoch=self.spe, n_train=n_train,
            n_test=len(data.test) if data.test is not None else 0,
            config=cfg.model_dump(mode="json"), resumed=state is not None,
            class_names=list(data.classes)[:1000],
        ))
        self._started = True
        if state is None:
            for message in self.method.setup_warnings():
                self._emit(ev.RunWarning(self.step, message=message))
        self._write_summary("running")

    def _plan_schedules(self) -> None:
        o = self.cfg.optim
        start = self._schedule_start()
        n = self.total - start
        warm = warmup_steps(o, self.spe, n)
        # LR as a shape in [0, 1] times the (live-changeable) peak; 0 before the method's start
        floor = o.min_lr / self.peak_lr if self.peak_lr > 0 else 0.0
        self.lr_shape = np.concatenate([np.zeros(start), cosine_schedule(1.0, min(1.0, floor), n, warm)])
        self.wd_sched = self._wd_schedule(o.weight_decay)

    def _schedule_start(self) -> int:
        return min(max(0, int(self.method.schedule_start)), self.total - 1)

    def _wd_schedule(self, base: float) -> np.ndarray:
        """Weight decay per step: constant until the method's schedule start, then cosine to the end value."""
        start = self._schedule_start()
        end = base if self.cfg.optim.weight_decay_end is None else self.cfg.optim.weight_decay_end
        return np.concatenate([np.full(start, base), cosine_schedule(base, end, self.total - start)])

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.method.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
        self.step = int(state["step"])
        self.gen.set_state(state["gen_state"])
        torch.set_rng_state(state["torch_rng"])
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        best = state.get("best_knn")
        self.best_knn = best if best is not None and math.isfinite(best) else None  # (NaN in older checkpoints)
        saved_cfg = state.get("config") or {}
        now_cfg = self.cfg.model_dump(mode="json")
        for k, v in (state.get("live") or {}).items():
            if _dotted(now_cfg, k) != _dotted(saved_cfg, k):
                continue  # set explicitly for this resume (--set): the new value stands
            self._apply_change(k, v, emit=False)

    def _checkpoint(self) -> None:
        if not self.rd.config.exists():
            raise TrainingError(f"the run folder {self.rd.root} was removed or emptied during the run; "
                                "nothing more is saved there")
        params = [p for p in self.method.parameters()]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise TrainingError(
                f"the model's weights became NaN or infinite before step {self.step} (a non-finite gradient "
                "under a finite loss): lower optim.lr or enable gradient clipping (optim.clip_grad=3.0); "
                "the last good checkpoint is kept")
        state = {
            "model": self.method.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "gen_state": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None,
            "config": self.cfg.model_dump(mode="json"),
            "live": dict(self.live),
            "best_knn": self.best_knn,
            "method": self.cfg.method,
            "image_size": int(self.method.image_size),  # the crop size the model was built for
        }
        save_checkpoint(self.rd.checkpoint, state)
        self._saved_at = self.step
        self._emit(ev.CheckpointSaved(self.step, path=str(self.rd.checkpoint)))

    def _apply_change(self, key: str, value: Any, emit: bool = True) -> None:
        section, name = key.split(".", 1)
        if section == "optim":
            old = getattr(self.cfg.optim, name)
            setattr(self.cfg.optim, name, value)
            if name == "lr":
                self.peak_lr = peak_lr(self.cfg.optim, self.cfg.train.batch_size)
            elif name == "weight_decay":
                self.wd_sched = self._wd_schedule(value)
        else:
            old = self.method.set_live(name, value)
        self.live[key] = value
        if emit:
            self._emit(ev.LiveChange(self.step, key=key, old=old, new=value))

    def _wait_if_paused(self) -> None:
        if not self._pause.is_set():
            return
        self._emit(ev.StatusChanged(self.step, status="paused"))
        self._write_summary("paused")
        t_pause = time.time()
        while self._pause.is_set() and not self._stop.is_set():
            time.sleep(0.02)
            self._drain_changes()
        self._paused_s += time.time() - t_pause
        self._emit(ev.StatusChanged(self.step, status="stopping" if self._stop.is_set() else "running"))
        self._write_summary("running")

    def _drain_changes(self) -> None:
        while True:
            try:
                key, value = self._changes.get_nowait()
            except queue.Empty:
                return
            self._apply_change(key, value)

    def _loop(self, t0: float) -> None:
        cfg = self.cfg.train
        method, opt = self.method, self.opt
        method.train()
        self._reset_acc()
        last_probe = 0.0
        epoch_t = time.time()
        limit = cfg.time_limit_s
        while self.step < self.total:
            self._wait_if_paused()
            if self._stop.is_set():
                break
            self._drain_changes()
            step = self.step
            epoch, idx = divmod(step, self.spe)
            x, ids = self.stream.batch(epoch, idx)
            views = self.augment(x, generator=self.gen)
            if self.cuda and cfg.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            extras = self.stream.extras(ids) if hasattr(self.stream, "extras") else {}
            batch = Batch(views=views, images=x, n_global=self.augment.n_global, extras=extras)
            lr = self.peak_lr * float(self.lr_shape[step])
            wd = float(self.wd_sched[step])
            set_lr_wd(opt, lr, wd, self.peak_lr)

            def forward_backward():
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    o = method.training_step(batch, step)
                opt.zero_grad(set_to_none=True)
                o.loss.backward()
                return o

            out = self.compiled.guard(forward_backward, self._compile_fallback)
            if self.cfg.optim.clip_grad > 0:
                out.scalars.setdefault("grad_norm", clip_gradients(method, self.cfg.optim))
            opt.step()
            method.after_optimizer_step(step)
            self.step = step + 1
            self._accumulate(out, epoch, lr, wd)
            if out.pair is not None:
                self._last_pair = (out.pair[0].detach(), out.pair[1].detach())

            epoch_end = self.step % self.spe == 0
            last = self.step == self.total
            timed_out = limit is not None and time.time() - t0 - self._paused_s >= limit
            eval_due = not last and self._due(cfg.eval_every, epoch_end)
            ckpt_due = not last and self._due(cfg.ckpt_every, epoch_end)
            # metrics are read back every log_every steps, and before anything is saved
            if (self.step % cfg.log_every == 0 or last or epoch_end or timed_out or eval_due or ckpt_due
                    or self._stop.is_set()):
                self._read_back()
            if epoch_end:
                self._emit(ev.EpochEnd(self.step, epoch=epoch, seconds=time.time() - epoch_t))
                epoch_t = time.time()
            if eval_due:
                self.compiled.guard(self._evaluate, self._compile_fallback)
            if ckpt_due:
                self._checkpoint()
            if time.time() - last_probe >= cfg.probe_every_s:
                self.compiled.guard(self._probe, self._compile_fallback)
                last_probe = time.time()
            if timed_out:
                self._emit(ev.RunWarning(self.step, message=f"time limit of {limit:g} s reached"))
                self._stop.set()

    def _compile_fallback(self, message: str) -> None:
        self._emit(ev.RunWarning(self.step, message=message))

    # -------------------------------------------------- metrics read-back
    def _reset_acc(self) -> None:
        self._acc_loss: torch.Tensor | None = None  # sums on the device since the last read-back
        self._acc_scalars: dict[str, torch.Tensor] = {}
        self._acc_n = 0
        self._acc_t = time.time()

    def _accumulate(self, out, epoch: int, lr: float, wd: float) -> None:
        loss = out.loss.detach().float()
        self._acc_loss = loss if self._acc_loss is None else self._acc_loss + loss
        for k, v in out.scalars.items():
            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
            self._acc_scalars[k] = self._acc_scalars.get(k, 0) + v
        self._acc_n += 1
        self._acc_last = (epoch, lr, wd)

    def _read_back(self) -> None:
        """The one host sync every log_every steps (and before anything is saved): the mean loss
        since the last read-back must be finite; emits StepMetrics."""
        n = self._acc_n
        if n == 0 or self._acc_loss is None:
            return
        loss = (self._acc_loss / n).item()
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} near step {self.step}: lower optim.lr "
                f"(now {self.cfg.optim.lr}), enable gradient clipping (optim.clip_grad=3.0) "
                "or use fp32 (train.precision=fp32); the last good checkpoint is kept"
            )
        epoch, lr, wd = self._acc_last
        now = time.time()
        scalars = {k: (v / n).item() for k, v in self._acc_scalars.items()}
        self._last_scalars = scalars
        self._emit(ev.StepMetrics(
            self.step, epoch=epoch, loss=loss, lr=lr, weight_decay=wd,
            images_per_s=self.cfg.train.batch_size * n / max(1e-9, now - self._acc_t), scalars=scalars,
        ))
        self._reset_acc()

    def _due(self, every: int, epoch_end: bool) -> bool:
        return (every > 0 and self.step % every == 0) or (every == 0 and epoch_end)

    def _final_save_and_eval(self) -> None:
        """Checkpoint first (an evaluation that fails, e.g. out of memory, loses nothing), then
        evaluate; save again when the evaluation set a new best kNN (kept in the checkpoint)."""
        if self._saved_at != self.step:  # (a stop or the end on an evaluation step: done already)
            self._checkpoint()
        best = self.best_knn
        if self._evaluated_at != self.step:
            self.compiled.guard(self._evaluate, self._compile_fallback)
        if self.best_knn != best:
            self._checkpoint()
        if self._probed_at != self.step:  # the last snapshot shows the final model (step slider's end)
            self.compiled.guard(self._probe, self._compile_fallback)

    @torch.no_grad()
    def _evaluate(self) -> None:
        knn, emb, labels = knn_evaluate(self.method, self.data, self.cfg, self.device, self.autocast_dtype)
        if knn is None and not getattr(self, "_warned_nolabels", False):
            self._warned_nolabels = True
            self._emit(ev.RunWarning(self.step, message="no labels in the data (a flat folder, one class folder, "
                                                         "or no test split): kNN accuracy is not computed"))
        indicators = {}
        pair = getattr(self, "_last_pair", None)
        if pair is not None:
            indicators = collapse_indicators(pair[0].float(), pair[1].float())
        last = getattr(self, "_last_scalars", {})
        indicators.update({k: last[k] for k in self.method.indicator_scalars if k in last})
        if knn is not None and not math.isfinite(knn):  # a diverged network's features: no accuracy
            knn = None
        self.last_knn = knn
        if knn is not None and (self.best_knn is None or knn > self.best_knn):
            self.best_knn = knn
        self._evaluated_at = self.step
        self._emit(ev.Evaluation(self.step, knn_top1=knn, indicators=indicators, embedding=emb, labels=labels,
                                 knn_standardized=knn is not None and standardize_features(self.method, self.cfg)))
        self._write_summary("running")

    @torch.no_grad()
    def _probe(self) -> None:
        self._probed_at = self.step
        method = self.method
        was = method.training
        method.eval()
        try:
            results = method.probes(self.fixed_images)
        finally:
            method.train(was)
        for name, res in results.items():
            probe = ev.VisualProbe(self.step, probe=name, images=res.get("images", {}), meta=res.get("meta", {}))
            save_probe(self.run_path, probe)  # RUNDIR/probes/: the studio's step slider and reopened runs
            self._emit(probe)


def clip_gradients(model: torch.nn.Module, o: OptimConfig) -> torch.Tensor:
    """Clip to ``o.clip_grad``: the global norm, or each parameter's own norm (``per_param``, as
    DINO's ``utils.clip_gradients``). Returns the global norm before clipping (a tensor: no sync)."""
    if o.clip_mode == "global":
        return torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])  # [P]; one multi-tensor kernel on CUDA
    factors = torch.clamp(o.clip_grad / (norms + 1e-6), max=1.0)  # [P]: a few kernels, not one per parameter
    torch._foreach_mul_(grads, list(factors.unbind(0)))
    return torch.linalg.vector_norm(norms)


def _compile_applies(cuda: bool) -> bool:
    """train.compile takes effect on CUDA only (on the CPU compiling costs more than it saves)."""
    return cuda


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return "cpu"


def _nothing_to_resume(step: int) -> str:
    return (f"the run is already at step {step}: nothing to resume; give --steps (or --epochs) beyond it "
            "to train further")


def _log_line(f, e: ev.Event) -> None:
    if isinstance(e, (ev.StepMetrics, ev.VisualProbe)):
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
    d = e.to_json()
    d.pop("time", None)
    d.pop("config", None)
    kind = d.pop("event")
    step = d.pop("step")
    body = " ".join(f"{k}={v}" for k, v in d.items())
    if not f.closed:
        f.write(f"{stamp} step={step} {kind} {body}\n")


def load_run_config(run_dir: str | Path) -> RunConfig:
    from .config import load_yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    return validate_config(load_yaml(path))
