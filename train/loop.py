"""The one training loop (accelerate): mixed context windows, per-batch factor set, resumable.

Read top to bottom: optimizer + schedule → resume → for each optimizer step, accumulate
micro-batches (each tells the rotary which factor set its rows use: LongRoPE2 §3.3, short
rows keep the original RoPE, long rows the rescaled one) → clip → step → log → checkpoint.
Under N processes rank r takes global micro-batches r, r+N, …, so the data position is one
integer and a resumed run sees exactly the batches an uninterrupted one would. Under Ulysses
sequence parallelism (``train.sequence_parallel``) the unit is an SP group instead of a
process: the group's ranks take the same global micro-batch and each trains on its 1/N slice.
Only ``.loss`` of the model output is read (liger's fused linear cross-entropy returns no
logits); under ZeRO-3 and SP the loss comes from the body's hidden states and ``lm_head`` a slice
of tokens at a time (``train.tiled_loss``), reduced over the SP group. Every step's loss is its
mean TOKEN loss, over all its micro-batches and processes (``_forward_loss``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from longctx.data.packing import attention_mask_4d, flash_varlen_kwargs
from longctx.data.samples import IGNORE_INDEX
from longctx.errors import LongctxError
from longctx.rope import set_factor_set
from longctx.train import sequence_parallel as sp
from longctx.train.checkpoint import list_checkpoints, load_latest, save_checkpoint
from longctx.train.recipe import TrainStage
from longctx.train.tiled_loss import Teacher, causal_lm, causal_lm_loss_sum, hidden_loss_sum, through_wrapper


class TrainingError(LongctxError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    losses: list[float]
    tokens: int
    seconds: float
    resumed_from: int | None
    model: torch.nn.Module
    """The prepared model (DDP / DeepSpeed engine): what ``accelerator.get_state_dict`` needs."""


def _scheduler(cfg: TrainStage, optimizer):
    name = {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}[
        cfg.schedule
    ]
    extra = {"min_lr_rate": cfg.min_lr_ratio} if cfg.schedule == "cosine" else None
    return get_scheduler(name, optimizer, cfg.warmup_steps, cfg.steps, scheduler_specific_kwargs=extra)


def model_inputs(batch: dict, varlen: bool) -> dict:
    """What the model's forward needs: packed rows with documents kept apart.

    ``varlen`` (flash-attention, or SDPA through :data:`train.attention.SEGMENTS`): the batch
    flattened to one sequence with ``cu_seq_lens``, no mask tensor; otherwise (eager, SDPA on
    models without AttentionInterface): an ADDITIVE float block-diagonal causal mask (eager adds
    the mask to the scores, so a bool mask would block nothing). ``use_cache=False``: with a
    cache transformers no longer derives document boundaries, and training needs none.
    """
    if varlen:
        return {**flash_varlen_kwargs(batch), "use_cache": False}
    inputs = {k: batch[k] for k in ("input_ids", "labels", "position_ids")}
    if not _one_document_per_row(batch["doc_ids"]):
        inputs["attention_mask"] = attention_mask_4d(batch["doc_ids"])  # [batch, 1, seq, seq]
    return {**inputs, "use_cache": False}


def _one_document_per_row(doc_ids: torch.Tensor) -> bool:
    """Rows of one document (+ trailing padding) need only the causal mask: SDPA's fast path.

    Padding comes last and is never a label, so under causal attention no real token sees it.
    """
    real = doc_ids >= 0  # [batch, seq]; padding is PAD_DOC_ID = -1
    first = doc_ids[:, :1]
    return bool(((doc_ids == first) | ~real).all()) and bool(real[:, 0].all())


def _configure_accumulation(accelerator: Accelerator, cfg: TrainStage, dp_size: int, rows: int) -> None:
    """This stage's accumulation (and, under DeepSpeed, micro-batch and clipping) settings.

    DeepSpeed reads them from its config when the engine is built, so they are set before
    ``prepare`` for every training stage (a recipe's stages may differ). ``rows``: the batch
    dimension the model sees (1 when a micro-batch is flattened to one sequence under Ulysses:
    DeepSpeed's attention wrapper checks it).
    """
    accelerator.gradient_accumulation_steps = cfg.grad_accum
    accelerator.step = 0  # accumulation boundaries count from this stage's first micro-batch
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["gradient_accumulation_steps"] = cfg.grad_accum
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = rows
        plugin.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm
        plugin.deepspeed_config["train_batch_size"] = rows * cfg.grad_accum * dp_size
        if accelerator.mixed_precision in ("bf16", "fp16"):
            # DeepSpeed's half mode keeps fp32 master weights; gradients accumulate in fp32 too
            plugin.deepspeed_config.setdefault("data_types", {})["grad_accum_dtype"] = "fp32"


def _own_batches(batches_from: Callable[[int], Iterator[dict]], start: int, layout: sp.SPLayout):
    """This data-parallel slot's share of the global micro-batch stream, from global index ``start``
    (a process's without sequence parallelism; its SP group's, shared by the group's ranks, with it)."""
    for index, batch in enumerate(batches_from(start), start=start):
        if index % layout.dp_size == layout.dp_rank:
            yield batch


def label_tokens(batch: dict, varlen: bool) -> int:
    """Tokens a micro-batch's loss counts: labels after the causal shift, as transformers' loss
    shifts the rows it is given (``model_inputs``), without the ignored ones."""
    labels = model_inputs(batch, varlen)["labels"] if varlen else batch["labels"]
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def _forward_loss(
    model,
    batch: dict,
    layout: sp.SPLayout,
    varlen: bool,
    device,
    step_tokens: torch.Tensor,
    tiled: bool,
    unwrapped,
    retention: Retention | None = None,
) -> torch.Tensor:
    """The micro-batch's share of the step's token-weighted loss: (sum of its token losses) /
    (tokens of the whole optimizer step, over every micro-batch and process). Summed over the
    step's micro-batches and processes this is the step's mean token loss, whatever the rows'
    lengths: a token of an 8k row weighs what a token of a 128k row does."""
    teacher = _teacher(retention, batch, layout, varlen, device)
    if layout.size == 1:
        inputs = {
            k: v.to(device) if torch.is_tensor(v) else v for k, v in model_inputs(batch, varlen).items()
        }
        if tiled or teacher is not None:  # ZeRO-3 (the head's weight is a shard, liger cannot fuse)
            # or a retention term: slices of logits only; through the engine's forward, where
            # ZeRO-3 counts micro-steps (gradient accumulation)
            return (
                through_wrapper(
                    model, unwrapped, lambda: causal_lm_loss_sum(unwrapped, inputs, teacher=teacher)[0]
                )
                / step_tokens
            )
        return model(**inputs, num_items_in_batch=step_tokens).loss  # transformers: sum / num_items_in_batch
    part = sp.shard(batch, layout.rank, layout.size, varlen=varlen)
    # no attention_mask: Ulysses drops masks built for a shard; documents are kept apart by the
    # whole sequence's cu_seq_lens, read by the core attention after the all-to-all (sp.shard)
    inputs = {"input_ids": part["input_ids"].to(device), "position_ids": part["position_ids"].to(device)}
    inputs |= {k: v.to(device) if torch.is_tensor(v) else v for k, v in part.get("varlen", {}).items()}
    # the shard's logits are taken a slice at a time
    total = through_wrapper(
        model,
        unwrapped,
        lambda: hidden_loss_sum(
            unwrapped, {**inputs, "use_cache": False}, part["shift_labels"], teacher=teacher
        ),
    )
    return sp.group_sum(total, sp.sp_group()) / step_tokens


@dataclass(frozen=True)
class Retention:
    """Short-context retention (``finetune`` ``retention``): on original-RoPE rows the loss adds
    ``weight`` × KL(frozen starting model ‖ trained model) per counted token."""

    model: torch.nn.Module
    """The frozen starting model (compute dtype, eval mode, original RoPE), outside any engine."""
    weight: float


def _teacher(
    retention: Retention | None, batch: dict, layout: sp.SPLayout, varlen: bool, device
) -> Teacher | None:
    """The frozen model's last hidden states on a short micro-batch, laid out as the trained
    model's inputs (flattened under ``varlen``, this rank's slice under sequence parallelism).

    The teacher runs on the whole rows with a block mask (``model_inputs(varlen=False)``), whatever
    the trained model's attention: short rows are ≤ L, and a teacher outside the engine never
    enters Ulysses' all-to-all."""
    if retention is None or batch["row_kind"] != "original":
        return None
    inputs = model_inputs(batch, varlen=False)
    inputs.pop("labels")
    lm = causal_lm(retention.model)
    with torch.no_grad():
        hidden = lm.model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()})
        hidden = hidden.last_hidden_state  # [batch, seq, h]
    if varlen:
        hidden = hidden.reshape(1, -1, hidden.shape[-1])
    if layout.size > 1:
        hidden = sp.shard_of(hidden, layout.rank, layout.size)
    return Teacher(lm.lm_head, hidden, retention.weight)


def _log(metrics_file: Path, record: dict, accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        with metrics_file.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        accelerator.log(record, step=record["step"])


def _truncate_metrics(metrics_file: Path, step: int) -> None:
    """On resume drop records after the restored step, so the log never repeats a step."""
    if metrics_file.exists():
        keep = [line for line in metrics_file.read_text().splitlines() if json.loads(line)["step"] <= step]
        metrics_file.write_text("".join(line + "\n" for line in keep))


@dataclass
class _StepRunner:
    """One optimizer step's micro-batches: forward, backward, clip, step (accelerate decides the
    accumulation boundary; DeepSpeed steps its engine there)."""

    model: torch.nn.Module
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    accelerator: Accelerator
    cfg: TrainStage
    layout: sp.SPLayout
    varlen: bool
    tiled: bool
    retention: Retention | None

    def __call__(self, micro: list[dict], where: str, last_good) -> tuple[float, int]:
        """(this process's share of the step's mean token loss, tokens it trained on)."""
        acc, layout = self.accelerator, self.layout
        # the step's label tokens over every process (an SP group's ranks share their rows)
        counted = torch.tensor(float(sum(label_tokens(b, self.varlen) for b in micro)), device=acc.device)
        counted = (acc.reduce(counted, "sum") / layout.size).clamp(min=1)
        step_loss, step_tokens = 0.0, 0
        for batch in micro:
            # the GLOBAL row's kind, before any SP slicing: every shard uses the row's factor set
            set_factor_set(self.unwrapped, batch["row_kind"])
            with acc.accumulate(self.model):
                loss = _forward_loss(self.model, batch, layout, self.varlen, acc.device, counted, self.tiled,
                                     self.unwrapped, self.retention)  # fmt: skip
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{where}: loss is {loss.item()} (row kind {batch['row_kind']}); stopped. "
                        f"Last good checkpoint: {last_good or 'none'}. Lower lr or check the data."
                    )
                # DDP / DeepSpeed average gradients over the data-parallel ranks and accelerate
                # divides by grad_accum: undo both, so the step's gradient is that of its mean token loss
                acc.backward(loss * layout.dp_size * self.cfg.grad_accum)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            step_loss += loss.item()
            step_tokens += int(batch["input_ids"].numel())
        return step_loss, step_tokens


def train_loop(
    model: torch.nn.Module,
    batches_from: Callable[[int], Iterator[dict]],
    cfg: TrainStage,
    stage_dir: Path,
    accelerator: Accelerator,
    varlen: bool = False,
    sequence_parallel: int = 1,
    tiled_loss: bool = False,
    retention: Retention | None = None,
) -> TrainResult:
    """``tiled_loss``: the loss from the model body's hidden states and ``lm_head`` a slice of
    tokens at a time (``train.tiled_loss``; ZeRO-3). Under sequence parallelism it always is."""
    layout = sp.SPLayout.of(accelerator.process_index, accelerator.num_processes, sequence_parallel)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    scheduler = _scheduler(cfg, optimizer)
    rows = 1 if varlen and layout.size > 1 else cfg.micro_batch_size  # sp.shard flattens
    _configure_accumulation(accelerator, cfg, layout.dp_size, rows)
    # the scheduler stays ours (accelerate's wrapper would step it once per process) and is
    # checkpointed by us: accelerate's registrations would outlive this stage
    model, optimizer = accelerator.prepare(model, optimizer)
    ckpt_root, metrics_file = stage_dir / "checkpoints", stage_dir / "metrics.jsonl"
    state = load_latest(accelerator, ckpt_root, stage=stage_dir.name, scheduler=scheduler)
    step = state["step"] if state else 0
    losses: list[float] = state["losses"] if state else []
    tokens = state["tokens"] if state else 0
    resumed_from = step if state else None
    if state and accelerator.is_main_process:
        _truncate_metrics(metrics_file, step)
    per_step = cfg.grad_accum * layout.dp_size  # global micro-batches per optimizer step
    stream = _own_batches(batches_from, step * per_step, layout)
    model.train()
    unwrapped = accelerator.unwrap_model(model)
    bar = tqdm(total=cfg.steps, initial=step, desc=stage_dir.name, disable=not accelerator.is_main_process)
    started, run_tokens = time.perf_counter(), 0
    last_good = (list_checkpoints(ckpt_root) or [None])[-1]
    run = _StepRunner(model, unwrapped, optimizer, accelerator, cfg, layout, varlen, tiled_loss, retention)
    while step < cfg.steps:
        micro = [next(stream) for _ in range(cfg.grad_accum)]
        step_loss, step_tokens = run(micro, f"{stage_dir.name}: at step {step + 1}", last_good)
        scheduler.step()
        step += 1
        # each process holds its micro-batches' shares of the step's mean token loss (an SP group's
        # ranks the same shares): the sum over processes / SP size is the step's mean token loss
        step_loss = (
            accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "sum").item() / layout.size
        )
        losses.append(step_loss)
        tokens += step_tokens * layout.dp_size
        run_tokens += step_tokens * layout.dp_size
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{run_tokens / (time.perf_counter() - started):.0f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0], "tokens": tokens}
            _log(metrics_file, record, accelerator)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            state = {"losses": losses, "tokens": tokens, "data_position": step * per_step}
            last_good = save_checkpoint(
                accelerator,
                ckpt_root,
                step,
                state,
                cfg.keep_checkpoints,
                stage=stage_dir.name,
                scheduler=scheduler,
            )
    bar.close()
    model.eval()
    final = losses[-1] if losses else math.nan
    return TrainResult(cfg.steps, final, losses, tokens, time.perf_counter() - started, resumed_from, model)
