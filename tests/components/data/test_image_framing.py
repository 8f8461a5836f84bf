"""The guard's image framing check (``guard.image_truncation``): an image cut short of its own end is refused even
though its transfer completed, whatever the format; whole images, images with data after their end and bodies that
are no image pass. Cheap: byte parsing on small images built here, and one loopback fetch through the opener."""
import io
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
from fault_server import cut_short, framed_images, noise
from PIL import Image, ImageFile
from vlforge.components.data.crawl import failure_reason
from vlforge.components.data.guard import FetchPolicy, TruncatedImage, guarded_opener, image_truncation


def _pil(frames: list[Image.Image], fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    if len(frames) > 1:
        kw.update(save_all=True, append_images=frames[1:])
    frames[0].save(buf, fmt, **kw)
    return buf.getvalue()


def _cv2(ext: str, array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok, ext
    return buf.tobytes()


def _images() -> dict[str, bytes]:
    """One whole image per format and variant the check knows (PIL's and OpenCV's encoders)."""
    im = noise(1)

    def frames() -> list[Image.Image]:  # fresh images for each save: PIL keeps one save's settings on the images
        return [noise(10 + k) for k in range(3)]

    rgba = Image.fromarray(np.dstack([np.asarray(im), np.asarray(noise(2))[..., 0]]), "RGBA")
    exif = Image.Exif()
    exif[0x010F] = "camera"
    a = np.asarray(im)
    images = {f"fault-server {fmt}": body for fmt, body in framed_images(seed=5).items()}
    images.update({
        "jpeg progressive": _pil([im], "JPEG", progressive=True), "jpeg grey": _pil([im.convert("L")], "JPEG"),
        "jpeg cmyk": _pil([im.convert("CMYK")], "JPEG"), "jpeg exif": _pil([im], "JPEG", exif=exif),
        "mpo 3 images": _pil(frames(), "MPO"),
        "png palette": _pil([im.quantize(200)], "PNG"), "png rgba": _pil([rgba], "PNG"),
        "png 16-bit": _pil([Image.fromarray(a[..., 0].astype(np.uint16) * 257)], "PNG"),
        "png several IDAT": _pil([noise(3, 200)], "PNG"), "png interlaced": _cv2(".png", a),
        "gif single": _pil([im.quantize(64)], "GIF"), "gif interlaced": _pil([im.quantize(64)], "GIF", interlace=True),
        "webp lossless": _pil([im], "WEBP", lossless=True), "webp alpha": _pil([rgba], "WEBP"),
        "webp animated": _pil(frames(), "WEBP", duration=50),
        "bmp palette": _pil([im.quantize(200)], "BMP"), "bmp odd width": _pil([noise(4, 63)], "BMP"),
        "bmp rgba": _pil([rgba], "BMP"), "tiff lzw pages": _pil(frames(), "TIFF", compression="tiff_lzw"),
        "tiff jpeg": _pil([im], "TIFF", compression="jpeg"), "tiff opencv": _cv2(".tiff", a),
        "jpeg 2000": _pil([im], "JPEG2000"), "jpeg 2000 codestream": _pil([im], "JPEG2000", no_jp2=True),
        "avif": _pil([im], "AVIF"), "avif animated": _pil(frames(), "AVIF", duration=50),
        "ppm": _pil([im], "PPM"), "pgm": _pil([im.convert("L")], "PPM"), "pbm": _pil([im.convert("1")], "PPM"),
        "pam": _cv2(".pam", a), "pfm": _cv2(".pfm", a.astype(np.float32) / 255), "sun raster": _cv2(".ras", a),
    })
    return images


IMAGES = _images()


def _decodes_in_full(body: bytes) -> bool:
    """PIL decodes every frame of ``body`` without padding anything."""
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with Image.open(io.BytesIO(body)) as im:
            for k in range(getattr(im, "n_frames", 1)):
                im.seek(k)
                im.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_whole_images_pass_and_every_cut_is_caught(name: str) -> None:
    body = IMAGES[name]
    assert image_truncation(body) is None
    assert image_truncation(body + b"\0" * 64 + bytes(range(256))) is None  # data after a whole image is accepted
    # from 18 bytes on (every signature is shorter), cuts short of the end: a sample of them, and the last 64
    cuts = sorted({*range(18, len(body), max(1, len(body) // 300)), *range(max(18, len(body) - 64), len(body))})
    passed = [c for c in cuts if image_truncation(body[:c]) is None]
    # the only cuts let through drop padding no decoder needs (PIL's multi-page TIFF writer leaves some at the end)
    assert all(len(body) - c <= 16 and _decodes_in_full(body[:c]) for c in passed), passed


@pytest.mark.parametrize("body", [
    b"", b"<html><body>not an image</body></html>", b"BM is a car maker, not a bitmap header", b"P5 is a label",
    b"RIFF\x10\0\0\0WAVEfmt ", b"\0\0\0\x18ftypmp42" + b"\0" * 16, bytes(range(256)) * 4,
])
def test_bodies_that_are_no_image_pass(body: bytes) -> None:
    assert image_truncation(body) is None


def test_the_error_counts_as_truncated() -> None:
    why = image_truncation(cut_short("png", framed_images()["png"]))
    assert why and failure_reason(str(TruncatedImage(why))) == "truncated"


def test_the_opener_refuses_a_cut_image_whose_transfer_completed() -> None:
    images = framed_images()
    bodies = {f"/whole/{fmt}": body for fmt, body in images.items()}
    bodies.update({f"/cut/{fmt}": cut_short(fmt, body) for fmt, body in images.items()})

    class Server(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = bodies[self.path.removesuffix("/chunked")]
            self.send_response(200)
            if self.path.endswith("/chunked"):
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for at in range(0, len(body), 700):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(body[at:at + 700]), body[at:at + 700]))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        allow = (f"127.0.0.1:{srv.server_address[1]}",)
        for opener in (guarded_opener(FetchPolicy(allow_hosts=allow)),
                       guarded_opener(FetchPolicy(allow_hosts=allow, max_bytes=1_000_000))):
            for fmt, body in images.items():
                for tail in ("", "/chunked"):
                    assert opener.open(f"{base}/whole/{fmt}{tail}", timeout=5).read() == body
                    with pytest.raises(TruncatedImage, match="truncated image"):
                        opener.open(f"{base}/cut/{fmt}{tail}", timeout=5).read()
        # an opener without the guard reads the cut body without complaint: the transfer itself is complete
        assert urllib.request.build_opener().open(f"{base}/cut/png", timeout=5).read() == bodies["/cut/png"]
    finally:
        srv.shutdown()
        srv.server_close()
