"""imgtok: images <-> grids of discrete tokens (VQ tokenizer) or continuous latents (VAE).

    from tokenizer import ImageTokenizer
    tok = ImageTokenizer.from_pretrained()   # the bundled default model
    ids = tok.encode("photo.jpg")            # (h, w) long
    img = tok.decode(ids)                    # (3, H, W) float in [0, 1]
"""

from .api import ImageAE, ImageTokenizer, ImageVAE, load_any
from .config import AEConfig, AutoencoderConfig, ConfigError, KLConfig, VQConfig
from .image_io import ImageError
from .models import AEModel, DiagonalGaussian, KLModel, VQModel, build_model
from .presets import PRESETS, get_preset
from .checkpoints import WeightsError
from .quantizer import QuantizerOutput, VectorQuantizer
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
    "TokenLayout",
    "Segment",
    "SequenceError",
    "__version__",
]
