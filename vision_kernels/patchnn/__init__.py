"""GPNN (Granot et al., "Drop the GAN: In Defense of Patches Nearest Neighbors as Single Image
Generative Models", CVPR 2022) on the patch_nn kernels, written for ``[T, H, W, C]`` so that VGPNN
(single-video generation) reuses it.

    from vision_kernels.patchnn import generate, read_image, write_image
    image = read_image("balloons.png")              # float32 [H, W, 3] in [0, 1]
    write_image("sample.png", generate(image, seed=1))

Applications: :func:`generate`, :func:`retarget`, :func:`analogy`, :func:`inpaint`, :func:`collage`,
:func:`edit`; the command line ``vision-kernels gpnn generate|retarget|analogy|inpaint|collage|edit``.

VGPNN (Haim et al., "Diverse Generation from a Single Video Made Possible", ECCV 2022) on the same
machinery, for float ``[T, H, W, C]`` videos with 3x7x7 space-time patches::

    from vision_kernels.patchnn import generate_video, read_video, write_video
    video, fps = read_video("clip.mp4", max_side=144)   # float32 [T, H, W, 3] in [0, 1]
    write_video("sample.mp4", generate_video(video, seed=1, size=(2 * video.shape[0], 144, 256)), fps)

:func:`generate_video`, :func:`retarget_video`, :func:`analogy_video`, :func:`inpaint_video`;
``vision-kernels vgpnn generate|retarget|analogy|inpaint``.
The machinery: :class:`GPNNConfig`, :func:`synthesize`, :func:`pnn_step`, the pyramid in
:mod:`vision_kernels.patchnn.pyramid`, search backends in :mod:`vision_kernels.patchnn.search`.
"""

from .apps import analogy, collage, edit, generate, inpaint, retarget
from .gpnn import INITIAL_GUESSES, GPNNConfig, as_video, initial_guess, pnn_step, pyramid_plan, synthesize
from .image_io import read_image, read_mask, write_image, write_mask
from .metrics import SampleMetrics, diversity, identity_fraction, mean_patch_distance, sample_metrics
from .pyramid import build_pyramid, pyramid_shapes, resize
from .samples import moving_shapes
from .search import choose_search, faiss_patch_nn, search_patches
from .video import (
    analogy_video,
    frame_difference_motion,
    generate_video,
    inpaint_video,
    retarget_video,
    video_config,
)
from .video_io import read_video, read_video_mask, write_frame_strip, write_video

__all__ = [
    "GPNNConfig",
    "INITIAL_GUESSES",
    "SampleMetrics",
    "diversity",
    "identity_fraction",
    "initial_guess",
    "sample_metrics",
    "analogy",
    "analogy_video",
    "as_video",
    "build_pyramid",
    "choose_search",
    "collage",
    "edit",
    "faiss_patch_nn",
    "frame_difference_motion",
    "generate",
    "generate_video",
    "inpaint",
    "inpaint_video",
    "mean_patch_distance",
    "moving_shapes",
    "pnn_step",
    "pyramid_plan",
    "pyramid_shapes",
    "read_image",
    "read_mask",
    "read_video",
    "read_video_mask",
    "resize",
    "retarget",
    "retarget_video",
    "search_patches",
    "synthesize",
    "video_config",
    "write_frame_strip",
    "write_image",
    "write_mask",
    "write_video",
]
