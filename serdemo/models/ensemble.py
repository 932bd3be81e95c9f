"""An ensemble of independently trained members of one architecture, as one model.

Members are the same recipe trained with different ``model_seed`` values (initial weights, data order,
augmentation, dropout) on the same speakers; ``python -m training.ensemble`` merges their checkpoints.
They share the input, so a frozen front end (GE2E) is computed once: inference costs one front end
plus N light heads. Class probabilities are the mean of the members' probabilities (returned as their
log, so ``softmax(logits)`` gives the mean); the attention shown is the mean of the members' attention
weights, which still sums to 1 over the same speech frames.
"""

from __future__ import annotations

import torch
from torch import nn

from serdemo.models.base import ModelOutput, SERModel

MAX_MEMBERS = 16


class Ensemble(SERModel):
    architecture = "ensemble"

    def __init__(self, n_mels: int, heads: dict[str, int], members: int = 3, member: str = "localatt",
                 ge2e: bool = False, input_frame_rate_hz: float = 100.0, **member_hparams):
        from serdemo.models import ARCHITECTURES, build_model

        if member not in ARCHITECTURES or member == "ensemble":
            raise ValueError(f"an ensemble's members must be one of {sorted(set(ARCHITECTURES) - {'ensemble'})}")
        if not 1 <= int(members) <= MAX_MEMBERS:
            raise ValueError(f"an ensemble has 1..{MAX_MEMBERS} members, not {members}")
        super().__init__(n_mels, heads, norm="none", input_frame_rate_hz=input_frame_rate_hz, ge2e=ge2e)
        self.member_architecture = member
        self.members = nn.ModuleList(
            build_model(member, n_mels, heads, input_frame_rate_hz=input_frame_rate_hz, **member_hparams)
            for _ in range(int(members)))
        self.time_stride = self.members[0].time_stride

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,
                speech: torch.Tensor | None = None) -> ModelOutput:
        outs = [m(features, lengths, speech=speech) for m in self.members]
        logits = {h: torch.stack([o.logits[h].float().log_softmax(-1) for o in outs]).logsumexp(0)
                  - torch.log(torch.tensor(float(len(outs)))) for h in outs[0].logits}
        attention = torch.stack([o.attention.float() for o in outs]).mean(0)
        return ModelOutput(logits, attention, outs[0].attention_lengths, outs[0].frame_rate_hz)
