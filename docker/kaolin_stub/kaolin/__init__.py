"""Stand-in for NVIDIA kaolin inside the appliance image.

TRELLIS (microsoft/TRELLIS) imports exactly one thing from kaolin: `kaolin.utils.testing.check_tensor`, used by
its FlexiCubes mesh extraction. The real kaolin wheel is tied to one torch/CUDA pair and is large; this package
provides that one function with kaolin's semantics and nothing else.
"""

__version__ = "0.0.0+chat3d-stub"
