"""Loading other libraries' autoencoders into imgtok, with identical outputs.

- diffusers ``AutoencoderKL`` / ``VQModel`` folders (and a pipeline's ``vae/``) load directly through
  ``ImageVAE.from_pretrained`` / ``ImageTokenizer.from_pretrained`` (see ``diffusers.py``).
- taming-transformers VQGAN, LDM AutoencoderKL and LlamaGen VQ weights are converted with
  ``imgtok convert SRC DST`` (``convert.py``); their pickled ``.ckpt`` / ``.pt`` files only with
  ``--allow-pickle``.
"""

from .common import Imported
from .convert import ConvertResult, convert, load_checkpoint
from .diffusers import diffusers_folder, load_diffusers_folder

__all__ = ["Imported", "ConvertResult", "convert", "load_checkpoint", "diffusers_folder", "load_diffusers_folder"]
