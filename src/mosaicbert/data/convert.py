"""Moved: `python -m mosaicbert.data.convert` is now `python -m mosaicbert.pretrain.convert` (same arguments)."""

import sys

if __name__ == "__main__":
    sys.exit("error: the converter moved: run `python -m mosaicbert.pretrain.convert` with the same arguments")
raise ImportError("mosaicbert.data.convert moved to mosaicbert.pretrain.convert")
