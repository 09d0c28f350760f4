"""TensorFlow-Serving-compatible REST server (FastAPI + uvicorn) for kerapose SavedModels.

Endpoints (same paths, bodies and error shape ``{"error": "..."}`` as TF Serving's REST API):

- ``GET  /v1/models/NAME[/versions/V]``            model version status
- ``GET  /v1/models/NAME[/versions/V]/metadata``   ``serving_default`` signature
- ``POST /v1/models/NAME[/versions/V]:predict``    row (``instances``) or columnar (``inputs``)
- ``POST /v1/models/NAME[/versions/V]:pose``       kerapose extra: encoded image in, people out

Difference from TF Serving, on purpose: ``{"b64": ...}`` sent to a uint8 input is an *encoded*
JPEG/PNG that is decoded here to RGB uint8 ``[H, W, 3]`` (kerapose exports take ``image`` uint8
``[batch, H, W, 3]``). Real TF Serving turns ``b64`` into DT_STRING bytes only, so its clients
send nested-list pixels; those are accepted here too.

Model calls run in a thread pool (optionally through :class:`DynamicBatcher`); request bodies,
decoded image sizes and per-request time are bounded; the server binds 127.0.0.1 by default.

Errors: a request that does not parse or validate, whatever its nesting, size, encoding or
types (non-UTF-8 bytes, NaN/Infinity or numbers beyond the input's dtype, ragged lists, wrong
types at any level), gets a 4xx with ``{"error": "..."}``; a 5xx means a fault of the server
itself, logged with its traceback, and the client gets a short message without internals.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from kerapose.export.metadata import require_end_to_end
from kerapose.serving.arguments import add_serve_arguments  # noqa: F401 - re-exported; defined without TF
from kerapose.serving.batching import BatchingOptions, DynamicBatcher, load_batching_config
from kerapose.serving.client import people_from_outputs
from kerapose.serving.models import (
    SIGNATURE_KEY,
    LoadedVersion,
    ModelNotFoundError,
    ModelRepository,
    valid_model_name,
)

log = logging.getLogger("kerapose.serving")

_ROUTE_RE = re.compile(
    r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?:/(?P<labels>labels)/[^/:]+)?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?"
)


@dataclass(frozen=True)
class ServerOptions:
    """Limits and tuning knobs of the embedded server."""

    poll_interval: float = 2.0  # seconds between model directory scans (0 disables polling)
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # per decoded image (H * W)
    request_timeout: float = 30.0  # seconds per request: body, decoding, queueing, model call
    threads: int = 4  # model-call thread pool size
    batching: BatchingOptions | None = None  # None: no dynamic batching

    def __post_init__(self):
        for name in ("max_body_bytes", "max_image_pixels", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout: expected > 0, got {self.request_timeout}")
        if self.poll_interval < 0:
            raise ValueError(f"poll_interval: expected >= 0, got {self.poll_interval}")


class ApiError(Exception):
    """An error reply: HTTP status and TF-Serving-style message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- image decoding ------------------------------------------------------------------------------
def _image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) read from a PNG/JPEG header without decoding, or None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return h, w
            i += 2 + length
    return None


def _too_big(where: str, h: int, w: int, max_pixels: int) -> str:
    return f"{where}: image of {h}x{w} pixels exceeds the limit of {max_pixels} pixels"


def decode_image(data: bytes, max_pixels: int, where: str = "image") -> np.ndarray:
    """Encoded JPEG/PNG/GIF/BMP/WebP -> RGB uint8 ``[H, W, 3]``.

    The header is checked against ``max_pixels`` before decoding so a small file that claims a
    huge image (a decompression bomb) is refused with 413 without allocating it.
    """
    size = _image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ApiError(413, _too_big(where, size[0], size[1], max_pixels))
    # TF's decoder, so pixels match tf.io.decode_jpeg/decode_png (what an in-graph decode gives).
    try:
        rgb = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError):
        raise ApiError(400, f"{where}: b64 bytes are not a decodable image (expected JPEG or PNG)") from None
    if rgb.shape[0] * rgb.shape[1] > max_pixels:
        raise ApiError(413, _too_big(where, rgb.shape[0], rgb.shape[1], max_pixels))
    return rgb


