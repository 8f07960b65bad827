"""Images a user gives (uploads, dataset rows, chat attachments): decoded with a pixel cap and a sentence for
anything that is not a usable image, never a traceback."""
from __future__ import annotations

import io

from backend.core.errors import UserError

MAX_PIXELS = 50_000_000          # 50 megapixels: larger images are refused, not resized behind the user's back


def open_image(data: bytes, name: str | UserError = UserError("err.vlm.the_image"), max_pixels: int = MAX_PIXELS):
    """A decoded RGB PIL image, or ValueError saying plainly what is wrong with it."""
    import warnings

    from PIL import Image, UnidentifiedImageError
    if not data:
        raise UserError("err.vlm.empty_file", name=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise UserError("err.vlm.pixels", name=name, w=w, h=h, mp=w * h / 1e6, limit=max_pixels / 1e6)
            im.load()
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise UserError("err.vlm.not_image", name=name) from None
    except Image.DecompressionBombError as e:
        raise UserError("err.vlm.too_large", name=name, error=e, limit=max_pixels / 1e6) from None
    except (OSError, SyntaxError) as e:           # truncated or damaged file data
        raise UserError("err.vlm.corrupt", name=name, error=e) from None
