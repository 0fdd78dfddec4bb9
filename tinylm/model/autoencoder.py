"""A tied autoencoder: the decoder is the encoder's matrix transposed, with its own bias.

The classic use of a transposed tie (tied-weight autoencoders, Vincent et al. 2010) and the
smallest demonstration that :func:`tinylm.sharing.tying.tie` is general: two ``nn.Linear`` modules,
``decoder.weight`` computed as ``encoder.weight.T`` on each access, one Parameter, one
gradient that sums both uses.
"""

from __future__ import annotations

import torch
from torch import nn

from tinylm.sharing.tying import TieGuarded, tie


class TiedAutoencoder(TieGuarded):
    def __init__(self, n_in: int, n_hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(n_in, n_hidden)  # weight (n_hidden, n_in)
        self.decoder = nn.Linear(n_hidden, n_in)  # weight (n_in, n_hidden) = encoder.weight.T
        tie(self.encoder, "weight", self.decoder, "weight", transform="transpose")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.tanh(self.encoder(x)))
