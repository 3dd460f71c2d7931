"""Cut the embedded demo data from the CIFAR-10 (JPEG) archive: the original JPEG bytes of a
seeded, class-balanced sample (500 train and 200 test images per class), in the same
`train/<class>/NNNN.jpg` layout, so the demo reads it with the same loader as the full set.

    python scripts/make_demo_data.py ../shared/datasets/cifar10-jpeg.tar.gz src/achroma/assets/demo-cifar10-jpeg.tar.gz
"""
from __future__ import annotations

import io
import random
import re
import sys
import tarfile
from pathlib import Path

PER_CLASS = {"train": 500, "test": 200}


def main(src: str, dst: str, seed: int = 0) -> None:
    pattern = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+\.jpg)$")
    # One sequential pass: seeking back in a gzip stream would decompress it again per file.
    members: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    with tarfile.open(src) as tar:
        for m in tar:
            match = pattern.search(m.name)
            if m.isfile() and match:
                members.setdefault((match.group(1), match.group(2)), []).append((m.name, tar.extractfile(m).read()))
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as out:
        for (split, cls), items in sorted(members.items()):
            items.sort()
            for name, data in sorted(rng.sample(items, PER_CLASS[split])):
                info = tarfile.TarInfo(f"{split}/{cls}/{Path(name).name}")
                info.size, info.mtime = len(data), 0
                out.addfile(info, io.BytesIO(data))
    Path(dst).write_bytes(buf.getvalue())
    print(f"wrote {dst}: {len(buf.getvalue()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main(*sys.argv[1:3])
