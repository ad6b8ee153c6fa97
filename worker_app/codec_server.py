"""``crowdcompute codec-server``: Temporal's remote codec protocol, for display.

The Temporal UI (its codec-server setting, or the dev server's
``--ui-codec-endpoint``) and ``temporal workflow show --codec-endpoint URL``
POST payloads here. ``/decode`` resolves externally stored payloads (the same
``ExternalStorage`` as clients and workers) and turns each of our non-JSON
encodings into a JSON preview: a NumPy array's type, shape, dtype and a
bounded repr; a pickle's class and size (it is never unpickled here: this is an
HTTP endpoint, and unpickling posted bytes would run whatever they name); a
payload list element by element. JSON payloads pass unchanged. ``/encode``
returns its payloads as they are: we use no codec (no compression or
encryption), so what the UI sends is already what workers read.

Request and response bodies are ``{"payloads": [...]}`` in protobuf JSON.
"""

from __future__ import annotations

import io
from typing import Any

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.common import RawValue
from temporalio.converter import DataConverter

from sdk._payloads import build_data_converter
from sdk._settings import ClientSettings
from workflows.payloads import (
    ENCODING_BYTES,
    ENCODING_LIST,
    ENCODING_NPY,
    ENCODING_PICKLE,
    PYTHON_TYPE,
    encoding_of,
    is_json,
    json_payload,
    json_value,
    unpack,
)

DEFAULT_PORT = 8081
# Characters of an array's repr and bytes of a bytes value shown in a preview.
REPR_LIMIT = 1000
BYTES_LIMIT = 64
# The dev server's UI; others with ``--cors-origin``.
DEFAULT_ORIGINS = ("http://localhost:8233", "http://127.0.0.1:8233")


def _bounded(text: str) -> str:
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


def _npy_preview(data: bytes) -> dict[str, Any]:
    import numpy as np

    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    # The header alone (no data read) for what np.save writes; other versions load.
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is not None:
        shape, _, dtype = read_header(buf)
    else:
        buf.seek(0)
        loaded = np.load(buf, allow_pickle=False)
        shape, dtype = loaded.shape, loaded.dtype
    preview: dict[str, Any] = {"type": "numpy.ndarray", "shape": list(shape),
                               "dtype": str(dtype), "nbytes": int(np.prod(shape)) * dtype.itemsize}
    if dtype.hasobject:
        return preview
    buf.seek(0)
    array = np.load(buf, allow_pickle=False)
    with np.printoptions(threshold=100, edgeitems=3):
        preview["repr"] = _bounded(repr(array))
    return preview


def preview_value(payload: Payload) -> Any:
    """A JSON value showing what ``payload`` holds, decoding nothing unsafe."""
    encoding = encoding_of(payload)
    if is_json(payload):
        return json_value(payload)
    if encoding == ENCODING_NPY:
        try:
            return _npy_preview(payload.data)
        except ValueError as exc:
            return {"type": "numpy.ndarray", "error": f"unreadable .npy: {exc}"}
    if encoding == ENCODING_PICKLE:
        kind = payload.metadata.get(PYTHON_TYPE, b"unknown").decode()
        return {"type": kind, "encoding": "pickle", "size": len(payload.data)}
    if encoding == ENCODING_BYTES:
        return {"type": "bytes", "size": len(payload.data),
                "repr": repr(bytes(payload.data[:BYTES_LIMIT]))
                + ("..." if len(payload.data) > BYTES_LIMIT else "")}
    if encoding == ENCODING_LIST:
        return [preview_value(p) for p in unpack(payload)]
    raise LookupError(encoding)


def preview_payload(payload: Payload) -> Payload:
    """``payload`` as the UI should show it: ours as JSON previews, others unchanged."""
    if is_json(payload):
        return payload
    try:
        return json_payload(preview_value(payload))
    except LookupError:  # not one of ours (protobuf, binary/null, ...): the UI knows it
        return payload


async def decode_payloads(converter: DataConverter, payloads: list[Payload]) -> list[Payload]:
    """Externally stored payloads resolved, then previewed.

    One that cannot be fetched (deleted, unreachable store) becomes a preview
    of the error; the others are still shown.
    """
    try:
        raws = await converter.decode(payloads, [RawValue] * len(payloads))
    except Exception:  # find which: one at a time
        return [await _decode_one(converter, p) for p in payloads]
    return [preview_payload(raw.payload) for raw in raws]


async def _decode_one(converter: DataConverter, payload: Payload) -> Payload:
    try:
        [raw] = await converter.decode([payload], [RawValue])
    except Exception as exc:  # shown in the UI instead of failing the whole page
        return json_payload({"error": f"cannot fetch the stored payload: {exc}"})
    return preview_payload(raw.payload)


def _parse(body: bytes) -> list[Payload]:
    message = Payloads()
    json_format.Parse(body or b"{}", message)
    return list(message.payloads)


def _reply(payloads: list[Payload]) -> Response:
    body = json_format.MessageToDict(Payloads(payloads=payloads))
    return JSONResponse(body if body else {"payloads": []})


def build_app(settings: ClientSettings, origins: list[str] | None = None) -> Starlette:
    """The codec server's ASGI app for ``settings`` (where external payloads live)."""
    converter = build_data_converter(settings)

    async def decode(request: Request) -> Response:
        try:
            payloads = _parse(await request.body())
        except json_format.ParseError as exc:
            return JSONResponse({"error": f"not a payloads message: {exc}"}, status_code=400)
        return _reply(await decode_payloads(converter, payloads))

    async def encode(request: Request) -> Response:
        try:
            return _reply(_parse(await request.body()))
        except json_format.ParseError as exc:
            return JSONResponse({"error": f"not a payloads message: {exc}"}, status_code=400)

    cors = Middleware(CORSMiddleware, allow_origins=origins or list(DEFAULT_ORIGINS),
                      allow_methods=["POST", "OPTIONS"], allow_headers=["*"],
                      allow_credentials=True)
    return Starlette(routes=[Route("/decode", decode, methods=["POST"]),
                             Route("/encode", encode, methods=["POST"])],
                     middleware=[cors])


def serve(settings: ClientSettings, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
          origins: list[str] | None = None) -> None:
    """Run the codec server until interrupted."""
    import uvicorn

    print(f"crowdcompute codec server on http://{host}:{port} (POST /decode, /encode)",
          flush=True)
    uvicorn.run(build_app(settings, origins), host=host, port=port, log_level="warning")
