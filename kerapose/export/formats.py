"""The export capability table: one row per format, read by the CLI, the docs and the tests.

:data:`FORMATS` says, for each format, what it writes (file suffix, "" = a directory), which
``quantize`` options it takes (the first is the default), whether the decoding (NMS, PRN, ...) can
be inside the exported graph (``end_to_end``), which options need calibration images, the module
and function that export it, and the runtime that runs the result. :func:`export_model`
dispatches on it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "COMMON_OPTIONS",
    "ExportFormat",
    "FORMATS",
    "capability_markdown",
    "export_model",
    "format_names",
    "get_format",
]

# Options every exporter takes (export_model passes them through).
COMMON_OPTIONS = ("score_threshold", "iou_threshold", "overwrite")


@dataclass(frozen=True)
class ExportFormat:
    """One export format and what it can do."""

    name: str
    suffix: str  # "" = the output is a directory
    quantize: tuple[str, ...]  # accepted quantize options, the default first
    end_to_end: bool  # decoding can be in the graph (uint8 image in, poses out)
    end_to_end_quantize: tuple[str, ...]  # the quantize options that work with end_to_end=True
    calibration: tuple[str, ...]  # quantize options that need real images (int8 calibration; checks vs float32)
    module: str
    function: str
    options: tuple[str, ...]  # format-specific keyword options, beyond COMMON_OPTIONS
    runtime: str  # what runs the result
    runner: str | None  # the kerapose runner class in `module` for the result (None: none)
    # quantize options that take real images if given, to check the export against float32 on them
    optional_calibration: tuple[str, ...] = ()

    @property
    def is_directory(self) -> bool:
        return self.suffix == ""

    @property
    def default_quantize(self) -> str:
        return self.quantize[0]

    def check_quantize(self, quantize: str | None) -> str:
        """The quantize option to use (None = the default); ValueError naming the accepted ones."""
        if quantize is None:
            return self.default_quantize
        if quantize not in self.quantize:
            raise ValueError(f"format {self.name!r} does not accept quantize={quantize!r}; "
                             f"accepted: {', '.join(self.quantize)}")
        return quantize

    def check_end_to_end(self, quantize: str | None) -> None:
        """ValueError where this format cannot hold the decoding with ``quantize``."""
        quantize = self.check_quantize(quantize)
        if not self.end_to_end:
            raise ValueError(f"format {self.name!r} cannot hold the decoding in its graph (end_to_end=True)")
        if quantize not in self.end_to_end_quantize:
            raise ValueError(f"format {self.name!r} quantize={quantize!r} does not work with end_to_end=True "
                             f"(it would quantize the decoder's coordinates and NMS); accepted with end_to_end: "
                             f"{', '.join(self.end_to_end_quantize)}; export the raw network for {quantize}")

    def needs_calibration(self, quantize: str | None = None) -> bool:
        return self.check_quantize(quantize) in self.calibration

    def takes_calibration(self, quantize: str | None = None) -> bool:
        """Whether ``quantize`` uses calibration images (required or, for the check, optional)."""
        quantize = self.check_quantize(quantize)
        return quantize in self.calibration or quantize in self.optional_calibration

    def output_path(self, stem: str) -> str:
        """The conventional output name for ``stem`` (``model`` -> ``model.onnx``, ``model`` for dirs)."""
        return stem if self.is_directory or stem.endswith(self.suffix) else stem + self.suffix

    def exporter(self) -> Callable[..., str]:
        return getattr(importlib.import_module(self.module), self.function)


FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat(
        name="savedmodel", suffix="", quantize=("none",), end_to_end=True, end_to_end_quantize=("none",),
        calibration=(),
        module="kerapose.export.savedmodel", function="export_savedmodel", options=("version",),
        runtime="TensorFlow / TF Serving (tf.saved_model.load)", runner=None,
    ),
    ExportFormat(
        name="tflite", suffix=".tflite", quantize=("none", "fp16", "dynamic", "int8"), end_to_end=True,
        end_to_end_quantize=("none", "fp16", "dynamic", "int8"), calibration=("dynamic", "int8"),
        module="kerapose.export.tflite", function="export_tflite",
        options=("num_calibration", "integer_io"), runtime="LiteRT / ai-edge-litert (builtin ops only)",
        runner="TFLiteRunner", optional_calibration=("fp16",),
    ),
    ExportFormat(
        name="onnx", suffix=".onnx", quantize=("none", "int8"), end_to_end=True, end_to_end_quantize=("none", "int8"),
        calibration=("int8",),
        module="kerapose.export.onnx", function="export_onnx", options=("opset", "num_calibration"),
        runtime="ONNX Runtime (CPU, CUDA, TensorRT execution providers), trtexec", runner="OnnxRunner",
    ),
    ExportFormat(
        name="tftrt", suffix="", quantize=("fp32", "fp16"), end_to_end=True, end_to_end_quantize=("fp32", "fp16"),
        calibration=(),
        module="kerapose.export.tftrt", function="export_tftrt", options=(),
        runtime="TensorFlow built with TensorRT, NVIDIA GPU", runner=None,
    ),
)


def format_names() -> list[str]:
    return [f.name for f in FORMATS]


def get_format(name: str) -> ExportFormat:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise ValueError(f"unknown export format {name!r}; accepted: {', '.join(format_names())}")


def capability_markdown() -> str:
    """The capability table as Markdown (docs/export.md embeds it; a test keeps the two equal)."""
    rows = [
        "| format | writes | quantize (default first) | end-to-end graph | calibration images | module | runs on |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in FORMATS:
        writes = "directory" if f.is_directory else f"`*{f.suffix}` file"
        e2e = ("yes: " + ", ".join(f.end_to_end_quantize)) if f.end_to_end else "no"
        calib = ", ".join(f.calibration) or "-"
        if f.optional_calibration:
            calib += f" (optional, to check it: {', '.join(f.optional_calibration)})"
        runner = f" (`{f.runner}`)" if f.runner else ""
        rows.append(f"| `{f.name}` | {writes} | {', '.join(f.quantize)} | {e2e} | {calib} | "
                    f"`{f.module}`{runner} | {f.runtime} |")
    return "\n".join(rows) + "\n"


def export_model(
    model,
    fmt: str,
    output: str,
    quantize: str | None = None,
    end_to_end: bool = False,
    input_size: tuple[int, int] | None = None,
    calibration_images=None,
    max_people: int = 20,
    **options,
) -> str:
    """Export ``model`` (a Keras model, or a kerapose SavedModel directory for the converters) to
    ``fmt`` at ``output``; returns the path written.

    Args:
        fmt: a name in :data:`FORMATS`.
        quantize: one of the format's quantize options (None = its default).
        end_to_end: export the model with decoding in the graph (``model.end_to_end``).
        input_size: the network input (H, W); default the model's static size, else 480x480.
        calibration_images: real images for the quantize options that need them (``FORMATS[i].calibration``:
            int8 calibrates on them; every such export is checked against float32 on them).
        max_people: padded number of people of the end-to-end outputs.
        options: ``score_threshold``, ``iou_threshold``, ``overwrite`` and the format's own
            options (``FORMATS[i].options``).
    """
    spec = get_format(fmt)
    quantize = spec.check_quantize(quantize)
    if end_to_end:
        spec.check_end_to_end(quantize)
    accepted = COMMON_OPTIONS + spec.options
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"format {spec.name!r} does not take option(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted)}")
    if spec.needs_calibration(quantize):
        if calibration_images is None:
            raise ValueError(f"{spec.name} quantize={quantize!r} needs calibration_images (a directory or a list "
                             f"of image paths/arrays): real images to check the export against float32 on"
                             + (", and to calibrate on" if quantize == "int8" else ""))
        options["calibration_images"] = calibration_images
    elif quantize in spec.optional_calibration:
        if calibration_images is not None:
            options["calibration_images"] = calibration_images
        else:
            print(f"[kerapose] {spec.name} {quantize}: not compared with float32 (pass calibration images, "
                  f"--calibration-data DIR, to check how well its people agree)", flush=True)
    elif calibration_images is not None:
        users = ", ".join(spec.calibration + spec.optional_calibration) or "none of its options"
        raise ValueError(f"calibration_images are not used by {spec.name} quantize={quantize!r}; "
                         f"only by quantize: {users}")
    return spec.exporter()(model, output, quantize=quantize, end_to_end=end_to_end, input_size=input_size,
                           max_people=max_people, **options)
