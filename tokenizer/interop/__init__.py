"""Reading other libraries' autoencoders into imgtok checkpoints, with identical outputs.

Each importer turns a foreign state dict (and config, where the library ships one) into a
``tokenizer.checkpoints.Checkpoint``; ``tokenizer.pretrained`` picks the importer from the files and key
names, so these load through ``from_pretrained`` and ``imgtok convert`` alike:

- ``diffusers.py``: diffusers ``AutoencoderKL`` / ``VQModel`` folders (and a pipeline's ``vae/``);
- ``taming.py``: taming-transformers VQGAN and LDM AutoencoderKL state dicts;
- ``llamagen.py``: LlamaGen VQ state dicts;
- ``common.py``: key renaming, reading (opt-in pickle) weight files, configs read off tensor shapes.

This package imports nothing above ``tokenizer.checkpoints``: the load path imports it, never the reverse.
"""
