"""``python -m training.fit``: train a serdemo model; runs alone or under ``torchrun`` unchanged.

    python -m training.fit --config training/configs/default.yaml
    python -m training.fit --model cnnlstm --corpus emodb=../shared/data/emodb --label-set emodb7 \
        --fold 0 --epochs 30 --out checkpoints/my-model
    torchrun --nproc-per-node=2 -m training.fit --config ...       # DDP: gloo on CPU, NCCL on GPU

Every epoch writes ``OUT/last/`` (weights, card, optimizer state: all safetensors/JSON) for
``--resume``; the best epoch by dev UA is written to ``OUT/`` itself, which is what the app serves.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from serdemo.checkpoint import load_checkpoint, make_card, save_checkpoint
from serdemo.features import FeatureConfig, LogMel
from serdemo.labels import AUX_HEADS, get_label_set
from serdemo.models import build_model
from serdemo.vtlp import F_HI_HZ, sample_alpha, warp_power
from training import corpora as C
from training import data as D
from training.metrics import scores_by_group, table
from training.splits import train_dev_test

log = logging.getLogger("training.fit")
RAVDESS_LICENSE = ("CC BY-NC-SA 4.0 (inherited from RAVDESS, Livingstone & Russo 2018): "
                   "non-commercial use, attribution and share-alike")
EMODB_LICENSE = "CC0-1.0 (EMO-DB as republished by audEERING)"


@dataclass
class FitConfig:
    name: str = "model"
    out: str = "checkpoints/model"
    model: str = "multitask"
    hparams: dict = field(default_factory=dict)
    corpora: list = field(default_factory=lambda: ["emodb=../shared/data/emodb", "ravdess=../shared/data/ravdess"])
    label_set: str = "ekman7"
    aux_heads: list = field(default_factory=lambda: ["gender"])
    aux_weight: float = 0.3
    split: str = "speakers"  # speakers | loso | session
    n_folds: int = 4
    fold: int | None = 0  # None: no test fold, train on all but dev
    seed: int = 0
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    patience: int = 10
    vtlp: bool = True
    vtlp_low: float = 0.9
    vtlp_high: float = 1.1
    vtlp_dev: bool = False
    specaug: bool = True
    augment: list = field(default_factory=list)  # nlpaug: noise, speed, loudness, shift
    augment_p: float = 0.3
    norm: str = "utterance"
    max_duration_s: float = 20.0
    limit_per_corpus: int = 0  # >0: first N utterances per speaker-balanced corpus (tests)
    max_steps: int = 0  # >0: stop each epoch after N steps (tests)
    amp: bool = True  # only on CUDA
    workers: int = 2
    cache_dir: str = ""
    features: dict = field(default_factory=dict)
    init: str = ""  # fine-tune: start from this checkpoint's weights (matching tensors only)

    @classmethod
    def from_yaml(cls, path) -> "FitConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SystemExit(f"{path}: unknown settings {sorted(unknown)}")
        return cls(**data)


# ------------------------------------------------------------------ distributed helpers
def setup_distributed():
    """-> (rank, world, device). Uses torchrun's environment when present."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------ data
def load_corpora(cfg: FitConfig):
    utts, reports = [], []
    for spec in cfg.corpora:
        kind, path = C.parse_spec(spec)
        scan = C.scan(kind, path)
        reports.append({"corpus": scan.corpus, "root": scan.root, "utterances": len(scan.utterances),
                        "not_understood": len(scan.problems), "excluded": len(scan.excluded)})
        got = scan.utterances
        if cfg.limit_per_corpus:
            by_spk: dict[str, list] = {}
            for u in got:
                by_spk.setdefault(u.speaker, []).append(u)
            got, i = [], 0
            while len(got) < cfg.limit_per_corpus and any(by_spk.values()):
                for s in sorted(by_spk):
                    if by_spk[s] and len(got) < cfg.limit_per_corpus:
                        got.append(by_spk[s].pop(i % len(by_spk[s])))
                i += 7
        utts += got
    return utts, reports


def file_list_hash(utts) -> str:
    h = hashlib.sha256()
    for u in sorted(utts, key=lambda u: u.path):
        h.update(f"{u.path}|{u.emotion}|{u.speaker}\n".encode())
    return h.hexdigest()


