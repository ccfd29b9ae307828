"""norm=noisy_bn: BN followed by a random per-unit scale and shift, Santurkar et al. 2018 ("How Does
Batch Normalization Help Optimization?", arXiv 1805.11604, section 2.1 "noisy BN").

At every training-mode forward the layer's BN output a becomes s * a + m, with one (s, m) per unit
(channel) drawn afresh: m ~ U(-shift_t, shift_t) (non-zero mean) and s ~ U(1, scale_t) (non-unit
variance). The bounds grow with t, the number of training forwards the layer has run:

    r_t = min(1, t / ramp_steps)   (1 from the start when ramp_steps = 0)
    shift_t = shift * r_t,   scale_t = 1 + (scale - 1) * r_t

so the distribution the next layer sees keeps moving over training, which is the paper's point: it is
less stable than without BN, yet the network trains about as well as with BN. The paper gives no
constants (paper_notes: "check the noise schedule constants"); the defaults are our choice.
Eval mode adds no noise: the layer is BN with its running statistics.

Inference: the moving averages are those of training, when every earlier layer's output carried its
noise; eval mode drops it, so in a deep net each layer's input no longer matches its moving averages
and the error compounds (measured on the santurkar_vgg_cpu VGG: test accuracy at chance with the moving
averages, about 87% with batch statistics and no noise). Algorithm 2 (bn_repro/norms/population.py,
eval_stats' PreciseBN) therefore recomputes the statistics with the noise off (`noise_enabled`), i.e.
for the network that inference runs.

Reproducibility: the noise never touches the global RNG. Each forward seeds its own torch.Generator
from (norm.seed, the layer's key, t). The key tells the layers of one model apart and t is a buffer,
so both are in the state_dict: load_state_dict (checkpoint and resume) and the measurement seam's
`isolated` (which restores buffers) reproduce the noise exactly.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from bn_repro.norms.batchnorm import BatchNorm
from bn_repro.norms.registry import EPS, MOMENTUM, register_norm

__all__ = ["NoisyBatchNorm", "noisy_bn"]

_KEY_BITS = 62


def _layer_key() -> int:
    """A key for a new layer, read from the global RNG's state without drawing from it.

    Building a model draws each layer's initial weights from the global RNG, so its state differs at
    each norm layer a model builds, and it is fixed by the run's seed. Reading it (not drawing) leaves
    the weight initialisation exactly as with norm=builtin or custom at the same seed.
    """
    digest = hashlib.blake2b(torch.get_rng_state().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _KEY_BITS)


def _forward_seed(seed: int, key: int, draw: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{key}:{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # a non-negative int64


class NoisyBatchNorm(BatchNorm):
    """BatchNorm, then in training mode a <- s * a + m per unit, resampled at each forward.

    Buffers besides BN's: `noise_key` (tells layers apart) and `noise_draws` (t, the training forwards
    so far). Options as the module docstring; running statistics are those of BN's input, unaffected
    by the noise (so Algorithm 2 applies unchanged).
    """

    def __init__(
        self,
        num_features: int,
        *,
        shift: float = 1.0,
        scale: float = 2.0,
        ramp_steps: int = 5000,
        seed: int = 0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        if not shift >= 0:
            raise ValueError(f"norm.shift={shift!r}: expected a number >= 0")
        if not scale >= 1:
            raise ValueError(f"norm.scale={scale!r}: expected a number >= 1 (s ~ U(1, scale))")
        if isinstance(ramp_steps, bool) or not isinstance(ramp_steps, int) or ramp_steps < 0:
            raise ValueError(f"norm.ramp_steps={ramp_steps!r}: expected an integer >= 0")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"norm.seed={seed!r}: expected an integer")
        self.shift, self.scale, self.ramp_steps, self.seed = float(shift), float(scale), ramp_steps, seed
        self.register_buffer("noise_key", torch.tensor(_layer_key(), dtype=torch.long))
        self.register_buffer("noise_draws", torch.tensor(0, dtype=torch.long))
        # False during Algorithm 2's statistics pass: training-mode BN without noise (not state).
        self.noise_enabled = True

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, shift={self.shift}, scale={self.scale}, "
            f"ramp_steps={self.ramp_steps}, seed={self.seed}"
        )

    def bounds(self, draw: int) -> tuple[float, float]:
        """(shift_t, scale_t) at training forward `draw` (1 for the first)."""
        ramp = 1.0 if self.ramp_steps == 0 else min(1.0, draw / self.ramp_steps)
        return self.shift * ramp, 1.0 + (self.scale - 1.0) * ramp

    def noise(self, draw: int) -> tuple[Tensor, Tensor]:
        """(s, m), one value per unit, of training forward `draw`; float32 on the CPU."""
        shift, scale = self.bounds(draw)
        # Drawn on the CPU from a generator of its own: the same noise on every device, and the global
        # RNG (dropout, batch order, the measurement seam's replays) is left alone.
        generator = torch.Generator().manual_seed(_forward_seed(self.seed, int(self.noise_key), draw))
        u = torch.rand(2, self.num_features, generator=generator)
        return 1.0 + (scale - 1.0) * u[0], shift * (2.0 * u[1] - 1.0)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if not self.training or not self.noise_enabled:
            return y
        self.noise_draws.add_(1)
        s, m = self.noise(int(self.noise_draws))
        shape = (1, -1, *([1] * (y.dim() - 2)))
        return y * s.to(y.device, y.dtype).view(shape) + m.to(y.device, y.dtype).view(shape)


# synchronizes=False: the BN statistics stay per replica (as norm=builtin on the CPU); the layer is
# not wired to all-reduce them. The noise itself needs no synchronizing: every replica builds the same
# model from the same seed, so holds the same noise_key and noise_draws and draws the same (s, m).
@register_norm(
    "noisy_bn", label="noisy BN", synchronizes=False, population_stats=True,
    specs={"shift": "number >= 0", "scale": "number >= 1  # s ~ U(1, scale)",
           "ramp_steps": "int >= 0  # 0: full size from the first step", "seed": "int", "eps": EPS,
           "momentum": MOMENTUM},
)  # fmt: skip
def noisy_bn(
    num_features: int,
    dim: int,
    *,
    shift: float = 1.0,
    scale: float = 2.0,
    ramp_steps: int = 5000,
    seed: int = 0,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
) -> NoisyBatchNorm:
    """BN (this package's BatchNorm) with Santurkar et al.'s time-varying noise after it."""
    if not 2 <= dim <= 5:
        raise ValueError(f"norm=noisy_bn takes 2-D to 5-D inputs, got dim={dim}")
    return NoisyBatchNorm(
        num_features, shift=shift, scale=scale, ramp_steps=ramp_steps, seed=seed, eps=float(eps),
        momentum=momentum,
    )  # fmt: skip
