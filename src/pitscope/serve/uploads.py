"""What an upload must pass before it is scored: its size, its format and its pixel count, then
its decoding; and what it says about itself (part, capture time) for the history."""

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pitscope.data.imageio import to_rgb_array

MIB = 1024 * 1024
MIN_SIDE = 32  # the smallest image side scored: below it a photo holds nothing to inspect
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
# Multipart framing around the file (boundaries, part headers, a long file name) may add this
# many bytes to the request body beyond max_upload_bytes.
FORM_OVERHEAD_BYTES = 64 * 1024
NO_FILE = "no image: send it as the multipart/form-data field 'file' (e.g. curl -F file=@part.png)"


class RejectedImage(ValueError):
    """An upload the service refuses, with the HTTP status that says why."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an uploaded file into (H, W, 3) uint8 RGB, or raise RejectedImage.

    Only PNG, JPEG, BMP and TIFF are opened (Pillow's other plugins, EPS through Ghostscript
    among them, never see the bytes). The size declared in the header is checked against
    `max_pixels` before the pixels are decoded. 16-bit greyscale is scaled to 8 bits, alpha is
    dropped and the EXIF orientation applied, as `pitscope.data.imageio.read_image` does.
    """
    if not data:
        raise RejectedImage(422, "the uploaded file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise RejectedImage(415, f"not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (about 179 megapixels) fired first: say the service's limit
        raise RejectedImage(
            422, f"image dimensions too large: over the limit of {max_pixels} pixels ({max_pixels / 1e6:g} megapixels)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise RejectedImage(422, f"truncated or corrupt image header: {exc}") from None
    with image:
        width, height = image.size
        if min(width, height) < MIN_SIDE:
            raise RejectedImage(
                422,
                f"image is {width}x{height} pixels: too small to inspect (each side needs at least {MIN_SIDE} pixels)",
            )
        if width * height > max_pixels:
            raise RejectedImage(
                422,
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels",
            )
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise RejectedImage(422, f"truncated or corrupt image: {exc}") from None
        return to_rgb_array(upright)


def too_large(max_upload_bytes: int) -> str:
    return f"upload too large: the limit is {max_upload_bytes} bytes ({max_upload_bytes / MIB:.3g} MiB)"


def _limited_receive(request, max_upload_bytes: int):
    """The request's `receive`, raising 413 once more body than allowed has arrived."""
    from fastapi import HTTPException

    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > max_upload_bytes + FORM_OVERHEAD_BYTES:
            raise HTTPException(413, too_large(max_upload_bytes))
        return message

    return receive


async def read_upload(request, max_upload_bytes: int) -> tuple[bytes, str | None, dict[str, str]]:
    """The bytes and file name of the multipart field `file` of a starlette Request and the form's
    text fields, refused (HTTPException 413 or 422) as early as their size is known."""
    from fastapi import HTTPException, Request
    from starlette.datastructures import UploadFile

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_upload_bytes + FORM_OVERHEAD_BYTES:
        raise HTTPException(413, too_large(max_upload_bytes))  # refused before reading the body
    limited = Request(request.scope, _limited_receive(request, max_upload_bytes))
    async with limited.form(max_files=1, max_fields=16) as form:
        upload = form.get("file")
        if upload is None:
            raise HTTPException(422, NO_FILE)
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "the field 'file' must be a file upload, not a text value")
        data = await upload.read(max_upload_bytes + 1)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        filename = upload.filename
    if len(data) > max_upload_bytes:
        raise HTTPException(413, too_large(max_upload_bytes))
    return data, filename, fields


def upload_meta(
    source: str,
    part: str | None,
    captured: str | None,
    filename: str | None,
    fields: dict[str, str],
    data: bytes,
    part_from=None,
    time_from=None,
) -> dict:
    """Source, part id, file name and capture time of an upload: from the query, else the form,
    else the file name (the patterns part_from, time_from), else (the time) the photo's EXIF;
    HTTPException 422 for a capture time that is not one."""
    from fastapi import HTTPException

    from pitscope.history.names import exif_time, parse_time, part_from_name, time_from_name

    part = (part or fields.get("part") or "").strip() or part_from_name(filename or "", part_from)
    captured = (captured or fields.get("captured_at") or "").strip()
    try:
        when = parse_time(captured) if captured else time_from_name(filename or "", time_from)
    except ValueError as exc:
        raise HTTPException(422, f"captured_at: {exc}") from None
    if when is None:
        try:
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                when = exif_time(image)
        except (OSError, ValueError, Image.DecompressionBombError):
            pass  # decode_image says what is wrong with the file
    if part is not None and len(part) > 200:
        raise HTTPException(422, "part: at most 200 characters")
    return {"source": source, "part": part, "name": filename, "captured_at": when}
