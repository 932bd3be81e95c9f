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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from serdemo.checkpoint import load_checkpoint, make_card, save_checkpoint
from serdemo.features import FeatureConfig, LogMel
from serdemo.inference import ModelInput, model_inputs
from serdemo.prosody import Prosody
from serdemo.labels import AUX_HEADS, get_label_set
from serdemo.models import build_model
from serdemo.vtlp import sample_alpha
from training import corpora as C
from training import data as D
from training import state as S
from training.augment import RANK_SEED_STRIDE, Augmenter
from training.config import FitConfig, parse_cli
from training.metrics import scores_by_group, table
from training.progress import FILE as PROGRESS_FILE
from training.progress import Progress, append_jsonl
from training.pretrained import init_pretrained
from training.splits import train_dev_test

log = logging.getLogger("training.fit")
GRAD_CLIP = 5.0
EVAL_SEED = 12345  # alphas of warped evaluation (vtlp_dev): the same every epoch

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
class Trainer:
    """Data, model and optimiser of one run on one rank; :meth:`fit` trains, :meth:`evaluate` scores.

    ``train``/``dev``/``test``: lists of :class:`training.data.Example`, speaker-disjoint.
    """

    def __init__(self, cfg: FitConfig, rank: int = 0, world: int = 1, device=None):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.is_main = rank == 0
        S.seed_everything(cfg.seed)  # the split and the initial weights: the same on every rank
        self.features = FeatureConfig(**cfg.features)
        self.frontend = LogMel(self.features).to(self.device)
        self.prosody = Prosody(self.features.sample_rate, self.features.hop_length).to(self.device) \
            if self.features.prosody else None
        self.label_set = get_label_set(cfg.label_set)
        self._load_data()

        self.init_seed = init_seed = cfg.seed if cfg.model_seed is None else cfg.model_seed
        if cfg.model_seed is not None:  # the split stays that of cfg.seed; weights and order follow model_seed
            S.seed_everything(init_seed)
        head_sizes = {h: (len(self.label_set) if h == "emotion" else len(AUX_HEADS[h])) for h in self.heads}
        self.hparams = dict(cfg.hparams, norm=cfg.norm)
        if self.features.ge2e:  # the model carries the frozen encoder whose rows its input has
            self.hparams["ge2e"] = True
        self.model = build_model(cfg.model, self.features.input_rows, head_sizes,
                                 input_frame_rate_hz=self.features.frame_rate_hz, **self.hparams).to(self.device)
        self.pretrained = init_pretrained(self.model)  # frozen front ends (GE2E), before any --init
        if cfg.init:
            self._init_from(cfg.init)
        if cfg.norm == "global":  # also after --init: the statistics belong to this training set
            self._set_global_stats()
        class_w = D.class_weights(self.train, len(self.label_set))
        self.class_w, self.class_w_list = class_w.to(self.device), class_w.tolist()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.net = self.model
        if world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # from here on each rank draws its own augmentation and dropout
        rank_seed = init_seed + RANK_SEED_STRIDE * rank
        S.seed_everything(rank_seed)
        self.aug = Augmenter(cfg, self.features.sample_rate, rank_seed)
        self.start_epoch, self.best_ua, self.best_epoch, self.bad_epochs = 0, -1.0, -1, 0
        self.history: list[dict] = []
        self.resumed = False

    def _load_data(self) -> None:
        cfg = self.cfg
        utts, self.corpus_reports = D.load_corpora(cfg.corpora, cfg.limit_per_corpus)
        if not utts:
            raise SystemExit("no utterances found: check --corpus KIND=PATH")
        examples, self.dropped = D.build_examples(utts, self.label_set, cfg.aux_heads)
        train_u, dev_u, test_u = train_dev_test([e.utt for e in examples], cfg.split, cfg.n_folds, cfg.fold, cfg.seed)
        by_path = {e.utt.path: e for e in examples}
        self.cache = D.WaveCache(cfg.cache_dir or None, self.features.sample_rate, cfg.max_duration_s)
        t0 = time.time()
        self.skipped_audio = self.cache.warm([u.path for u in train_u + dev_u + test_u], cfg.workers)
        self.decode_s = time.time() - t0
        for p, msg in self.skipped_audio.items():
            log.warning("skipping %s: %s", p, msg)
        self.train, self.dev, self.test = ([by_path[u.path] for u in part if u.path not in self.skipped_audio]
                                           for part in (train_u, dev_u, test_u))
        self.lengths = [len(self.cache.get(e.utt.path)) for e in self.train]
        self.file_list_sha256 = D.file_list_hash([e.utt for e in self.train + self.dev])
        # per corpus, the emotion classes its training clips have (cfg.corpus_classes masks the rest)
        n_classes = len(self.label_set)
        self.corpus_classes: dict[str, torch.Tensor] = {}
        for e in self.train:
            m = self.corpus_classes.setdefault(e.utt.corpus, torch.zeros(n_classes, dtype=torch.bool))
            if e.targets["emotion"] != D.IGNORE:
                m[e.targets["emotion"]] = True
        # auxiliary heads need two classes in the training data to learn anything
        self.heads, self.untrained_heads = ["emotion"], {}
        for h in cfg.aux_heads:
            seen = {e.targets[h] for e in self.train} - {D.IGNORE}
            if len(seen) >= 2:
                self.heads.append(h)
            else:
                self.untrained_heads[h] = f"training data has {len(seen)} class(es) of {h}"
                if self.is_main:
                    log.warning("dropping head %s: %s", h, self.untrained_heads[h])

    def _init_from(self, path: str) -> None:
        """Copy every tensor whose name and shape match."""
        source, _ = load_checkpoint(path, "cpu")
        own = self.model.state_dict()
        taken = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(taken, strict=False)
        if self.is_main:
            log.info("initialised %d of %d tensors from %s", len(taken), len(own), path)

    @torch.no_grad()
    def _set_global_stats(self) -> None:
        """Per-row mean and std of the (unwarped) training inputs, as the model sees them (speech
        span, prosody and GE2E rows included), into the model's InputNorm."""
        total, sq, n = 0.0, 0.0, 0
        for i in range(0, len(self.train), 32):
            exs = self.train[i:i + 32]
            x, lens, _ = D.collate([self.cache.get(e.utt.path) for e in exs], exs, [])
            inp = self.featurize(x, lens, paths=[e.utt.path for e in exs])
            real = (torch.arange(inp.feats.shape[2], device=self.device)[None] < inp.frames[:, None])
            f = inp.feats.double().transpose(1, 2)[real]  # (real frames, rows)
            total, sq, n = total + f.sum(0), sq + f.square().sum(0), n + f.shape[0]
        mean = total / n
        self.model.norm.set_stats(mean.float(), (sq / n - mean.square()).clamp_min(1e-6).sqrt().float())

    # -------------------------------------------------------------- batches -> model inputs
    def featurize(self, x: torch.Tensor, lengths: torch.Tensor, alpha: torch.Tensor | None = None,
                  paths: list[str] | None = None) -> ModelInput:
        """Waves ``(batch, samples)`` + lengths ``(batch,)`` -> :class:`serdemo.inference.ModelInput`
        on the training device, the front end always in fp32 (outside any autocast).

        ``alpha`` ``(batch,)``: warp each example's power spectrum by VTLP; None: no warp. ``paths``:
        the clips, whose cached speech masks the model gets when its features say ``speech_only``.
        This is :func:`serdemo.inference.model_inputs`, the path the Predictor takes too.
        """
        x, lengths = x.to(self.device, torch.float32, non_blocking=True), lengths.to(self.device)
        speech = None
        if paths is not None and self.features.speech_only:
            n_frames = 1 + x.shape[1] // self.features.hop_length
            speech = self.cache.speech_batch(paths, n_frames, self.features.hop_length).to(self.device)
        if alpha is not None:
            alpha = alpha.to(self.device)
        return model_inputs(self.model, self.frontend, x, lengths, speech, alpha, self.prosody)

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
                g["lr"] = lr * min(1.0, (done + 1) / len(batches))  # one epoch of linear warm-up
            mine, weight = D.shard(batch, self.rank, self.world)
            exs = [self.train[i] for i in mine]
            waves = self.aug.waves([self.cache.get(e.utt.path) for e in exs])
            x, lens, targets = D.collate(waves, exs, self.heads)
            alpha = self.aug.alphas(len(exs))
            inp = self.featurize(x, lens, alpha, paths=[e.utt.path for e in exs])
            feats = self.aug.spec(inp.feats, inp.frames)
            feats, frames, perm, lam = self.aug.mix(feats, inp.frames)
            speech = inp.speech
            if speech is not None and perm is not None:  # a blend is speech where either clip is
                speech = _pad_or_cut(speech, feats.shape[2])
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

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, examples, warp: bool = False, batch_size: int = 32) -> np.ndarray:
        """-> predicted emotion indices, in the order of ``examples``; ``warp``: VTLP with fixed alphas."""
        return self.probabilities(examples, warp, batch_size).argmax(1)

    @torch.no_grad()
    def probabilities(self, examples, warp: bool = False, batch_size: int = 32) -> np.ndarray:
        """-> ``(len(examples), classes)`` emotion probabilities, in the order of ``examples``."""
        self.model.eval()
        order = sorted(range(len(examples)), key=lambda i: len(self.cache.get(examples[i].utt.path)))
        preds = np.zeros((len(examples), len(self.label_set)), dtype=np.float32)
        gen = torch.Generator().manual_seed(EVAL_SEED)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            exs = [examples[j] for j in idx]
            x, lens, _ = D.collate([self.cache.get(e.utt.path) for e in exs], exs, [])
            alpha = sample_alpha(len(exs), self.cfg.vtlp_low, self.cfg.vtlp_high, gen) if warp else None
            inp = self.featurize(x, lens, alpha, paths=[e.utt.path for e in exs])
            with self.autocast():
                out = self.model(inp.feats, inp.frames, speech=inp.speech)
            preds[idx] = torch.softmax(out.logits["emotion"].float(), -1).cpu().numpy()
        return preds

    def evaluate(self, examples, warp: bool = False) -> dict:
        if not examples:
            return {}
        preds = self.predict(examples, warp)
        y = [e.targets["emotion"] for e in examples]
        return scores_by_group(y, preds, [e.utt.corpus for e in examples], list(self.label_set.classes))

    # -------------------------------------------------------------- checkpoints and resume
    def card(self, metrics: dict) -> dict:
        cfg = self.cfg
        heads = {h: list(self.label_set.classes) if h == "emotion" else list(AUX_HEADS[h]) for h in self.heads}
        speakers = {name: sorted({e.utt.speaker for e in part})
                    for name, part in (("train", self.train), ("dev", self.dev), ("test", self.test))}
        return make_card(
            self.model, self.features, heads, self.hparams,
            name=cfg.name, label_set=self.label_set.to_dict(),
            training={
                "config": cfg.to_dict(),
                "corpora": self.corpus_reports,
                "dropped_labels": self.dropped,
                "untrained_heads": self.untrained_heads,
                "seed": cfg.seed,
                "world_size": self.world,
                "file_list_sha256": self.file_list_sha256,
                "n_train": len(self.train), "n_dev": len(self.dev), "n_test": len(self.test),
                "speakers": speakers,
                "history": self.history,
            },
            metrics=metrics,
            license=C.licence_for(sorted({e.utt.corpus for e in self.train})),
        )

    def rng_state(self) -> tuple[dict, dict]:
        tensors, js = S.capture_global_rng(self.device)
        aug_t, aug_js = self.aug.state()
        return {**tensors, **aug_t}, {**js, "augment": aug_js}

    def save_last(self, epoch: int, metrics: dict) -> None:
        """``OUT/last``: weights, card, optimiser and counters (main rank), each rank's RNG state."""
        last = Path(self.cfg.out) / "last"
        if self.is_main:
            save_checkpoint(last, self.model, self.card(metrics))
            S.save_trainer_state(last, self.opt, {"epoch": epoch, "best_ua": self.best_ua, "best_epoch": self.best_epoch,
                                                  "bad_epochs": self.bad_epochs, "history": self.history,
                                                  "world_size": self.world})
        S.save_rng(last, self.rank, *self.rng_state())

    def resume(self) -> None:
        last = Path(self.cfg.out) / "last"
        if not (last / S.TRAINER).is_file():
            raise SystemExit(f"--resume: no {last}/{S.TRAINER} to resume from")
        model, _ = load_checkpoint(last, self.device)
        self.model.load_state_dict(model.state_dict())
        meta = S.load_trainer_state(last, self.opt)
        self.start_epoch = meta["epoch"] + 1
        self.best_ua, self.best_epoch, self.bad_epochs = meta["best_ua"], meta["best_epoch"], meta["bad_epochs"]
        self.history = meta["history"]
        saved = S.load_rng(last, self.rank)
        if saved is None or meta.get("world_size", 1) != self.world:
            log.warning("rank %d: no RNG state for %d rank(s) in %s; the run continues, but not as it would have",
                        self.rank, self.world, last)
        else:
            tensors, js = saved
            S.restore_global_rng(tensors, js, self.device)
            self.aug.load_state(tensors, js["augment"])
        self.resumed = True
        if self.is_main:
            log.info("resumed from %s at epoch %d (best dev UA %.3f)", last, self.start_epoch + 1, self.best_ua)

    # -------------------------------------------------------------- the loop
    def fit(self) -> dict:
        """Train, keep the best epoch by dev UA in ``OUT``, score it on the test fold; -> metrics (main rank)."""
        cfg, out = self.cfg, Path(self.cfg.out)
        steps = len(self.epoch_batches(0))
        progress = Progress(out / PROGRESS_FILE, self.is_main, append=self.resumed, epochs=cfg.epochs,
                            total_steps=cfg.epochs * steps)
        progress.epoch, progress.step = self.start_epoch, self.start_epoch * steps
        progress.dev_ua = self.history[-1]["dev_ua"] if self.history else None
        if self.is_main:
            log.info("train %d / dev %d / test %d utterances on %d rank(s); heads %s; %.1f s decoding "
                     "(cache hits %d, misses %d)", len(self.train), len(self.dev), len(self.test), self.world,
                     self.heads, self.decode_s, self.cache.hits, self.cache.misses)
        progress.write("start", resumed=self.resumed, n_train=len(self.train), n_dev=len(self.dev),
                       n_test=len(self.test), world_size=self.world)
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

    def finish(self) -> dict:
        """Main rank: reload the best epoch, score the test fold, write the final card."""
        model, card = load_checkpoint(self.cfg.out, self.device)
        self.model.load_state_dict(model.state_dict())
        metrics = card["metrics"]
        if self.test:
            metrics["test"] = self.evaluate(self.test)
            metrics["test_speakers"] = sorted({e.utt.speaker for e in self.test})
            log.info("\n%s", table(metrics["test"], f"test fold {self.cfg.fold} (speakers never seen in training)"))
        save_checkpoint(self.cfg.out, self.model, self.card(metrics))
        return metrics


def _pad_or_cut(mask: torch.Tensor, width: int) -> torch.Tensor:
    if mask.shape[1] >= width:
        return mask[:, :width]
    return F.pad(mask, (0, width - mask.shape[1]))


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
        trainer = Trainer(cfg, rank, world, device)
        if run.resume:
            trainer.resume()
        return trainer.fit()
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
