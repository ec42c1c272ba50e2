"""Post-processing: upscalers (spandrel), extras (A1111 ``extra-single-image`` / ``extra-batch-images``),
face restoration, the optional safety checker and tiled VAE encode/decode.

Submodules are imported explicitly (``from latentstudio.postprocess import upscalers``); nothing is
loaded here.
"""
