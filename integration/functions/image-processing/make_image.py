"""Generate rootfs/srv/fn/image.png, the picture the image-processing function loads.

Not part of the image: run once with the fnbase image's Pillow to (re)make the
committed file, e.g. `chroot ROOTFS python3 make_image.py OUT.png`. Deterministic:
gradients and shapes from a seeded generator, saved with fixed PNG options.
"""

import random
import sys

from PIL import Image, ImageDraw

W, H = 384, 256


def main(out):
    rng = random.Random("trenv image-processing")
    img = Image.new("RGB", (W, H))
    px = img.load()
    for y in range(H):  # a diagonal two-colour gradient
        for x in range(W):
            px[x, y] = (x * 255 // W, y * 255 // H, 255 - (x + y) * 255 // (W + H))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0 = rng.randrange(W), rng.randrange(H)
        x1, y1 = x0 + rng.randrange(10, 120), y0 + rng.randrange(10, 90)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(("ellipse", "rectangle", "line"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=rng.randrange(1, 6))
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randrange(1, 8))
    img.save(out, format="PNG", optimize=True)


if __name__ == "__main__":
    main(sys.argv[1])
