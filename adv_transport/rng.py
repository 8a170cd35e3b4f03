"""Random numbers keyed by (seed, stream, epoch, example index, draw, coordinate), not by a process-wide state.

A distributed run must draw, for example ``i`` in epoch ``e``, the same Langevin noise, the same augmentation and the
same bank start whichever rank visits it and whatever else is in its batch: that is what makes a 2-rank run equal a
1-rank run fed the same global batches. A ``torch.Generator`` seeded per example would do it but costs one generator
per example and batch; this module instead hashes the key with integer tensor operations (a counter-based generator,
in the spirit of Philox and Widynski's "squares"):

    k1, k2 = hash(seed, stream, epoch, round, draw, i)                    per example (two 32-bit words)
    h_j    = mix32(mix32(k1 ^ w_j) + k2)                                  per coordinate j, w_j = mix32(j)
    uniform in [0, 1): (h_j >> 8) / 2^24;  Gaussian: Box-Muller on two such uniforms

``mix32`` is Chris Wellons' ``lowbias32`` integer hash. Every operation works on int64 tensors holding 32-bit values
(the products are split so that nothing overflows int64), so the numbers are the same on the CPU and on any GPU,
vectorised over the batch and the coordinates, and need no state: a resumed run redraws exactly what it would have.
``draw`` numbers the draws of one visit (the T Langevin steps, the crop offsets and the flip), ``round`` Free-AT's
replays of a batch.
"""

from __future__ import annotations

import math
import zlib

import torch

from .errors import ConfigError

