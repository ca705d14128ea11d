"""Builds the README's side-by-side figures from images the project wrote (PIL only).

    python docs/montage.py OUT.png "label=path" ...  [--height 256]
"""
import sys

from PIL import Image, ImageDraw


def montage(out, items, height=256):
  tiles = []
  for label, path in items:
    im = Image.open(path).convert("RGB")
    im = im.resize((round(im.width * height / im.height), height), Image.LANCZOS)
    canvas = Image.new("RGB", (im.width, height + 18), (255, 255, 255))
    canvas.paste(im, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), label, fill=(0, 0, 0))
    tiles.append(canvas)
  sheet = Image.new("RGB", (sum(t.width for t in tiles) + 6 * (len(tiles) - 1), height + 18), (255, 255, 255))
  x = 0
  for t in tiles:
    sheet.paste(t, (x, 0))
    x += t.width + 6
  sheet.save(out)


if __name__ == "__main__":
  args = sys.argv[1:]
  height = 256
  if "--height" in args:
    i = args.index("--height")
    height = int(args[i + 1])
    del args[i:i + 2]
  montage(args[0], [a.rsplit("=", 1) for a in args[1:]], height)
