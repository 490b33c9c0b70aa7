"""Training loops: SimSiam pretraining of the shared encoder, localization and identification U-Nets.

Each task writes into `<out>/<task>/`: `last.pt` (model, optimizer, step, elapsed seconds, RNG
state; rewritten every `checkpoint_every` steps and at the end, atomically) and `log.jsonl` (one
JSON object per logged step: step, lr, losses, seconds). Re-running the same command resumes from
`last.pt`; a finished task (`done` in the checkpoint) is not retrained.

The learning rate follows a cosine from `lr` to `lr * min_lr_frac` over the progress fraction
max(step / steps, elapsed / max_minutes): a wall-time-limited run still anneals fully
(`"schedule": "step"`: the paper's decay, x `lr_gamma` every `lr_step` steps).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vertedge.atomic import atomic_path

from .config import TaskConfig, TrainConfig
from .data import CLASSES, BatchSettings, Pool, cache_folder, sample_batch
from .losses import SequenceLoss, heatmap_loss, id_loss
from .nets import SimSiam, UNet

TASKS = ("pretrain", "loc", "id")


def build_net(task: str, cfg: TrainConfig) -> torch.nn.Module:
    """The network of a task from the config's `net` section."""
    base, levels, kind = cfg.net.base, cfg.net.levels, cfg.net.kind
    if task == "pretrain":
        return SimSiam(base, levels, cfg.pretrain.proj_dim, cfg.pretrain.pred_dim, kind=kind)
    if task == "loc":
        return UNet(1, base, levels, softmax=False, kind=kind)
    if task == "id":
        return UNet(1 + len(CLASSES), base, levels, softmax=True, kind=kind, context=cfg.id.context_dilations)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(out: str | os.PathLike[str], task: str) -> dict[str, Any] | None:
    """The last checkpoint of a task under `out`, or None."""
    p = Path(out) / task / "last.pt"
    return torch.load(p, map_location="cpu", weights_only=False) if p.exists() else None