def _b64(value: dict, where: str) -> bytes:
    if not isinstance(value["b64"], str):
        raise ApiError(400, f"{where}: 'b64' must be a base64 string, got {type(value['b64']).__name__}")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{where}: invalid base64 in 'b64' ({exc})") from None


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


# -- JSON <-> arrays -----------------------------------------------------------------------------
_MAX_DIMS = 64  # numpy's limit on array dimensions


def _object_problem(arr: np.ndarray) -> str:
    """Why nested JSON lists did not make a numeric array (numpy fell back to objects)."""
    items = arr.reshape(-1)
    if any(isinstance(v, dict) for v in items):
        return "expected numbers, got an object"
    if any(isinstance(v, list) for v in items):
        return "nested lists are ragged or mix lists with numbers (every row must have the same length)"
    if any(v is None for v in items):
        return "null is not a number"
    if any(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return "integers out of range (beyond 64 bits)"
    return "expected nested lists of numbers, got mixed types"


def _to_array(value, dtype: tf.DType, where: str, max_pixels: int) -> np.ndarray:
    """One JSON value (nested lists / scalars / {"b64"}) -> numpy array of the input's dtype."""
    if _is_b64(value):
        data = _b64(value, where)
        if dtype == tf.uint8:
            return decode_image(data, max_pixels, where)
        if dtype == tf.string:
            return np.array(data, dtype=object)
        raise ApiError(
            400, f"{where}: 'b64' values are only accepted for uint8 image or string inputs, this input is "
                 f"{dtype.name} (a raw-network export: `kerapose export` without --raw writes the end-to-end graph, "
                 f"which takes encoded images)")
    if isinstance(value, list) and any(_is_b64(v) or isinstance(v, list) and v and _is_b64(v[0]) for v in value):
        parts = [_to_array(v, dtype, f"{where}[{i}]", max_pixels) for i, v in enumerate(value)]
        shapes = {p.shape for p in parts}
        if len(shapes) != 1:
            raise ApiError(400, f"{where}: all elements must have the same shape, got {sorted(shapes)}")
        return np.stack(parts)
    if isinstance(value, dict):
        keys = sorted(value)
        raise ApiError(400, f"{where}: expected a number, list or {{\"b64\": ...}}, got an object with keys {keys}")
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError) as exc:
        if "maximum" in str(exc) and "dimension" in str(exc):
            raise ApiError(400, f"{where}: lists nested deeper than {_MAX_DIMS} levels") from None
        raise ApiError(400, f"{where}: nested lists are ragged (every row must have the same length)") from None
    if arr.dtype == object:
        raise ApiError(400, f"{where}: {_object_problem(arr)}")
    if dtype == tf.string:
        if arr.size and arr.dtype.kind != "U":
            raise ApiError(400, f"{where}: expected strings for a string input, got {arr.dtype}")
        try:
            return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(arr) if arr.size else arr.astype(object)
        except UnicodeEncodeError:  # "\ud800"-style escapes decode to lone surrogates
            raise ApiError(400, f"{where}: strings hold unpaired UTF-16 surrogates") from None
    np_dtype = np.dtype(dtype.as_numpy_dtype)
    if arr.size == 0:
        return arr.astype(np_dtype)
    if arr.dtype.kind == "U":
        raise ApiError(400, f"{where}: expected {dtype.name} numbers, got strings")
    if np_dtype.kind == "b":
        if arr.dtype.kind != "b":
            raise ApiError(400, f"{where}: expected bool values, got {arr.dtype}")
        return arr
    if np_dtype.kind in "iu":
        if arr.dtype.kind not in "iuf":
            raise ApiError(400, f"{where}: expected {dtype.name} integers, got {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ApiError(400, f"{where}: NaN and Infinity are not {dtype.name} values")
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise ApiError(400, f"{where}: expected integer values for {dtype.name}, got non-integer numbers")
        info = np.iinfo(np_dtype)
        if arr.min() < info.min or arr.max() > info.max:
            got = f"[{arr.min()}, {arr.max()}]"
            raise ApiError(400, f"{where}: values out of range for {dtype.name} [{info.min}, {info.max}]: got {got}")
        return arr.astype(np_dtype)
    if arr.dtype.kind not in "iuf":  # bools are not numbers to TF Serving either
        raise ApiError(400, f"{where}: expected {dtype.name} numbers, got {arr.dtype}")
    if np_dtype.kind == "f":
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ApiError(400, f"{where}: NaN and Infinity are not accepted ({dtype.name} values must be finite)")
        with np.errstate(over="ignore"):
            out = arr.astype(np_dtype)
        if not np.isfinite(out).all():
            raise ApiError(400, f"{where}: values out of range for {dtype.name} (largest magnitude "
                                f"{float(np.finfo(np_dtype).max):g})")
        return out
    return arr.astype(np_dtype)


def _check_shape(arr: np.ndarray, expected: tuple, where: str) -> None:
    ok = arr.ndim == len(expected) and all(e is None or e == a for e, a in zip(expected, arr.shape))
    if not ok:
        want = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
        raise ApiError(400, f"{where}: expected shape {want}, got {list(arr.shape)}")


def _jsonable(arr: np.ndarray):
    if arr.dtype == object or arr.dtype.kind == "S":
        def conv(x):
            if isinstance(x, (bytes, bytearray)):
                try:
                    return bytes(x).decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(bytes(x)).decode("ascii")}
            return x

        return np.vectorize(conv, otypes=[object])(arr).tolist() if arr.size else []
    return arr.tolist()


