"""``python -m training.fit``: train a serdemo model; runs alone or under ``torchrun`` unchanged.

    python -m training.fit --config training/configs/default.yaml
    python -m training.fit --model cnnlstm --corpus emodb=../shared/data/emodb --label-set emodb7 \\
        --fold 0 --epochs 30 --out checkpoints/my-model
    torchrun --nproc-per-node=2 -m training.fit --config ...       # DDP: gloo on CPU, NCCL on GPU

Every setting is a field of :class:`training.config.FitConfig` (``--help`` lists them). Under DDP
every rank walks the same shuffled batches and takes a disjoint share of each, so ``batch_size`` is
the examples per step over all ranks and a recipe trains the same model on any number of them;
augmentation and dropout are seeded per rank. Every epoch writes ``OUT/last/`` (weights, card,
optimiser and RNG state: safetensors/JSON) for ``--resume``; the best epoch by dev UA is written to
``OUT/`` itself, which is what the app serves. ``OUT/progress.jsonl`` follows the run
(:mod:`training.progress`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from serdemo import encoders
from serdemo.checkpoint import save_checkpoint
from serdemo.encoding import FrontEnd
from serdemo.features import FeatureConfig, pad_batch
from serdemo.labels import AUX_HEADS, get_label_set
from serdemo.models import ARCHITECTURES, build_model, encoder_layers, uses_encoder
from serdemo.eta import ENCODE_S_PER_CLIP, FIRST_GUESS_S  # the ETA table, shared with the app
from training import data as D
from training import state as S
from training.augment import RANK_SEED_STRIDE, Augmenter
from training.batches import collate_states, pad_or_cut, time_masks
from training.checkpointing import TUNED_PREFIXES, Checkpointing
from training.config import FitConfig, parse_cli
from training.probe_fit import PROBE_FIT_S, ClosedFormFitter  # noqa: F401  (PROBE_FIT_S: the ETA's unit)
from training.progress import FILE as PROGRESS_FILE
from training.progress import Progress, append_jsonl
from training.scoring import Scoring

log = logging.getLogger("training.fit")
GRAD_CLIP = 5.0

__all__ = ["FitConfig", "Trainer", "main", "parse_args"]


# ------------------------------------------------------------------ set-up
def setup_distributed():
    """-> (rank, world, device). Uses torchrun's environment when present."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


