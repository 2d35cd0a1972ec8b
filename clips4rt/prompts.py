"""Prompts: the class names users pass (``check_classes``) and the templates they are
put into (the 80 ImageNet templates of CLIP, averaged per class)."""

from clips4rt.tokenizer import clean_text

MAX_CLASSES = 10_000  # class + background names per call
MAX_NAME_CHARS = 1000  # characters of one class name or template

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.",
    "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.",
    "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip
assert len(IMAGENET_TEMPLATES) == 80

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def check_templates(templates) -> tuple[str, ...]:
    """Validate prompt templates: a non-empty sequence of strings holding one '{}'."""
    if isinstance(templates, str) or not templates:
        raise ValueError("templates must be a non-empty list of strings like 'a photo of a {}.'")
    out = tuple(templates)
    for t in out:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"template {t!r} must be a string with exactly one '{{}}'")
    return out


def check_classes(classes) -> list[str]:
    """Validate class names: a non-empty list (at most ``MAX_CLASSES``) of distinct,
    printable strings of at most ``MAX_NAME_CHARS`` characters that the text model can
    tell apart. Returns them as a list; raises TypeError/ValueError naming the fix."""
    if isinstance(classes, str):
        raise TypeError(f"classes must be a list of names, e.g. {classes.split(',')!r}")
    try:
        classes = list(classes)
    except TypeError:
        raise TypeError(
            f"classes must be a list of strings, got {type(classes).__name__}"
        ) from None
    if not classes:
        raise ValueError("classes is empty: give at least one class name")
    if len(classes) > MAX_CLASSES:
        raise ValueError(
            f"{len(classes)} class names, over the limit of {MAX_CLASSES} per call "
            "(clips4rt.prompts.MAX_CLASSES); split the vocabulary over several calls"
        )
    for i, c in enumerate(classes):
        if not isinstance(c, str):
            raise TypeError(f"class names must be strings; classes[{i}] is {type(c).__name__}")
        if not c.strip():
            raise ValueError(f"classes[{i}] is an empty name")
        if any("\ud800" <= ch <= "\udfff" for ch in c):
            raise ValueError(
                f"classes[{i}] = {c!r} holds a lone surrogate (text decoded with "
                "errors='surrogateescape'?); decode it as UTF-8 first"
            )
        if not clean_text(c):
            raise ValueError(f"classes[{i}] = {c!r} has no printable characters")
        if len(c) > MAX_NAME_CHARS:
            raise ValueError(
                f"classes[{i}] has {len(c)} characters, over the limit of {MAX_NAME_CHARS} "
                "(the text graph reads only its first ~75 tokens anyway)"
            )
    seen: set[str] = set()
    dupes = sorted({c for c in classes if c in seen or seen.add(c)})
    if dupes:
        # Refused rather than merged: labels index into `classes`, so a silent
        # merge would shift every index after the duplicate.
        raise ValueError(f"duplicate class names {dupes}: give each class once")
    first: dict[str, str] = {}
    for c in classes:  # names the text model cannot tell apart (it lower-cases, ...)
        other = first.setdefault(clean_text(c), c)
        if other != c:
            raise ValueError(
                f"class names {other!r} and {c!r} are the same text to the model (it "
                "lower-cases and normalises): one of them could never win; give it once"
            )
    return classes