def parse_predict_body(body: dict, model: LoadedVersion, max_pixels: int) -> tuple[dict, bool]:
    """Request JSON -> (batch-major input arrays, row_format)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, got {type(body).__name__}")
    sig = body.get("signature_name", SIGNATURE_KEY) or SIGNATURE_KEY
    if sig != SIGNATURE_KEY:
        raise ApiError(400, f"Serving signature name: \"{sig}\" not found in signature def")
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows == has_cols:
        raise ApiError(
            400, "request body: expected exactly one of 'instances' (row format) or 'inputs' (columnar format)"
        )
    names = list(model.inputs)
    arrays = {}
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise ApiError(400, "instances: expected a non-empty list")
        per_input: dict[str, list] = {n: [] for n in names}
        for i, row in enumerate(rows):
            if isinstance(row, dict) and not _is_b64(row):
                _check_names(row, names, f"instances[{i}]")
                values = row
            elif len(names) == 1:
                values = {names[0]: row}
            else:
                raise ApiError(400, f"instances[{i}]: expected an object with inputs {names}")
            for n in names:
                per_input[n].append(_to_array(values[n], model.inputs[n].dtype, f"instances[{i}].{n}", max_pixels))
        for n, parts in per_input.items():
            shapes = {p.shape for p in parts}
            if len(shapes) != 1:
                got = sorted(shapes)
                raise ApiError(400, f"instances: input '{n}' must have the same shape in every instance, got {got}")
            arrays[n] = np.stack(parts)
    else:
        cols = body["inputs"]
        if isinstance(cols, dict) and not _is_b64(cols):
            _check_names(cols, names, "inputs")
        elif len(names) == 1:
            cols = {names[0]: cols}
        else:
            raise ApiError(400, f"inputs: expected an object with inputs {names}")
        for n in names:
            arrays[n] = _to_array(cols[n], model.inputs[n].dtype, f"inputs.{n}", max_pixels)
    for n, arr in arrays.items():
        _check_shape(arr, model.inputs[n].shape, f"input '{n}'")
    return arrays, has_rows


def parse_json(body: bytes) -> object:
    """Request bytes -> JSON value, or a 400 ApiError for anything that is not valid JSON text
    (bad syntax, non-UTF-8/16/32 bytes, integers too long to convert, nesting too deep)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "JSON Parse error: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise ApiError(400, f"JSON Parse error: {str(exc)[:200]}") from None


def _parse_predict(body: bytes, model: LoadedVersion, max_pixels: int) -> tuple[dict, bool]:
    return parse_predict_body(parse_json(body), model, max_pixels)


def _check_names(values: dict, names: list, where: str) -> None:
    missing = [n for n in names if n not in values]
    extra = [k for k in values if k not in names]
    if missing or extra:
        raise ApiError(400, f"{where}: expected inputs {names}, missing {missing}, unknown {extra}")