# ------------------------------------------------------------------ the trainer
class Trainer(Scoring, Checkpointing):
    """Data, model and optimiser of one run on one rank; :meth:`fit` trains, :meth:`evaluate` scores.

    ``train``/``dev``/``test``: lists of :class:`training.data.Example`, speaker-disjoint.
    """

    def __init__(self, cfg: FitConfig, rank: int = 0, world: int = 1, device=None, data: D.Data | None = None,
                 resuming: bool = False, announce: bool = False):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.is_main = rank == 0
        # ``announce`` (the command line): the progress file starts with the run's first second, so the app has
        # a phase and an ETA at once; a Trainer built only to inspect data (evaluation, tests) writes nothing
        self.progress = Progress(Path(cfg.out) / PROGRESS_FILE, self.is_main and announce, append=resuming,
                                 epochs=cfg.epochs)
        self.progress.phase("reading the corpora", FIRST_GUESS_S.get(cfg.model, 300.0))
        S.seed_everything(cfg.seed)  # the split and the initial weights: the same on every rank
        self.features = FeatureConfig(**cfg.features)
        self.label_set = get_label_set(cfg.label_set)
        self.data = data if data is not None else D.Data(cfg, self.label_set)
        # an architecture fitted in one solve on per-clip statistics says so (closed_form); its own fitter runs it
        closed = getattr(ARCHITECTURES[cfg.model], "closed_form", False)
        self.closed_form = ClosedFormFitter(self) if closed else None
        self._take_data()
        self.progress.phase("preparing the encoder features" if self._on_encoder(cfg.model) else "preparing",
                            self.estimate_s(), store=self.data.store_report)

        self.init_seed = init_seed = cfg.seed if cfg.model_seed is None else cfg.model_seed
        if cfg.model_seed is not None:  # the split stays that of cfg.seed; weights and order follow model_seed
            S.seed_everything(init_seed)
        head_sizes = {h: (len(self.label_set) if h == "emotion" else len(AUX_HEADS[h])) for h in self.heads}
        self.hparams = dict(cfg.hparams)
        on_encoder = self._on_encoder(cfg.model)
        self.model = build_model(cfg.model, self.features.input_rows, head_sizes,
                                 input_frame_rate_hz=self.features.frame_rate_hz,
                                 **(dict(self.hparams, encoder=encoders.info(cfg.encoder)) if on_encoder
                                    else dict(self.hparams, norm=cfg.norm))).to(self.device)
        if not uses_encoder(self.model):
            self.hparams["norm"] = cfg.norm
        self.encoder = encoders.load(cfg.encoder) if uses_encoder(self.model) else None
        if self.encoder is not None and cfg.vtlp and self.closed_form is None and self.is_main:
            # the encoder's states are cached once per clip at alpha 1: VTLP reaches log-mel models only
            log.warning("vtlp is on but has no effect on a model on the encoder (its states are cached at alpha 1); "
                        "set vtlp: false in the recipe, or screen warped copies with training.evaluate --screen")
        if self.encoder is not None and self.features != self.encoder.info.features:
            raise SystemExit("models on the pretrained encoder use its front end: drop 'features' from the recipe")
        self.frontend = FrontEnd(self.features, None).to(self.device)  # log-mel models; the encoder's come cached
        self.n_states = encoder_layers(self.model) + 1  # the cached states the model reads
        if self.hparams.get("tune_layers") and not hasattr(self.model, "start_from"):
            raise SystemExit(f"tune_layers: {cfg.model} has no encoder blocks of its own to fine-tune "
                             "(localatt and multitask do)")
        if getattr(self.model, "tune_layers", 0):  # fine-tuning the top blocks: they start as the pretrained ones
            self.model.start_from(self.encoder)
        if cfg.init:
            self._init_from(cfg.init)
        if cfg.norm == "global" and not uses_encoder(self.model):  # after --init: this training set's statistics
            self._set_global_stats()
        class_w = D.class_weights(self.train, len(self.label_set))
        self.class_w, self.class_w_list = class_w.to(self.device), class_w.tolist()
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.net = self.model
        if world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.augment and not uses_encoder(self.model):
            # the speech detector re-runs on augmented waves; build it now: building it draws from the
            # global generator, which must hold only the run's own draws (a resumed run would differ)
            from serdemo.vad import default_detector

            default_detector()
        # from here on each rank draws its own augmentation and dropout
        rank_seed = init_seed + RANK_SEED_STRIDE * rank
        S.seed_everything(rank_seed)
        self.aug = Augmenter(cfg, self.features.sample_rate, rank_seed)
        self.start_epoch, self.best_ua, self.best_epoch, self.bad_epochs = 0, -1.0, -1, 0
        self.history: list[dict] = []
        self.resumed = False

    @cached_property
    def lengths(self) -> list[int]:
        """Each training clip's length in samples (the gradient loop batches similar lengths together); read
        on first use, so a closed-form fit never holds the waves in memory."""
        return [len(self.data.wave(e)) for e in self.train]

    @cached_property
    def opt(self) -> torch.optim.Optimizer:
        """Built on first use: the probe is fitted in one step and never needs one (building it imports
        torch's compiler stack, a second of start-up for every retraining run)."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        tuned = [p for n, p in named if n.startswith(TUNED_PREFIXES)]
        groups = [{"params": [p for n, p in named if not n.startswith(TUNED_PREFIXES)], "scale": 1.0}]
        if tuned:  # the fine-tuned encoder blocks move at a fraction of the head's rate
            groups.append({"params": tuned, "scale": self.cfg.encoder_lr})
        return torch.optim.AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _live_progress(self) -> Progress:
        """The run's progress file (opened now when the constructor did not announce the run)."""
        if not self.progress.enabled and self.is_main:
            self.progress = Progress(Path(self.cfg.out) / PROGRESS_FILE, True, append=self.resumed,
                                     epochs=self.cfg.epochs)
        return self.progress

    def estimate_s(self) -> float:
        """Seconds the rest of the run should take on a 2-core CPU (measured: README "Retraining"), from
        the data sizes: cached encoder states load fast, a clip not yet encoded costs an encoder pass."""
        n = len(self.train) + len(self.dev) + len(self.test)
        if not self._on_encoder(self.cfg.model):
            return n * 0.05 * self.cfg.epochs
        new = self.data.uncached_count()
        load = 0.004 * n + ENCODE_S_PER_CLIP * new
        if self.closed_form is not None:
            return self.closed_form.estimate_s(load, n)
        # each fine-tuned encoder block: x2.45 an epoch's time (20 steps + the dev pass of localatt on this CPU:
        # 8 s frozen, 21 s with one tuned block, 31 s with two)
        return load + self.cfg.epochs * 0.006 * n * (1 + 1.45 * int(self.cfg.hparams.get("tune_layers") or 0))

    @staticmethod
    def _on_encoder(architecture: str) -> bool:
        return getattr(ARCHITECTURES[architecture], "input_kind", "logmel") == "encoder"

    def _take_data(self) -> None:
        d = self.data
        self.train, self.dev, self.test = d.train, d.dev, d.test
        self.corpus_reports, self.dropped = d.corpus_reports, d.dropped
        self.heads, self.untrained_heads = d.heads, d.untrained_heads
        self.file_list_sha256 = d.file_list_sha256
        self.cache = d.cache
        n_classes = len(self.label_set)
        # per corpus, the emotion classes its training clips have (cfg.corpus_classes masks the rest)
        self.corpus_classes: dict[str, torch.Tensor] = {}
        for e in self.train:
            m = self.corpus_classes.setdefault(e.utt.corpus, torch.zeros(n_classes, dtype=torch.bool))
            if e.targets["emotion"] != D.IGNORE:
                m[e.targets["emotion"]] = True
        for h, why in self.untrained_heads.items():
            if self.is_main:
                log.warning("dropping head %s: %s", h, why)

    @torch.no_grad()
    def _set_global_stats(self) -> None:
        """Per-row mean and std of the (unwarped) training log-mel into the model's InputNorm."""
        total, sq, n = 0.0, 0.0, 0
        for i in range(0, len(self.train), 32):
            exs = self.train[i:i + 32]
            x, lens, _ = self.inputs(exs)
            real = (torch.arange(x.shape[2], device=self.device)[None] < lens[:, None])
            f = x.double().transpose(1, 2)[real]  # (real frames, rows)
            total, sq, n = total + f.sum(0), sq + f.square().sum(0), n + f.shape[0]
        mean = total / n
        self.model.norm.set_stats(mean.float(), (sq / n - mean.square()).clamp_min(1e-6).sqrt().float())

    # -------------------------------------------------------------- batches -> model inputs
    def inputs(self, exs, alpha: torch.Tensor | None = None, waves: list[np.ndarray] | None = None):
        """Examples -> what the model reads: ``(x, lengths, speech)`` on the model's own grid.

        Models on the encoder read the cached encoder states (:meth:`training.data.Data.encoded`, the
        path :class:`serdemo.inference.Predictor` computes them by); log-mel models get the log-mel of
        ``waves`` (default: the clips as decoded), warped by ``alpha`` ``(batch,)``, and speech masks
        computed on those very waves when they were augmented (so masks follow speed and shift).
        """
        if uses_encoder(self.model):  # a closed-form model reads each clip once: its states are not kept
            items = self.data.encoded(exs, keep=self.closed_form is None)
            return collate_states(items, self.n_states, self.device)
        augmented = waves is not None
        waves = waves if augmented else [self.data.wave(e) for e in exs]
        x, lengths = pad_batch(waves)
        x, lengths = x.to(self.device), lengths.to(self.device)
        enc = self.frontend(x, lengths, alpha=None if alpha is None else alpha.to(self.device))
        width = enc.logmel.shape[2]
        if augmented:
            from serdemo.vad import default_detector

            masks = default_detector().frame_masks(waves, [max(1, len(w) // self.features.hop_length) for w in waves])
        else:
            masks = [self.data.speech(e) for e in exs]
        speech = torch.zeros(len(exs), width, dtype=torch.bool)
        for i, m in enumerate(masks):
            m = torch.as_tensor(np.asarray(m, dtype=bool)[:width])
            speech[i, : len(m)] = m
        return enc.logmel, enc.frames, speech.to(self.device)

    def autocast(self):
        """Mixed precision for the model only (CUDA with ``amp``)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def data_mismatch(self, training: dict) -> str | None:
        """Why a card's ``training`` block describes other data than this trainer's (None: the same
        training file list and the same train/dev/test speakers)."""
        if training.get("file_list_sha256") != self.file_list_sha256:
            return "it was trained on a different file list"
        speakers = training.get("speakers", {})
        for name, part in (("train", self.train), ("dev", self.dev), ("test", self.test)):
            if speakers.get(name) != sorted({e.utt.speaker for e in part}):
                return f"its {name} speakers differ"
        return None

    def class_mask(self, exs) -> torch.Tensor | None:
        """``(batch, classes)``: the classes each example's corpus has (None: no masking)."""
        if not self.cfg.corpus_classes:
            return None
        return torch.stack([self.corpus_classes[e.utt.corpus] for e in exs]).to(self.device)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches of ``self.train`` indices, the same on every rank."""
        return D.epoch_batches(self.lengths, self.cfg.batch_size, self.init_seed, epoch, self.cfg.max_steps)

    def normalisers(self, batch: list[int]) -> dict[str, float]:
        """Per head, the denominator of the whole batch's mean loss (class-weighted for emotion)."""
        exs = [self.train[i] for i in batch]
        out = {"emotion": float(sum(self.class_w_list[e.targets["emotion"]] for e in exs))}
        for h in self.heads[1:]:
            out[h] = float(sum(e.targets[h] != D.IGNORE for e in exs))
        return out

    def loss(self, out, targets: dict, norms: dict[str, float], weight: float = 1.0, perm=None, lam: float = 1.0,
             class_mask: torch.Tensor | None = None):
        """This rank's part of the batch loss, scaled so that DDP's mean over ranks of the gradients is
        the gradient of the whole batch's (class-weighted) mean loss. ``class_mask (batch, classes)``:
        the emotion classes each example competes among (a mixup blend: those of either clip)."""
        total = 0.0
        for h in self.heads:
            logits = out.logits[h].float()
            if h == "emotion" and class_mask is not None:
                if perm is not None:
                    class_mask = class_mask | class_mask[perm.to(class_mask.device)]
                logits = logits.masked_fill(~class_mask, -1e4)
            t = targets[h].to(self.device)
            w = self.class_w if h == "emotion" else None

            def summed(tt):
                return F.cross_entropy(logits, tt, weight=w, ignore_index=D.IGNORE, reduction="sum")

            part = summed(t) if perm is None else lam * summed(t) + (1 - lam) * summed(t[perm.to(self.device)])
            scale = (1.0 if h == "emotion" else self.cfg.aux_weight) * self.world * weight
            if norms[h] > 0:
                total = total + part * (scale / norms[h])
            else:  # no labels for this head in the batch; keep it in the graph so DDP sees a gradient
                total = total + 0.0 * logits.sum()
        return total

    def train_epoch(self, epoch: int, progress: Progress) -> float:
        cfg = self.cfg
        self.net.train()
        batches = self.epoch_batches(epoch)
        total_steps = max(1, cfg.epochs * len(batches))
        trace = Path(cfg.out) / f"trace-rank{self.rank}.jsonl" if cfg.trace else None
        losses = []
        for step, batch in enumerate(batches):
            done = epoch * len(batches) + step
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done / total_steps)))
            for g in self.opt.param_groups:
                g["lr"] = lr * g.get("scale", 1.0) * min(1.0, (done + 1) / len(batches))  # one epoch of warm-up
            mine, weight = D.shard(batch, self.rank, self.world)
            exs = [self.train[i] for i in mine]
            targets = {h: torch.tensor([e.targets.get(h, D.IGNORE) for e in exs], dtype=torch.long) for h in self.heads}
            alpha = None
            if uses_encoder(self.model):
                x, lens, speech = self.inputs(exs)
                feats = time_masks(x, lens, self.aug.gen) if cfg.specaug else x
            else:
                waves = [self.data.wave(e) for e in exs]
                augmented = self.aug.waves(waves) if cfg.augment else None
                alpha = self.aug.alphas(len(exs))
                x, lens, speech = self.inputs(exs, alpha, augmented)
                feats = self.aug.spec(x, lens)
            feats, frames, perm, lam = self.aug.mix(feats, lens)
            if speech is not None and perm is not None:  # a blend is speech where either clip is
                speech = pad_or_cut(speech, feats.shape[2])
                speech = speech | speech[perm.to(speech.device)]
            with self.autocast():
                out = self.net(feats, frames, speech=speech)
            loss = self.loss(out, targets, self.normalisers(batch), weight, perm, lam, self.class_mask(exs))
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
            self.scaler.step(self.opt)
            self.scaler.update()
            batch_loss = loss.detach().clone()
            if self.world > 1:
                dist.all_reduce(batch_loss)
            batch_loss = float(batch_loss) / self.world  # the whole batch's loss, the same on every rank
            if not math.isfinite(batch_loss):  # every rank sees it: stop at once rather than train on NaN weights
                raise SystemExit(f"training diverged: the loss is {batch_loss} at epoch {epoch + 1}, step {done + 1}; "
                                 "the checkpoint keeps its last good epoch (try a lower --lr, or --encoder-lr when "
                                 "fine-tuning; --trace names each step's clips)")
            losses.append(batch_loss)
            progress.step, progress.total_steps = done + 1, total_steps
            progress.steps_this_run += 1
            progress.write("step", batch_loss)
            if trace is not None:
                append_jsonl(trace, {"epoch": epoch + 1, "step": done + 1, "loss": batch_loss, "weight": weight,
                                      "paths": [e.utt.path for e in exs] if weight else [],
                                      "alphas": alpha.tolist() if alpha is not None and weight else [],
                                      "lam": lam})
        return float(np.mean(losses)) if losses else float("nan")



    # -------------------------------------------------------------- the loop
    def fit(self) -> dict:
        """Train, keep the best epoch by dev UA in ``OUT``, score it on the test fold; -> metrics (main rank)."""
        if self.closed_form is not None:
            return self.closed_form.fit()
        cfg = self.cfg
        steps = len(self.epoch_batches(0))
        progress = self._live_progress()
        progress.epochs, progress.total_steps = cfg.epochs, cfg.epochs * steps
        progress.begin_training()
        progress.epoch, progress.step = self.start_epoch, self.start_epoch * steps
        progress.dev_ua = self.history[-1]["dev_ua"] if self.history else None
        if self.is_main:
            log.info("train %d / dev %d / test %d utterances on %d rank(s); heads %s (decoded-audio cache hits %d, "
                     "misses %d)", len(self.train), len(self.dev), len(self.test), self.world,
                     self.heads, self.cache.hits, self.cache.misses)
        progress.write("start", resumed=self.resumed, n_train=len(self.train), n_dev=len(self.dev),
                       n_test=len(self.test), world_size=self.world, store=self.data.store_report)
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.time()
                progress.epoch = epoch + 1
                loss = self.train_epoch(epoch, progress)
                stop = torch.zeros(1, device=self.device)  # NCCL broadcasts device tensors only
                if self.is_main:
                    stop[0] = float(self.end_epoch(epoch, loss, time.time() - t0, progress))
                else:
                    self.save_last(epoch, {})
                if self.world > 1:
                    dist.broadcast(stop, 0)
                if bool(stop.item()):
                    break
            result = self.finish() if self.is_main else {}
            test = result.get("test", {}).get("overall", {})
            progress.write("done", test_ua=test.get("ua"))
        except BaseException as exc:
            progress.write("error", message=f"{type(exc).__name__}: {exc}")
            raise
        if self.world > 1:
            dist.barrier()
        return result

    def end_epoch(self, epoch: int, loss: float, seconds: float, progress: Progress) -> bool:
        """Main rank: score dev, keep the best, write ``OUT/last``; -> whether to stop early."""
        cfg = self.cfg
        dev = self.evaluate(self.dev, warp=cfg.vtlp_dev)
        ua = dev["overall"]["ua"] if dev else -loss  # no dev set: the (all-reduced) training loss decides
        improved = ua > self.best_ua
        if improved:
            self.best_ua, self.best_epoch, self.bad_epochs = ua, epoch, 0
        else:
            self.bad_epochs += 1
        self.history.append({"epoch": epoch + 1, "loss": round(loss, 4), "dev_ua": round(ua, 4),
                             "dev_wa": round(dev["overall"]["wa"], 4) if dev else None, "seconds": round(seconds, 1)})
        metrics = {"dev": dev, "best_epoch": self.best_epoch + 1}
        if improved:
            save_checkpoint(cfg.out, self.model, self.card(metrics))
        self.save_last(epoch, metrics)
        progress.dev_ua = round(ua, 4)
        progress.write("epoch", loss, dev_wa=self.history[-1]["dev_wa"], best_epoch=self.best_epoch + 1,
                       improved=improved)
        log.info("epoch %d/%d loss %.3f dev UA %.3f%s (%.0f s)", epoch + 1, cfg.epochs, loss, ua,
                 " *" if improved else "", seconds)
        if self.bad_epochs >= cfg.patience:
            log.info("early stop: dev UA has not improved for %d epochs", cfg.patience)
            return True
        return False









# ------------------------------------------------------------------ entry point
def parse_args(argv=None) -> FitConfig:
    """The command line (without ``--resume``) as a :class:`FitConfig`."""
    return parse_cli(argv, __doc__)[0]


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    cfg, run = parse_cli(argv, __doc__)
    if run.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return {}
    rank, world, device = setup_distributed()
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        trainer = Trainer(cfg, rank, world, device, resuming=run.resume, announce=True)
        if run.resume:
            trainer.resume()
        return trainer.fit()
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
