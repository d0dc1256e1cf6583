"""Class names and prompt templates, as LanguageBind's evaluation scripts use them.

- Depth (``d_cls``): OpenAI's 80 ImageNet templates with "photo" made "depth photo".
- Infrared (``t_cls``): OpenAI's 80 ImageNet templates unchanged (a "thermal infrared photo" variant
  sits commented out in the official file; the active one is the plain list).
- Audio (``a_cls``): the single template "a sound of {}." for ESC-50 and AudioSet.
- Image (``i_cls``): OpenAI's 80 ImageNet templates.
- Each class is the mean of its normalised template embeddings (CLIP's ensembling).

The class lists are the official ones, in the official order (``CLASSNAMES`` of ``d_cls`` and
``t_cls``; ESC-50's in ``a_cls``, which are ESC-50's categories with "_" made " ").
"""

from __future__ import annotations

# OpenAI CLIP's 80 prompt templates for ImageNet (CLIP's "Prompt_Engineering_for_ImageNet" notebook).
OPENAI_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
DEPTH_TEMPLATES: tuple[str, ...] = tuple(t.replace("photo", "depth photo") for t in OPENAI_TEMPLATES)
INFRARED_TEMPLATES = OPENAI_TEMPLATES
AUDIO_TEMPLATES: tuple[str, ...] = ("a sound of {}.",)
IMAGE_TEMPLATES = OPENAI_TEMPLATES

ESC50_CLASSES: tuple[str, ...] = (
    "airplane",
    "breathing",
    "brushing teeth",
    "can opening",
    "car horn",
    "cat",
    "chainsaw",
    "chirping birds",
    "church bells",
    "clapping",
    "clock alarm",
    "clock tick",
    "coughing",
    "cow",
    "crackling fire",
    "crickets",
    "crow",
    "crying baby",
    "dog",
    "door wood creaks",
    "door wood knock",
    "drinking sipping",
    "engine",
    "fireworks",
    "footsteps",
    "frog",
    "glass breaking",
    "hand saw",
    "helicopter",
    "hen",
    "insects",
    "keyboard typing",
    "laughing",
    "mouse click",
    "pig",
    "pouring water",
    "rain",
    "rooster",
    "sea waves",
    "sheep",
    "siren",
    "sneezing",
    "snoring",
    "thunderstorm",
    "toilet flush",
    "train",
    "vacuum cleaner",
    "washing machine",
    "water drops",
    "wind",
)
NYU_CLASSES: tuple[str, ...] = (
    "bathroom",
    "bedroom",
    "bookstore",
    "classroom",
    "dining room",
    "home office",
    "kitchen",
    "living room",
    "office",
    "others",
)
SUN_CLASSES: tuple[str, ...] = (
    "bathroom",
    "bedroom",
    "classroom",
    "computer room",
    "conference room",
    "corridor",
    "dining area",
    "dining room",
    "discussion area",
    "furniture store",
    "home office",
    "kitchen",
    "lab",
    "lecture theatre",
    "library",
    "living room",
    "office",
    "rest space",
    "study space",
)
LLVIP_CLASSES: tuple[str, ...] = ("background", "people")
FLIR_V1_CLASSES: tuple[str, ...] = ("bicycle", "car", "dog", "person")
FLIR_V2_CLASSES: tuple[str, ...] = (
    "bike",
    "bus",
    "car or pick-up trucks or vans",
    "hydrant",
    "traffic light",
    "motor",
    "construction equipment or trailers",
    "person",
    "sign",
    "skateboard",
    "stroller or pram",
    "semi truck or freight truck",
)

# Folder (or annotation category) names of the reformatted and public layouts -> the class names
# above, where they differ beyond case and "_" vs " ".
FOLDER_ALIASES: dict[str, dict[str, str]] = {
    "llvip": {"person": "people"},
    "flir_v2": {
        "car": "car or pick-up trucks or vans",
        "light": "traffic light",
        "other vehicle": "construction equipment or trailers",
        "stroller": "stroller or pram",
        "truck": "semi truck or freight truck",
    },
}


def normalise_name(name: str) -> str:
    """``Dining_Room`` -> ``dining room``: how folder names are matched to class names."""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())
