"""The A1111 prompt language (pure parsing, re-exported here) and text conditioning (``conditioning``)."""

from latentstudio.prompts.attention import parse_attention
from latentstudio.prompts.editing import schedules
from latentstudio.prompts.errors import PromptError
from latentstudio.prompts.networks import HypernetTag, LoraTag, extract_networks, hypernet_tags, lora_tags
from latentstudio.prompts.parser import split_and, strip_comments
from latentstudio.prompts.styles import Style, apply_styles, extract_styles, load_styles

__all__ = [
    "HypernetTag",
    "LoraTag",
    "PromptError",
    "Style",
    "apply_styles",
    "extract_networks",
    "extract_styles",
    "hypernet_tags",
    "load_styles",
    "lora_tags",
    "parse_attention",
    "schedules",
    "split_and",
    "strip_comments",
]
