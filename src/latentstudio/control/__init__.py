"""ControlNet support that needs no weights: the sd-webui-controlnet preprocessors that are pure image
operations (canny, blur, scribble_xdog, shuffle, tile, color, recolor …), as functions over numpy images.

Submodules are imported explicitly (``from latentstudio.control import preprocessors``); nothing is loaded
here.
"""