def spec_augment(feats: torch.Tensor, frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One frequency mask (<= 8 bands) and one time mask (<= 10% of each clip) per example, batched."""
    b, n_mels, t = feats.shape
    dev = feats.device
    f_w = (torch.rand(b, generator=gen) * 9).long().to(dev)
    f_0 = (torch.rand(b, generator=gen).to(dev) * (n_mels - f_w)).long()
    t_w = (torch.rand(b, generator=gen).to(dev) * 0.1 * frames.float()).long()
    t_0 = (torch.rand(b, generator=gen).to(dev) * (frames - t_w).clamp_min(1).float()).long()
    fi = torch.arange(n_mels, device=dev)[None, :]
    ti = torch.arange(t, device=dev)[None, :]
    fmask = (fi >= f_0[:, None]) & (fi < (f_0 + f_w)[:, None])
    tmask = (ti >= t_0[:, None]) & (ti < (t_0 + t_w)[:, None])
    mean = feats.mean(dim=(1, 2), keepdim=True)
    masked = fmask[:, :, None] | tmask[:, None, :]
    return torch.where(masked, mean, feats)


# ------------------------------------------------------------------ optimizer state without pickle
def save_trainer_state(directory: Path, opt: torch.optim.Optimizer, meta: dict) -> None:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    save_file(tensors, str(directory / ".optimizer.tmp"))
    os.replace(directory / ".optimizer.tmp", directory / "optimizer.safetensors")
    meta = dict(meta, param_groups=sd["param_groups"])
    (directory / ".trainer.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(directory / ".trainer.tmp", directory / "trainer.json")


def load_trainer_state(directory: Path, opt: torch.optim.Optimizer) -> dict:
    meta = json.loads((directory / "trainer.json").read_text())
    flat = load_file(str(directory / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, v in flat.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


# ------------------------------------------------------------------ the loop
class Trainer:
    def __init__(self, cfg: FitConfig, rank: int = 0, world: int = 1, device=None):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = device or torch.device("cpu")
        self.is_main = rank == 0
        seed_everything(cfg.seed)
        self.features = FeatureConfig(**cfg.features)
        self.frontend = LogMel(self.features).to(self.device)
        self.label_set = get_label_set(cfg.label_set)
        for h in cfg.aux_heads:
            if h not in AUX_HEADS:
                raise SystemExit(f"unknown auxiliary head {h!r}; known: {sorted(AUX_HEADS)}")

        utts, self.corpus_reports = load_corpora(cfg)
        if not utts:
            raise SystemExit("no utterances found: check --corpus KIND=PATH")
        examples, self.dropped = D.build_examples(utts, self.label_set, cfg.aux_heads)
        kept = [e.utt for e in examples]
        train_u, dev_u, test_u = train_dev_test(kept, cfg.split, cfg.n_folds, cfg.fold, cfg.seed)
        by_path = {e.utt.path: e for e in examples}
        self.train = [by_path[u.path] for u in train_u]
        self.dev = [by_path[u.path] for u in dev_u]
        self.test = [by_path[u.path] for u in test_u]
        # auxiliary heads need two classes in the training data to learn anything
        self.heads = ["emotion"]
        self.untrained_heads = {}
        for h in cfg.aux_heads:
            seen = {e.targets[h] for e in self.train} - {D.IGNORE}
            if len(seen) >= 2:
                self.heads.append(h)
            else:
                self.untrained_heads[h] = f"training data has {len(seen)} class(es) of {h}"
                if self.is_main:
                    log.warning("dropping head %s: %s", h, self.untrained_heads[h])

        self.cache = D.WaveCache(cfg.cache_dir or None, self.features.sample_rate, cfg.max_duration_s)
        t0 = time.time()
        errors = self.cache.warm([e.utt.path for e in self.train + self.dev + self.test], cfg.workers)
        self.decode_s = time.time() - t0
        if errors:
            for p, msg in errors.items():
                log.warning("skipping %s: %s", p, msg)
            self.train = [e for e in self.train if e.utt.path not in errors]
            self.dev = [e for e in self.dev if e.utt.path not in errors]
            self.test = [e for e in self.test if e.utt.path not in errors]
        self.skipped_audio = errors

        head_sizes = {h: (len(self.label_set) if h == "emotion" else len(AUX_HEADS[h])) for h in self.heads}
        self.hparams = dict(cfg.hparams, norm=cfg.norm)
        self.model = build_model(cfg.model, self.features.n_mels, head_sizes,
                                 input_frame_rate_hz=self.features.frame_rate_hz, **self.hparams).to(self.device)
        if cfg.init:
            self._init_from(cfg.init)
        elif cfg.norm == "global":
            self._set_global_stats()
        self.class_w = D.class_weights(self.train, len(self.label_set)).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.net = self.model
        if world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.waug = D.WaveAugment(cfg.augment, self.features.sample_rate, cfg.augment_p, cfg.seed + rank) \
            if cfg.augment else None
        self.start_epoch, self.best_ua, self.best_epoch, self.bad_epochs = 0, -1.0, -1, 0
        self.history: list[dict] = []

    def _init_from(self, path: str) -> None:
        """Copy every tensor whose name and shape match (normalisation statistics included)."""
        source, _ = load_checkpoint(path, "cpu")
        own = self.model.state_dict()
        taken = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(taken, strict=False)
        if self.is_main:
            log.info("initialised %d of %d tensors from %s", len(taken), len(own), path)

    def _set_global_stats(self):
        total, sq, n = 0.0, 0.0, 0
        with torch.no_grad():
            for e in self.train:
                x = torch.as_tensor(self.cache.get(e.utt.path), device=self.device)[None]
                m = self.frontend(x)[0][0].double()
                total, sq, n = total + m.sum(1), sq + m.square().sum(1), n + m.shape[1]
        mean = total / n
        self.model.norm.set_stats(mean.float(), (sq / n - mean.square()).clamp_min(1e-6).sqrt().float())

    # -------------------------------------------------------------- features on the device
    def featurize(self, x, lengths, warp: bool, gen=None):
        x, lengths = x.to(self.device, non_blocking=True), lengths.to(self.device)
        power = self.frontend.power(x)
        if warp:
            alpha = sample_alpha(x.shape[0], self.cfg.vtlp_low, self.cfg.vtlp_high, gen, self.device)
            power = warp_power(power, alpha, self.features.sample_rate, F_HI_HZ)
        return self.frontend.mel(power), self.frontend.frame_lengths(lengths)

    def loss(self, out, targets):
        total = F.cross_entropy(out.logits["emotion"].float(), targets["emotion"].to(self.device), weight=self.class_w)
        for h in self.heads[1:]:
            t = targets[h].to(self.device)
            logits = out.logits[h].float()
            if (t != D.IGNORE).any():
                total = total + self.cfg.aux_weight * F.cross_entropy(logits, t, ignore_index=D.IGNORE)
            else:  # keep the head in the graph so DDP sees a gradient for it
                total = total + 0.0 * logits.sum()
        return total

    def train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        self.net.train()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(self.train), generator=gen).tolist()
        lengths = [len(self.cache.get(e.utt.path)) for e in self.train]
        bs = D.batches(order, cfg.batch_size, lengths)
        perm = torch.randperm(len(bs), generator=gen).tolist()
        bs = [bs[i] for i in perm]
        # every rank takes the same number of batches
        per_rank = len(bs) // self.world if self.world > 1 else len(bs)
        bs = bs[self.rank::self.world][:per_rank]
        if cfg.max_steps:
            bs = bs[: cfg.max_steps]
        total_steps = max(1, cfg.epochs * len(bs))
        bar = tqdm(bs, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.is_main or bool(os.environ.get("TQDM_DISABLE")), leave=False,
                   file=sys.stderr, dynamic_ncols=True, mininterval=2.0)
        losses = []
        for step, batch in enumerate(bar):
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch * len(bs) + step) / total_steps)))
            warm = min(1.0, (epoch * len(bs) + step + 1) / max(1, len(bs)))
            for g in self.opt.param_groups:
                g["lr"] = lr * warm
            exs = [self.train[i] for i in batch]
            waves = [self.cache.get(e.utt.path) for e in exs]
            if self.waug is not None:
                waves = [self.waug(w) for w in waves]
            x, lens, targets = D.collate(waves, exs, self.heads)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                feats, frames = self.featurize(x, lens, cfg.vtlp, gen)
                if cfg.specaug:
                    feats = spec_augment(feats, frames, gen)
                out = self.net(feats, frames)
                loss = self.loss(out, targets)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.scaler.step(self.opt)
            self.scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", best_ua=f"{max(self.best_ua, 0):.3f}")
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def predict(self, examples, warp: bool = False, batch_size: int = 32):
        """-> predicted emotion indices, in the order of ``examples``."""
        self.model.eval()
        order = sorted(range(len(examples)), key=lambda i: len(self.cache.get(examples[i].utt.path)))
        preds = np.zeros(len(examples), dtype=int)
        gen = torch.Generator().manual_seed(12345)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            exs = [examples[j] for j in idx]
            x, lens, _ = D.collate([self.cache.get(e.utt.path) for e in exs], exs, [])
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                feats, frames = self.featurize(x, lens, warp, gen)
                out = self.model(feats, frames)
            preds[idx] = out.logits["emotion"].argmax(-1).cpu().numpy()
        return preds

    def evaluate(self, examples, warp: bool = False) -> dict:
        if not examples:
            return {}
        preds = self.predict(examples, warp)
        y = [e.targets["emotion"] for e in examples]
        return scores_by_group(y, preds, [e.utt.corpus for e in examples], list(self.label_set.classes))

    # -------------------------------------------------------------- checkpoints
    def card(self, metrics: dict) -> dict:
        cfg = self.cfg
        corpora = sorted({e.utt.corpus for e in self.train})
        licenses = []
        if "ravdess" in corpora:
            licenses.append(RAVDESS_LICENSE)
        if "emodb" in corpora:
            licenses.append(EMODB_LICENSE)
        heads = {h: list(self.label_set.classes) if h == "emotion" else list(AUX_HEADS[h]) for h in self.heads}
        return make_card(
            self.model, self.features, heads, self.hparams,
            name=cfg.name, label_set=self.label_set.to_dict(),
            training={
                "config": dataclasses.asdict(cfg),
                "corpora": self.corpus_reports,
                "dropped_labels": self.dropped,
                "untrained_heads": self.untrained_heads,
                "seed": cfg.seed,
                "file_list_sha256": file_list_hash([e.utt for e in self.train + self.dev]),
                "n_train": len(self.train), "n_dev": len(self.dev), "n_test": len(self.test),
                "speakers": {"train": sorted({e.utt.speaker for e in self.train}),
                             "dev": sorted({e.utt.speaker for e in self.dev}),
                             "test": sorted({e.utt.speaker for e in self.test})},
                "history": self.history,
            },
            metrics=metrics,
            license=" + ".join(licenses) if licenses else "see training data",
        )

    def save_last(self, epoch: int, metrics: dict) -> None:
        last = Path(self.cfg.out) / "last"
        save_checkpoint(last, self.model, self.card(metrics))
        save_trainer_state(last, self.opt, {"epoch": epoch, "best_ua": self.best_ua, "best_epoch": self.best_epoch,
                                            "bad_epochs": self.bad_epochs, "history": self.history})

    def resume(self) -> None:
        last = Path(self.cfg.out) / "last"
        if not (last / "trainer.json").is_file():
            raise SystemExit(f"--resume: no {last}/trainer.json to resume from")
        model, _ = load_checkpoint(last, self.device)
        self.model.load_state_dict(model.state_dict())
        meta = load_trainer_state(last, self.opt)
        self.start_epoch = meta["epoch"] + 1
        self.best_ua, self.best_epoch, self.bad_epochs = meta["best_ua"], meta["best_epoch"], meta["bad_epochs"]
        self.history = meta["history"]
        if self.is_main:
            log.info("resumed from %s at epoch %d (best dev UA %.3f)", last, self.start_epoch, self.best_ua)

    def fit(self) -> dict:
        cfg = self.cfg
        out = Path(cfg.out)
        if self.is_main:
            log.info("train %d / dev %d / test %d utterances; heads %s; %.1f s decoding (cache hits %d, misses %d)",
                     len(self.train), len(self.dev), len(self.test), self.heads, self.decode_s,
                     self.cache.hits, self.cache.misses)
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.time()
            loss = self.train_epoch(epoch)
            stop = torch.zeros(1)
            if self.is_main:
                dev = self.evaluate(self.dev, warp=cfg.vtlp_dev)
                ua = dev["overall"]["ua"] if dev else -loss
                improved = ua > self.best_ua
                if improved:
                    self.best_ua, self.best_epoch, self.bad_epochs = ua, epoch, 0
                else:
                    self.bad_epochs += 1
                self.history.append({"epoch": epoch + 1, "loss": round(loss, 4), "dev_ua": round(ua, 4),
                                     "dev_wa": round(dev["overall"]["wa"], 4) if dev else None,
                                     "seconds": round(time.time() - t0, 1)})
                metrics = {"dev": dev, "best_epoch": self.best_epoch + 1}
                if improved:
                    save_checkpoint(out, self.model, self.card(metrics))
                self.save_last(epoch, metrics)
                log.info("epoch %d loss %.3f dev UA %.3f%s (%.0f s)", epoch + 1, loss, ua,
                         " *" if improved else "", time.time() - t0)
                if self.bad_epochs >= cfg.patience:
                    log.info("early stop: dev UA has not improved for %d epochs", cfg.patience)
                    stop[0] = 1
            if self.world > 1:
                dist.broadcast(stop, 0)
            if stop[0]:
                break
        result = {}
        if self.is_main:
            model, card = load_checkpoint(out, self.device)
            self.model.load_state_dict(model.state_dict())
            metrics = card["metrics"]
            if self.test:
                metrics["test"] = self.evaluate(self.test)
                metrics["test_speakers"] = sorted({e.utt.speaker for e in self.test})
            card = self.card(metrics)
            save_checkpoint(out, self.model, card)
            result = metrics
            if self.test:
                log.info("\n%s", table(metrics["test"], f"test fold {cfg.fold} (speakers never seen in training)"))
        return result


def parse_args(argv=None) -> FitConfig:
    p = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML recipe (training/configs/*.yaml); flags below override it")
    p.add_argument("--name")
    p.add_argument("--out", help="checkpoint folder to write")
    p.add_argument("--model", choices=["localatt", "cnnlstm", "multitask"])
    p.add_argument("--hparams", type=json.loads, help='architecture settings as JSON, e.g. \'{"hidden": 64}\'')
    p.add_argument("--corpus", action="append", dest="corpora", metavar="KIND=PATH",
                   help=f"repeat to aggregate; kinds: {', '.join(C.ADAPTERS)}")
    p.add_argument("--label-set", choices=["emo4", "ekman7", "emodb7", "ravdess8"])
    p.add_argument("--aux-heads", type=lambda s: [h for h in s.split(",") if h], help="e.g. gender,naturalness")
    p.add_argument("--split", choices=["speakers", "loso", "session"])
    p.add_argument("--n-folds", type=int)
    p.add_argument("--fold", type=lambda s: None if s == "none" else int(s), help="test fold, or 'none'")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--vtlp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--vtlp-dev", action=argparse.BooleanOptionalAction, default=None, help="warp dev clips too")
    p.add_argument("--specaug", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--augment", type=lambda s: [a for a in s.split(",") if a], help="noise,speed,loudness,shift")
    p.add_argument("--norm", choices=["utterance", "global", "none"])
    p.add_argument("--limit-per-corpus", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--cache-dir")
    p.add_argument("--init", help="fine-tune: start from this checkpoint's weights")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    args = p.parse_args(argv)
    cfg = FitConfig.from_yaml(args.config) if args.config else FitConfig()
    for f in dataclasses.fields(FitConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    if args.out is None and args.name is not None and not args.config:
        cfg.out = f"checkpoints/{cfg.name}"
    cfg._resume = args.resume  # type: ignore[attr-defined]
    return cfg


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    cfg = parse_args(argv)
    rank, world, device = setup_distributed()
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        trainer = Trainer(cfg, rank, world, device)
        if getattr(cfg, "_resume", False):
            trainer.resume()
        return trainer.fit()
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