M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """Low 32 bits of ``x * c`` for x in [0, 2^32) (int or int64 tensor) and a 32-bit constant, without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & M32


def mix32(x):
    """The ``lowbias32`` integer hash of 32-bit values (ints or int64 tensors holding values in [0, 2^32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_words(*words: int) -> int:
    """A 32-bit hash of a sequence of non-negative integers (python ints)."""
    h = 0x9E3779B9
    for w in words:
        w = int(w)
        if w < 0:
            raise ConfigError(f"hash words must be integers >= 0, got {w}")
        while True:
            h = mix32(h ^ (w & M32))
            w >>= 32
            if not w:
                break
    return h


def stream_id(name: str) -> int:
    return zlib.crc32(name.encode())


_COORD_WORDS: dict[tuple[int, str], torch.Tensor] = {}


def _coord_words(d: int, device: torch.device) -> torch.Tensor:
    key = (d, str(device))
    w = _COORD_WORDS.get(key)
    if w is None:
        w = mix32(torch.arange(d, dtype=torch.int64, device=device) ^ 0x5BD1E995)
        if len(_COORD_WORDS) > 64:
            _COORD_WORDS.clear()
        _COORD_WORDS[key] = w
    return w


class ExampleRNG:
    """Counter-based random numbers for examples: every draw is a function of (seed, stream, epoch, round, draw,
    example index, coordinate) only.

    Args:
        seed: the run's seed.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def keys(self, stream: str, epoch: int, idx: torch.Tensor, draw: int = 0, round: int = 0, device=None):
        """Two 32-bit words per example (int64 tensors of shape ``(b, 1)``) on ``device``."""
        base = hash_words(self.seed, stream_id(stream), int(epoch), int(round), int(draw))
        idx = idx.to(device=device, dtype=torch.int64, non_blocking=True)
        k1 = mix32(mix32((idx & M32) ^ base) ^ (idx >> 32))
        k2 = mix32(k1 ^ 0x85EBCA6B)
        return k1.view(-1, 1), k2.view(-1, 1)

    def bits(self, stream, epoch, idx, d: int, draw: int = 0, round: int = 0, device=None) -> torch.Tensor:
        """``(b, d)`` 32-bit hashes (int64 tensor)."""
        k1, k2 = self.keys(stream, epoch, idx, draw, round, device)
        w = _coord_words(int(d), k1.device)
        return mix32((mix32(k1 ^ w) + k2) & M32)

    @staticmethod
    def _to_unit(h: torch.Tensor, dtype) -> torch.Tensor:
        return (h >> 8).to(dtype).mul_(2.0**-24)  # exact in float32: 24 bits

    def uniform(self, stream, epoch, idx, shape, draw=0, round=0, device=None, dtype=torch.float32) -> torch.Tensor:
        """Uniform in [0, 1), shape ``(b, *shape)``."""
        d = math.prod(shape)
        u = self._to_unit(self.bits(stream, epoch, idx, d, draw, round, device), dtype)
        return u.view(-1, *shape)

    def normal(self, stream, epoch, idx, shape, draw=0, round=0, device=None, dtype=torch.float32) -> torch.Tensor:
        """Standard Gaussian (Box-Muller), shape ``(b, *shape)``."""
        d = math.prod(shape)
        h = self.bits(stream, epoch, idx, d, draw, round, device)
        u1 = self._to_unit(h, torch.float32)
        u2 = self._to_unit(mix32(h ^ 0x68E31DA4), torch.float32)
        z = (-2.0 * torch.log1p(-u1)).sqrt_().mul_(torch.cos(u2.mul_(2 * math.pi)))
        return z.to(dtype).view(-1, *shape)

    def randint(self, stream, epoch, idx, high: int, draw=0, round=0, device=None) -> torch.Tensor:
        """Integers in [0, high), one per example (int64, shape ``(b,)``)."""
        h = self.bits(stream, epoch, idx, 1, draw, round, device).view(-1)
        return (h * int(high)) >> 32  # h < 2^32, high < 2^31: no overflow

    def visit(self, epoch: int, idx: torch.Tensor, round: int = 0) -> Visit:
        return Visit(self, int(epoch), idx, int(round))


class Visit:
    """The random numbers of one visit of a batch: what the trainer hands to the augmentation and the inner step."""

    def __init__(self, rng: ExampleRNG, epoch: int, idx: torch.Tensor, round: int = 0):
        self.rng, self.epoch, self.idx, self.round = rng, epoch, idx, round

    def uniform(self, stream, shape, draw=0, device=None, dtype=torch.float32):
        return self.rng.uniform(stream, self.epoch, self.idx, shape, draw, self.round, device, dtype)

    def normal(self, stream, shape, draw=0, device=None, dtype=torch.float32):
        return self.rng.normal(stream, self.epoch, self.idx, shape, draw, self.round, device, dtype)

    def randint(self, stream, high, draw=0, device=None):
        return self.rng.randint(stream, self.epoch, self.idx, high, draw, self.round, device)

    # ---------------------------------------------------------------- what the pieces of a training step draw
    def crop_flip(self, augment, x: torch.Tensor):
        """Crop offsets and flips of :class:`~adv_transport.augment.RandomCropFlip` for this visit."""
        from .augment import CropFlipParams

        hi = 2 * augment.padding + 1
        dy = self.randint("augment", hi, draw=0, device=x.device)
        dx = self.randint("augment", hi, draw=1, device=x.device)
        if augment.flip:
            flip = self.uniform("augment", (1,), draw=2, device=x.device).view(-1) < 0.5
        else:
            flip = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return CropFlipParams(dy, dx, flip)

    def copies(self, k: int, device=None) -> torch.Tensor | None:
        """Which of the bank's ``k`` copies each example uses (None when k = 1)."""
        return None if k == 1 else self.randint("copy", k, device=device)

    def uniform_start(self, threat, x: torch.Tensor, copy: torch.Tensor | None = None, k: int = 1) -> torch.Tensor:
        """A start uniform in the ball (l-inf: per coordinate; l2: uniform in the ball), clipped to the box, for
        each example and its ``copy`` (of ``k``): what a fresh bank row starts from."""
        shape = tuple(x.shape[1:])
        draw = 0 if copy is None or k == 1 else copy.to(x.device)
        if threat.norm == "linf":
            u = self._per_copy(self.uniform, "start", shape, draw, k, x)
            delta = u.mul_(2).sub_(1).mul_(threat.eps)
        else:
            g = self._per_copy(self.normal, "start", shape, draw, k, x)
            r = self._per_copy(self.uniform, "start-radius", (1,) * len(shape), draw, k, x)
            n = g.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, *(1,) * len(shape))
            delta = g / n * threat.eps * r ** (1.0 / math.prod(shape))
        return (x + delta).clamp(0.0, 1.0) - x

    def _per_copy(self, fn, stream, shape, draw, k, x):
        if isinstance(draw, int):
            return fn(stream, shape, draw=draw, device=x.device, dtype=x.dtype)
        # K > 1: the copy number is part of the key (one draw per copy, then picked: K is small)
        out = None
        for c in range(k):
            v = fn(stream, shape, draw=c, device=x.device, dtype=x.dtype)
            out = v if out is None else torch.where((draw == c).view(-1, *(1,) * len(shape)), v, out)
        return out

    def langevin(self) -> LangevinNoise:
        return LangevinNoise(self)


class LangevinNoise:
    """Noise for the Langevin sampler's steps of one visit: each call (one per step) is the next draw."""

    def __init__(self, visit: Visit):
        self.visit = visit
        self.draw = 0

    def noise(self, like: torch.Tensor, kind: str) -> torch.Tensor:
        shape = tuple(like.shape[1:])
        fn = self.visit.uniform if kind == "uniform" else self.visit.normal
        xi = fn("langevin", shape, draw=self.draw, device=like.device, dtype=like.dtype)
        self.draw += 1
        return xi.mul_(2).sub_(1) if kind == "uniform" else xi
