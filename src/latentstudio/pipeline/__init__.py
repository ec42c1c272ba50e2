"""GenerationParams → images: txt2img, img2img, infotext, image saving."""
