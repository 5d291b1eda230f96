"""A tiny Pascal VOC 2007 data set written in VOC's own layout (three images), for the VOC tests and
lesson 4's VOC section."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

ANNOTATION = """<annotation>
  <folder>VOC2007</folder>
  <filename>{name}.jpg</filename>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  {objects}
</annotation>"""
OBJECT = """<object>
    <name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{difficult}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
  </object>"""

# (image id, (width, height), objects as (class, xmin, ymin, xmax, ymax, difficult)), VOC's 1-based pixels.
FIXTURE = [
    ("000007", (200, 100), [("chair", 11, 21, 60, 80, 0), ("sofa", 101, 1, 200, 100, 0),
                            ("diningtable", 50, 50, 70, 60, 1)]),
    ("000012", (120, 160), [("car", 1, 1, 120, 160, 0)]),
    ("000033", (80, 80), []),
]


def write_voc(root: Path) -> Path:
    """Write the data set under ``root`` (``root/VOCdevkit/VOC2007/...``); returns ``root``."""
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for name, (width, height), objects in FIXTURE:
        Image.new("RGB", (width, height), (120, 60, 30)).save(base / "JPEGImages" / f"{name}.jpg")
        xml_objects = "\n".join(OBJECT.format(name=c, xmin=a, ymin=b, xmax=x, ymax=y, difficult=d)
                                for c, a, b, x, y, d in objects)
        (base / "Annotations" / f"{name}.xml").write_text(
            ANNOTATION.format(name=name, width=width, height=height, objects=xml_objects))
    ids = [name for name, _, _ in FIXTURE]
    (base / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:2]) + "\n")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root
