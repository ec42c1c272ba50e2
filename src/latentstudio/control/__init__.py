"""ControlNet and T2I-Adapter support, as the sd-webui-controlnet extension defines it: the preprocessors
that need no weights (:mod:`preprocessors`, :mod:`preprocess_ops`), the control image's way from the request
to the network (:mod:`hint`), a request's units (:mod:`units`), the model files — their layouts, loading and
listing (:mod:`networks`, :mod:`library`) — and random-weight files in those layouts for tests and benchmarks
(:mod:`synthetic`). Applying units during sampling is :mod:`latentstudio.pipeline.control`.

Submodules are imported explicitly (``from latentstudio.control import preprocessors``); nothing is loaded
here.
"""