def format_predict_reply(outputs: dict, row_format: bool) -> dict:
    """TF Serving's reply shapes: one entry per instance (a dict when several outputs)."""
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise ApiError(400, "row format needs every output to have the same batch size; use columnar 'inputs'")
    n = sizes.pop()
    if len(outputs) == 1:
        return {"predictions": _jsonable(next(iter(outputs.values())))}
    return {"predictions": [{k: _jsonable(v[i]) for k, v in outputs.items()} for i in range(n)]}


# -- the application -----------------------------------------------------------------------------
def _json_response(obj, status: int = 200) -> Response:
    # allow_nan: TF Serving also writes NaN/Infinity literals for non-finite floats.
    return Response(json.dumps(obj, allow_nan=True), status_code=status, media_type="application/json")


def _status_json(versions: list[int]) -> dict:
    return {
        "model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in sorted(versions, reverse=True)
        ]
    }


def create_app(models_dir: str | ModelRepository, options: ServerOptions | None = None) -> FastAPI:
    """Build the FastAPI app; models are scanned once now and then polled while the app runs."""
    options = options or ServerOptions()
    repo = models_dir if isinstance(models_dir, ModelRepository) else ModelRepository(models_dir)
    repo.scan()
    pool = ThreadPoolExecutor(options.threads, thread_name_prefix="model")
    batcher = DynamicBatcher(options.batching) if options.batching else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if options.poll_interval > 0:
            repo.start_polling(options.poll_interval)
        try:
            yield
        finally:
            repo.stop_polling()
            if batcher is not None:
                batcher.close()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="kerapose serving", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.repository = repo
    app.state.batcher = batcher
    app.state.options = options

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _json_response({"error": str(exc.detail)}, exc.status_code)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > options.max_body_bytes:
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of {options.max_body_bytes} bytes")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > options.max_body_bytes:
                raise ApiError(413, f"request body exceeds the limit of {options.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def run_model(model: LoadedVersion, arrays: dict) -> dict:
        loop = asyncio.get_running_loop()
        if batcher is not None:
            fut = asyncio.wrap_future(batcher.submit(model, arrays))
        else:
            fut = loop.run_in_executor(pool, model, arrays)
        try:
            return await fut
        except tf.errors.InvalidArgumentError as exc:
            raise ApiError(400, exc.message) from None

    def resolve(name: str, version: str | None) -> tuple[LoadedVersion | None, int | None]:
        if not valid_model_name(name):
            raise ApiError(400, f"model name: expected [A-Za-z0-9_.-]+ not starting with '.', got {name!r}")
        v = None
        if version is not None:
            if not version.isdigit():
                raise ApiError(400, f"version: expected an integer, got {version!r}")
            v = int(version)
        return repo.get(name, v), v

    async def handle(request: Request, rest: str) -> Response:
        m = _ROUTE_RE.fullmatch(rest)
        if not m:
            raise ApiError(404, f"Malformed request: {request.method} /v1/models/{rest}")
        if m["labels"]:
            raise ApiError(404, "version labels are not supported by this server; use /versions/N")
        name, verb = m["name"], m["verb"]
        if verb is None:
            if request.method != "GET":
                raise ApiError(405, f"{request.method} not allowed on /v1/models/{rest}; use GET")
            model, v = resolve(name, m["version"])
            if m["metadata"]:
                return _json_response({
                    "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
                    "metadata": {"signature_def": {"signature_def": {SIGNATURE_KEY: model.signature_json()}},
                                 **({"kerapose": model.kerapose} if model.kerapose else {})},
                })
            return _json_response(_status_json([model.version] if v is not None else repo.versions(name)))
        if request.method != "POST":
            raise ApiError(405, f"{request.method} not allowed on :{verb}; use POST")
        if verb not in ("predict", "pose"):
            raise ApiError(400, f"unsupported verb :{verb} (supported: :predict, :pose)")
        model, _ = resolve(name, m["version"])
        body = await read_body(request)
        if verb == "predict":
            # JSON parsing, image decoding and encoding the reply run off the event loop.
            arrays, row_format = await asyncio.to_thread(_parse_predict, body, model, options.max_image_pixels)
            outputs = await run_model(model, arrays)
            return await asyncio.to_thread(lambda: _json_response(format_predict_reply(outputs, row_format)))
        return await handle_pose(model, request, body)

    async def handle_pose(model: LoadedVersion, request: Request, body: bytes) -> Response:
        try:
            require_end_to_end(model.kerapose, f"model {model.name!r} version {model.version}", ":pose")
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        info = model.inputs.get("image")
        if info is None or info.dtype != tf.uint8 or len(model.inputs) != 1:
            names = list(model.inputs)
            raise ApiError(400, f"model {model.name!r} has no single uint8 'image' input (inputs: {names})")
        if not body:
            raise ApiError(400, "request body: expected an encoded image or {\"b64\": ...}")
        if "json" in request.headers.get("content-type", "") or body[:1] == b"{":
            payload = await asyncio.to_thread(parse_json, body)
            if isinstance(payload, dict) and "image" in payload:
                payload = payload["image"]
            if not _is_b64(payload):
                raise ApiError(400, "request body: expected {\"b64\": ...} or {\"image\": {\"b64\": ...}}")
            body = _b64(payload, "image")
        image = await asyncio.to_thread(decode_image, body, options.max_image_pixels, "image")
        arrays = {"image": image[None]}
        _check_shape(arrays["image"], info.shape, "input 'image'")
        outputs = await run_model(model, arrays)
        try:
            people = people_from_outputs(outputs)
        except ValueError as exc:
            raise ApiError(400, f"model {model.name!r} is not a kerapose pose model: {exc}") from None
        return _json_response(people)

    @app.api_route("/v1/models/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def models_route(request: Request, rest: str) -> Response:
        try:
            # One deadline for reading the body, decoding and the model call.
            return await asyncio.wait_for(handle(request, rest), options.request_timeout)
        except asyncio.TimeoutError:
            msg = f"Deadline exceeded: the request took longer than {options.request_timeout} s"
            return _json_response({"error": msg}, 504)
        except ApiError as exc:
            return _json_response({"error": exc.message}, exc.status)
        except ModelNotFoundError as exc:
            return _json_response({"error": str(exc.args[0])}, 404)
        except ClientDisconnect:
            return _json_response({"error": "client disconnected before the request body was read"}, 400)
        except Exception as exc:  # a server fault: keep serving, log it all, tell the client little
            log.exception("%s %s failed", request.method, request.url.path)
            msg = f"Internal server error ({type(exc).__name__}); details are in the server log"
            return _json_response({"error": msg}, 500)

    return app


# -- command line --------------------------------------------------------------------------------
def build_options(
    poll_interval: float = 2.0,
    max_body_mb: float = 32.0,
    max_image_pixels: int = 40_000_000,
    request_timeout: float = 30.0,
    threads: int = 4,
    enable_batching: bool = False,
    batching_config: str | None = None,
    max_batch_size: int = 8,
    batch_timeout_micros: int = 2000,
    num_batch_threads: int = 2,
) -> ServerOptions:
    """:class:`ServerOptions` from the command-line keywords."""
    batching = None
    if batching_config:
        batching = load_batching_config(batching_config)
    elif enable_batching:
        batching = BatchingOptions(max_batch_size, batch_timeout_micros, num_batch_threads)
    return ServerOptions(
        poll_interval=poll_interval,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_image_pixels=max_image_pixels,
        request_timeout=request_timeout,
        threads=threads,
        batching=batching,
    )


def serve_main(models_dir: str, host: str = "127.0.0.1", port: int = 8501, **options) -> None:
    """Run the server until interrupted. ``options``: the keywords of :func:`build_options`
    plus ``log_level``; unknown keys (e.g. argparse's ``func``/``command``) are ignored."""
    import inspect

    import uvicorn

    log_level = options.pop("log_level", "info")
    known = inspect.signature(build_options).parameters
    opts = build_options(**{k: v for k, v in options.items() if k in known})
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the server has no authentication; expose it only behind a proxy", host)
    app = create_app(models_dir, opts)
    log.info("serving %s on http://%s:%d/v1/models/", app.state.repository.names(), host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def serve_from_args(args: argparse.Namespace) -> None:
    """Entry point for a parser built with :func:`add_serve_arguments`."""
    serve_main(**vars(args))