def trained_model(out: str | os.PathLike[str], task: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained net of 'loc' or 'id' (eval mode) and its checkpoint (with the config)."""
    ck = load_checkpoint(out, task)
    if ck is None:
        raise FileNotFoundError(f"{Path(out) / task / 'last.pt'}: no checkpoint")
    net = build_net(task, TrainConfig.from_dict(ck["config"]))
    net.load_state_dict(ck["model"])
    return net.eval(), ck


def _optimizer(net: torch.nn.Module, t: TaskConfig) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def _lr(t: TaskConfig, progress: float, step: int = 0) -> float:
    """Cosine over the progress fraction, or the paper's step decay (x lr_gamma every lr_step steps)."""
    if t.schedule == "step":
        return t.lr * t.lr_gamma ** (step // t.lr_step)
    progress = min(max(progress, 0.0), 1.0)
    lo = t.lr * t.min_lr_frac
    return lo + 0.5 * (t.lr - lo) * (1 + math.cos(math.pi * progress))


def _pool(cfg: TrainConfig, log) -> Pool:
    folder = cache_folder(cfg.data.cache, cfg.protocol, cfg.data.size_range)
    pool = Pool(folder)
    min_items = cfg.data.min_items
    waited = 0
    while len(pool) < min_items:
        if waited == 0:
            log(f"[data] waiting for cached samples in {folder} ({len(pool)}/{min_items}); "
                "run `vertedge-train render` to fill it")
        time.sleep(10)
        waited += 10
        pool.refresh()
        if waited > 3600:
            raise RuntimeError(f"no training samples appeared in {folder}")
    log(f"[data] {len(pool)} cached samples in {folder}")
    return pool


def _tensor(x: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t if device is None else t.to(device, non_blocking=True)


def _initialise(task: str, net: torch.nn.Module, init: str, out: str | os.PathLike[str], log) -> None:
    """A new task net's starting weights: a checkpoint file (`init` ends in .pt; tensors it lacks stay
    new), the encoder of the run's SimSiam pretraining (`init` = "pretrain"), or random."""
    if init.endswith(".pt"):
        src = torch.load(init, map_location="cpu", weights_only=False)
        missing, _unexpected = net.load_state_dict(src["model"], strict=False)
        log(f"[{task}] initialised from {init} (step {src.get('step')}); new: {len(missing)} tensors")
    elif init == "pretrain":
        pre = load_checkpoint(out, "pretrain")
        if pre is None:
            log(f"[{task}] no pretraining checkpoint: encoder from scratch")
            return
        enc = {k[len("encoder."):]: v for k, v in pre["model"].items() if k.startswith("encoder.")}
        net.get_submodule("encoder").load_state_dict(enc)
        log(f"[{task}] encoder initialised from SimSiam pretraining ({pre['step']} steps)")


def _device(name: str) -> torch.device:
    """"cpu", "cuda", or "auto" (CUDA when torch sees a GPU)."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _freeze_batchnorm(net: torch.nn.Module) -> None:
    """Keep every BatchNorm's statistics and affine weights as initialised: a fine-tune's few real
    scans must not replace the statistics the net was trained with (see from_onnx)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval().requires_grad_(False)


def _batch_loss(task: str, net: torch.nn.Module, b: dict[str, Any], device: torch.device, cfg: TrainConfig,
                seq: SequenceLoss | None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (`data.sample_batch`) and its parts for the log."""
    t = cfg.task(task)
    x = _tensor(b["x"], device)
    if isinstance(net, SimSiam):
        loss = net.loss(x, _tensor(b["x2"], device))
        return loss, {"loss": float(loss.detach())}
    assert isinstance(net, UNet)
    logits = net.forward_logits(x)
    if task == "loc":
        loss = heatmap_loss(logits, _tensor(b["heatmap"], device), cfg.heatmap.amplitude, t.fg_weight)
        return loss, {"loss": float(loss.detach())}
    return id_loss(logits, _tensor(b["target"], device), b["boxes"], seq, t.bg_weight, t.seq_gamma)


def run_task(task: str, cfg: TrainConfig, out: str | os.PathLike[str], log=print,
             pool: Pool | None = None, steps: int | None = None) -> dict[str, Any]:
    """Train (or resume) one task; returns the final checkpoint dict."""
    t = cfg.task(task) if steps is None else replace(cfg.task(task), steps=int(steps))
    torch.set_num_threads(cfg.threads)
    folder = Path(out) / task
    folder.mkdir(parents=True, exist_ok=True)
    ck_path = folder / "last.pt"
    net = build_net(task, cfg)
    opt = _optimizer(net, t)
    step, elapsed = 0, 0.0
    rng = np.random.default_rng([cfg.seed, TASKS.index(task)])
    torch.manual_seed(cfg.seed * 10 + TASKS.index(task))
    ck = load_checkpoint(out, task)
    if ck is not None:
        if ck.get("done"):
            log(f"[{task}] already done ({ck['step']} steps); remove {ck_path} to retrain")
            return ck
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, elapsed = int(ck["step"]), float(ck["elapsed"])
        rng.bit_generator.state = ck["rng"]
        log(f"[{task}] resumed at step {step} ({elapsed / 60:.1f} min so far)")
    elif task != "pretrain":
        _initialise(task, net, t.init, out, log)
    device = _device(cfg.device)
    net.to(device)
    for st in opt.state.values():  # a resumed optimizer's moments follow the net
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)
    if pool is None:
        pool = _pool(cfg, log)
    seq = None
    if task == "id":
        seq = SequenceLoss(CLASSES, t.seq_alpha, t.seq_beta).to(device)
    settings = BatchSettings(cfg.augment, cfg.heatmap, cfg.square_mm, cfg.focus, t.variant_boost, cfg.data.real_fraction)
    crop = (int(t.crop[0]), int(t.crop[1]))
    max_s = t.max_minutes * 60.0
    net.train()
    if t.freeze_bn:
        _freeze_batchnorm(net)
    logf = open(folder / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed after the loop
    run_avg: dict[str, float] = {}

    def save(done: bool) -> dict[str, Any]:
        state = {"task": task, "model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "elapsed": elapsed, "rng": rng.bit_generator.state, "config": cfg.to_dict(), "done": done, "device": device.type,
                 "n_samples": len(pool)}
        _save(ck_path, state)
        return state

    t_last = time.time()
    while step < t.steps and elapsed < max_s:
        progress = max(step / t.steps, elapsed / max_s)
        lr = _lr(t, progress, step)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % cfg.data.refresh_every == 0 and step > 0:
            pool.refresh()
        b = sample_batch(pool, t.batch, crop, rng, {"pretrain": "pair", "loc": "loc", "id": "id"}[task], settings)
        loss, parts = _batch_loss(task, net, b, device, cfg, seq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        now = time.time()
        elapsed += now - t_last
        t_last = now
        for k, v in parts.items():
            run_avg[k] = v if k not in run_avg else 0.9 * run_avg[k] + 0.1 * v
        if step % t.log_every == 0 or step == t.steps:
            rec = {"step": step, "lr": lr, "elapsed_s": round(elapsed, 1), "samples": len(pool), **parts,
                   **{f"avg_{k}": round(v, 5) for k, v in run_avg.items()}}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log(f"[{task}] step {step}/{t.steps} lr {lr:.2e} " + " ".join(f"{k} {v:.4f}" for k, v in run_avg.items())
                + f" ({elapsed / 60:.1f} min, {len(pool)} samples)")
        if step % t.checkpoint_every == 0:
            save(False)
    state = save(True)
    logf.close()
    log(f"[{task}] done: {step} steps in {elapsed / 60:.1f} min")
    return state
