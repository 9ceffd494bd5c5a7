"""Continuous convolution layers (From Discrete to Continuous Convolution Layers, Shocher et al. 2020).

* :class:`CCConv2d`: a convolution whose filter is a learned function of sub-pixel offsets and scale,
  applied on the centred grid at any output size or scale chosen per call (a conv at scale 1, a learned
  resize otherwise).
* :class:`ContinuousFilter`, :class:`FourierFeatures`: the default filter MLP and its offset encoding.
* :class:`InterpolationFilter`: bicubic (antialiased when downscaling) as a prior plus a learned correction,
  for CC layers used as learned resize layers.
* :mod:`vision_kernels.nn.resize_example`: a tiny CC network learning arbitrary-scale resizing on
  skimage's sample images, evaluated at scales it never saw (PSNR against bicubic).
"""

from .cc_conv import CCConv2d, ContinuousFilter, FourierFeatures, InterpolationFilter, cubic

__all__ = ["CCConv2d", "ContinuousFilter", "FourierFeatures", "InterpolationFilter", "cubic"]
