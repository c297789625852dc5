"""Readable errors for values that reach the app through its API but no widget would send.

Left alone, Gradio passes a list sent to a Textbox on as its str(), "yes" sent to a Checkbox as
is, and answers text sent to a Slider, a payload of the wrong shape, or an upload that is not an
image with "The upstream Gradio app has raised an exception" and nothing else. `guard(demo)`
makes every input component check its value's type before its own preprocessing, refuses images
over the intake's megapixel limit from their header (before decoding), and turns any failure of
that preprocessing into a `gr.Error` that names the field. A user's mistake is not a server
error: these errors print no traceback in the server log.
"""
from __future__ import annotations

import math

import gradio as gr
import pydantic
from PIL import Image, UnidentifiedImageError

from engine.core.image import MAX_PIXELS

TITLE = "Please check the input"


def guard(demo: gr.Blocks) -> gr.Blocks:
    """Guard the preprocessing of every kind of input component in `demo`; returns demo.

    The guard is installed on the component classes (once per process), not on the instances:
    Gradio rebuilds a component from its class when an event sends it a property update, and a
    per-instance patch would be lost for that browser session."""
    for block in demo.blocks.values():
        if not isinstance(block, gr.components.Component):
            continue
        cls = type(block)
        if not getattr(cls.preprocess, "_guarded", False):
            cls.preprocess = _guarded(cls.preprocess)
        model = cls.__dict__.get("data_model")
        if _is_model(model):
            cls.data_model = _ModelAttribute(model)
        model = vars(block).get("data_model")  # gr.File sets its own in __init__
        if _is_model(model):
            block.data_model = _ReadableModel(model, _name(block))
    return demo


def refusal(message: str) -> gr.Error:
    return gr.Error(message, title=TITLE, print_exception=False)


def _is_model(value) -> bool:
    return isinstance(value, type) and issubclass(value, pydantic.BaseModel)


class _ModelAttribute:
    """A component class's `data_model`: the pydantic model itself on the class, a
    `_ReadableModel` naming the field on an instance (where Gradio validates payloads)."""

    def __init__(self, model: type):
        self.model = model

    def __get__(self, block, owner=None):
        return self.model if block is None else _ReadableModel(self.model, _name(block))


class _ReadableModel:
    """Stands in for a component's pydantic `data_model`, which Gradio validates a payload with
    before preprocessing: a payload of the wrong shape becomes a gr.Error naming the field."""

    def __init__(self, model: type, name: str):
        self._model, self._name = model, name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._model, attr)

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def model_validate(self, value, *args, **kwargs):
        try:
            return self._model.model_validate(value, *args, **kwargs)
        except pydantic.ValidationError as exc:
            problems = "; ".join(e.get("msg", "") for e in exc.errors()[:2])
            raise refusal(f"{self._name}: the value sent does not fit this field ({problems}), "
                          f"got {_shown(value)}") from None


def _name(block) -> str:
    label = getattr(block, "label", None)
    return str(label) if label else (getattr(block, "elem_id", None) or type(block).__name__)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _guarded(preprocess):
    def guarded_preprocess(self, payload):
        name = _name(self)
        _check_type(self, name, payload)
        try:
            return preprocess(self, payload)
        except gr.Error as exc:  # Gradio's own range / choice checks: say which field
            if str(exc.message).startswith(name):
                raise
            raise refusal(f"{name}: {exc.message}") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise refusal(f"{name}: the file could not be read as an image ({_image_problem(exc)})") from None
        except Exception as exc:
            raise refusal(f"{name}: this value could not be used ({type(exc).__name__}: {exc})") from None

    guarded_preprocess._guarded = True
    guarded_preprocess.__doc__ = preprocess.__doc__
    return guarded_preprocess


def _image_problem(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a PNG, JPEG, WebP or other image this studio reads"
    if isinstance(exc, Image.DecompressionBombError):
        return "too large to open safely"
    return f"damaged or truncated: {exc}"


def _check_type(block, name: str, payload) -> None:
    if payload is None:
        if isinstance(block, gr.Slider):  # a slider always has a value; Gradio fails on None
            raise refusal(f"{name} must be a number, got None")
        return
    if isinstance(block, (gr.Slider, gr.Number)):
        if isinstance(payload, bool) or not isinstance(payload, (int, float)):
            raise refusal(f"{name} must be a number, got {_shown(payload)}")
        if not math.isfinite(payload):
            raise refusal(f"{name} must be a finite number, got {payload}")
    elif isinstance(block, gr.Checkbox):
        if not isinstance(payload, bool):
            raise refusal(f"{name} must be true or false, got {_shown(payload)}")
    elif isinstance(block, gr.CheckboxGroup):
        if not isinstance(payload, (list, tuple)):
            raise refusal(f"{name} must be a list of choices, got {_shown(payload)}")
    elif isinstance(block, gr.Textbox):
        if not isinstance(payload, str):
            raise refusal(f"{name} must be text, got {type(payload).__name__} {_shown(payload)}")
    elif isinstance(block, (gr.Image, gr.ImageEditor)):
        for path in _paths(payload):
            _check_pixels(name, path)


def _paths(payload):
    """The file paths inside an Image / ImageEditor payload (FileData or EditorData)."""
    if isinstance(payload, (list, tuple)):
        for item in payload:
            yield from _paths(item)
        return
    path = getattr(payload, "path", None)
    if isinstance(path, str):
        yield path
        return
    for key in ("background", "composite", "layers"):
        if hasattr(payload, key):
            yield from _paths(getattr(payload, key))


def _check_pixels(name: str, path: str) -> None:
    """Refuse an image over the intake's limit from its header, before it is decoded."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise refusal(f"{name}: the file could not be read as an image ({_image_problem(exc)})") from None
    if width * height > MAX_PIXELS:
        raise refusal(f"{name}: the image is {width}x{height} pixels, more than the "
                      f"{MAX_PIXELS // 1_000_000} megapixels this studio accepts")
