"""From token sequences to the tensors of one micro-batch.

Batches are either padded (one sequence per row, right padding, an attention mask) or packed (several
sequences per row of at most `max_length` tokens). Packed rows carry `position_ids` that restart at 0
for every sequence and no attention mask: transformers' Llama-family models then build a block-diagonal
causal mask from the position ids (for eager and SDPA attention alike), so packed sequences never
attend to each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prime_ray.training.sequences import IGNORE_INDEX, TERM_IDS, TrainSequence

Row = list[int]  # indices into the sequence list; one element per padded row, several per packed row


@dataclass
class Batch:
    """Model inputs and loss targets of one micro-batch of `rows` rows of `width` tokens.

    Every tensor is int64 of shape (rows, width), width = the longest row; padding is on the right.
    `labels` are aligned with `input_ids` (the loss shifts them) and -100 on prompts and padding;
    `terms` holds each token's term id (`TERM_IDS`: 0 direct, 1 think), read where `labels` is scored.
    Packed batches have `attention_mask=None` and `position_ids` restarting at 0 for each sequence;
    padded batches have both (mask 1 on real tokens, 0 on padding).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    terms: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    tokens: int  # non-padding tokens

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    def to(self, device: torch.device | str) -> Batch:
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return Batch(self.input_ids.to(device), self.labels.to(device), self.terms.to(device),
                     self.position_ids.to(device), mask, self.tokens)

    @property
    def padded_tokens(self) -> int:
        """Tokens processed, padding included (rows × width)."""
        return self.input_ids.numel()


def collate_rows(sequences: Sequence[TrainSequence], rows: Sequence[Row], *, pad_id: int, packed: bool) -> Batch:
    """The `Batch` of `rows` (each a list of indices into `sequences`), right-padded with `pad_id` to
    the longest row. `packed`: no attention mask (sequences of a row are kept apart by their restarting
    position ids); otherwise each row must hold one sequence."""
    width = max(sum(len(sequences[i]) for i in row) for row in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    terms = torch.zeros((n, width), dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    tokens = 0
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            seq = sequences[i]
            end = start + len(seq)
            input_ids[r, start:end] = torch.tensor(seq.input_ids)
            labels[r, start:end] = torch.tensor(seq.labels)
            terms[r, start:end] = TERM_IDS[seq.term]
            position_ids[r, start:end] = torch.arange(len(seq))
            attention_mask[r, start:end] = 1
            start = end
        tokens += start
        # Padding gets its own restarting positions: in a packed row it is one more block of its own.
        position_ids[r, start:] = torch.arange(width - start)
    return Batch(input_ids, labels, terms, position_ids, None if packed else attention_mask, tokens)
