"""imgtok: images <-> grids of discrete tokens (VQ tokenizer) or continuous latents (VAE).

    from tokenizer import ImageTokenizer
    tok = ImageTokenizer.from_pretrained()   # the bundled default model
    ids = tok.encode("photo.jpg")            # (h, w) long
    img = tok.decode(ids)                    # (3, H, W) float in [0, 1]
"""

from .api import ImageAE, ImageTokenizer, ImageVAE, load_any
from .config import (AEConfig, AutoencoderConfig, BSQConfig, ConfigError, FSQConfig, KLConfig, LFQConfig,
                     QuantizerConfig, ResidualVQConfig, VectorQuantizerConfig, VQConfig)
from .image_io import ImageError
from .models import AEModel, DiagonalGaussian, KLModel, VQModel, build_model
from .presets import PRESETS, get_preset
from .checkpoints import WeightsError
from .fsq import FiniteScalarQuantizer
from .lfq import BinarySphericalQuantizer, LookupFreeQuantizer
from .quantizer import QuantizerOutput, VectorQuantizer
from .quantizers import build_quantizer
from .rvq import ResidualVectorQuantizer
from .sequence import Segment, SequenceError, TokenLayout

__version__ = "0.1.0"
# A marker that distinguishes this package from unrelated PyPI packages also imported as `tokenizer`.
IMGTOK = True

__all__ = [
    "ImageTokenizer",
    "ImageVAE",
    "ImageAE",
    "load_any",
    "AEConfig",
    "AutoencoderConfig",
    "ConfigError",
    "KLConfig",
    "VQConfig",
    "QuantizerConfig",
    "VectorQuantizerConfig",
    "FSQConfig",
    "LFQConfig",
    "BSQConfig",
    "ResidualVQConfig",
    "ImageError",
    "WeightsError",
    "AEModel",
    "DiagonalGaussian",
    "KLModel",
    "VQModel",
    "build_model",
    "PRESETS",
    "get_preset",
    "QuantizerOutput",
    "VectorQuantizer",
    "FiniteScalarQuantizer",
    "LookupFreeQuantizer",
    "BinarySphericalQuantizer",
    "ResidualVectorQuantizer",
    "build_quantizer",
    "TokenLayout",
    "Segment",
    "SequenceError",
    "__version__",
]
