"""Random crop and horizontal flip of a uint8 batch, done on the batch's device in one gather.

    augment = RandomCropFlip(padding=4, seed=0, device=data.train_x.device)
    x = data.normalize(augment(data.train_x[idx]))

Each image is zero-padded by `padding` pixels on every side and a random HxW window of it is kept
(torchvision's RandomCrop(size, padding) with zero fill), then mirrored left-right with probability 1/2.
The crop offsets and flips of the whole batch become one index tensor, so there is no per-image Python
loop and no copy to the host. The random draws come from the augmenter's own generator on the batch's
device: the same seed gives the same crops and flips, and turning augmentation on changes neither the
model's initialisation nor the batch order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# The usual CIFAR-10 recipe (our choice: the paper trains on ImageNet with its own distortions).
CROP_PADDING = 4


class RandomCropFlip:
    def __init__(self, padding: int = CROP_PADDING, seed: int = 0, device="cpu"):
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding={padding!r} is not valid; expected an integer >= 0")
        self.padding = padding
        self.generator = torch.Generator(device=torch.device(device)).manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images (any dtype, uint8 in the loop) -> augmented images of the same shape."""
        if images.dim() != 4:
            raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
        if images.device != self.generator.device:
            raise ValueError(f"images are on {images.device} but the generator on {self.generator.device}")
        n, c, h, w = images.shape
        p, device = self.padding, images.device
        padded = F.pad(images, (p, p, p, p)) if p else images
        offsets = torch.randint(0, 2 * p + 1, (n, 2, 1), generator=self.generator, device=device)
        rows = offsets[:, 0] + torch.arange(h, device=device)  # (N, H): padded row of each output row
        cols = offsets[:, 1] + torch.arange(w, device=device)  # (N, W)
        flipped = torch.randint(0, 2, (n, 1), generator=self.generator, device=device).bool()
        cols = torch.where(flipped, cols.flip(1), cols)
        # Flat index into each padded (H + 2p) x (W + 2p) plane, shared by the C channels of an image.
        index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.flatten(2).gather(2, index).view(n, c, h, w)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (on the CPU), so that a resumed run draws the same crops and flips."""
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator_state"])
