"""The fast inference path: same shapes and API, fp32 quantizer, weights saved unchanged."""

from __future__ import annotations

import torch

from tokenizer import ImageTokenizer, ImageVAE
from tokenizer.fast import InferenceOptions, bf16_supported


def test_fast_tokenizer_keeps_shapes_and_mostly_the_ids(tiny_tokenizer, tmp_path):
    images = torch.rand(2, 3, 30, 36)
    ids32 = tiny_tokenizer.encode(images)
    before = {k: v.clone() for k, v in tiny_tokenizer.state_dict().items()}
    fast = tiny_tokenizer.optimize_for_inference(bf16=True, channels_last=True)
    assert fast is tiny_tokenizer
    assert fast.inference == InferenceOptions(torch.bfloat16, True, False)
    ids = fast.encode(images)
    assert ids.shape == ids32.shape == (2, 15, 18) and ids.dtype == torch.long
    # bf16 rounding in the encoder may move a few latents across a code boundary, not most of them.
    assert (ids == ids32).double().mean() > 0.8
    out = fast.decode(ids, size=(30, 36))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 30, 36) and 0 <= out.min() <= out.max() <= 1
    assert fast.model.quantizer.codebook.dtype == torch.float32
    # Saving writes the same fp32 weights as before the switch.
    reloaded = ImageTokenizer.from_pretrained(fast.save_pretrained(tmp_path / "fast"))
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, before[key]), key
    # Switching back gives the fp32 path's ids exactly.
    fast.optimize_for_inference(bf16=False, channels_last=False)
    assert torch.equal(fast.encode(images), ids32)


def test_fast_vae_and_bf16_detection(tiny_vae):
    image = torch.rand(3, 20, 24)
    z32 = tiny_vae.encode(image)
    z = tiny_vae.optimize_for_inference(bf16=True).encode(image)
    assert z.dtype == torch.float32 and z.shape == z32.shape
    assert torch.allclose(z, z32, atol=0.1)
    assert tiny_vae.decode(z, size=(20, 24)).shape == (3, 20, 24)
    assert isinstance(bf16_supported("cpu"), bool)
    assert ImageVAE.from_preset("kl-tiny").optimize_for_inference(bf16=False).inference.autocast_dtype is None
