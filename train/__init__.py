"""imgtok training: ``python -m train --preset vq-f8 --data DIR --out RUN_DIR``.

Losses, the discriminator and the loop live here; the library (``tokenizer``) never imports them.
"""

from .config import TrainConfig
from .loop import Trainer, run

__all__ = ["TrainConfig", "Trainer", "run"]
