"""Space-time patch nearest neighbours: exact search, PatchMatch, voting (GPNN / VGPNN kernels).

One module per op: :mod:`.exact` (``patch_nn``), :mod:`.vote` (``patch_vote``), :mod:`.match`
(``patch_match``); :mod:`._common` holds what they share (results, patch geometry, checks, policies).

Inputs are ``[T, H, W, C]`` arrays (videos; an image is ``T = 1``, and ``[H, W, C]`` images are
accepted and give 2-D results). A patch of size ``(pt, ph, pw)`` at grid position ``(t, y, x)``
holds ``x[t + dt, y + dy, x + dx, c]``; positions form the grid ``[T - pt + 1, H - ph + 1, W - pw + 1]``
numbered row-major (the *flat index*). Patches are read straight from the input (implicit im2col):
no unfolded copy is made.

The distance is the mean squared difference over the ``n = pt * ph * pw * C`` patch values,

    D(q, k) = ssd(q, k) / n,        ssd(q, k) = sum_e (q_e - k_e)^2,

in float64, summed in patch order (pixels are expected in [0, 1]; ``alpha`` is on that scale).
With ``alpha`` the score is GPNN's normalized distance

    S(q, k) = D(q, k) / (alpha + min_q' D(q', k)),

which favours keys that no query is close to yet (completeness), evaluated exactly as
``ssd(q, k) * w(k)`` with ``w(k) = 1 / (alpha * n + min_q' ssd(q', k))`` (each step rounded to float64);
``alpha=None`` is plain nearest neighbour. The exact search returns exactly what the brute-force
reference (:func:`vision_kernels.reference.patch_nn.patch_nn`) returns, ties going to the lowest key
index.
"""

from __future__ import annotations

from ._common import PatchNNResult, normalize_patch_size, patch_grid_shape, valid_patch_mask, validate_alpha
from .exact import patch_nn
from .match import patch_match
from .vote import default_vote_sigma, patch_vote

__all__ = [
    "PatchNNResult",
    "patch_nn",
    "patch_match",
    "patch_vote",
    "normalize_patch_size",
    "patch_grid_shape",
    "valid_patch_mask",
    "default_vote_sigma",
    "validate_alpha",
]
