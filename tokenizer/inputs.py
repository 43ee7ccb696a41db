"""Image inputs, in one place: which files are images, finding them (folders, list files, globs, tars),
their stable keys and order, and the resizes and crops every caller applies.

Used by the batch tokenizer, ``train/data.py``, ``scripts/evaluate.py``, the benchmarks and
``scripts/prepare_training_photos.py``, so that they agree on suffixes, order and crop. Decoding (EXIF
orientation, 16-bit, palette and alpha modes, the decompression-bomb guard) is ``tokenizer.image_io``'s.

Order: folders are walked entry by entry, each directory's entries sorted by name (a stream: memory is
one directory); list files keep their own order; tars are sorted by name, members in tar order; glob
matches are sorted. A folder's key is the path relative to it, a list file's its line, a tar member's
its WebDataset key.

Axis letters: H/W image size, S crop side.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .image_io import MAX_PIXELS, ImageError, decode_image_bytes, read_image
from .tar_members import READ_ERRORS, BadMember, iter_members

# Suffixes treated as images. Formats Pillow cannot open here (e.g. HEIC) are still listed, so that such
# files land in an errors file (or a "skipping" line) with a reason instead of being silently ignored.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
     ".pnm", ".tga", ".jp2", ".avif", ".heic", ".heif"}
)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_SUFFIXES = (".txt", ".lst", ".list")
# WebDataset side files carried into the index (parsed JSON / text).
SIDE_EXTENSIONS = ("json", "txt")
# Recorded with every output made from preprocessed images (token shards), so that outputs of an older
# preprocessing are never mixed with new ones. 1: the batch tokenizer cropped the centre square, then
# resized it. 2: resize the short side, then crop the centre (torchvision's Resize + CenterCrop order),
# as training and evaluation always did.
PREPROCESSING_VERSION = 2


class InputError(FileNotFoundError):
    """An input argument that names no images."""


class TarReadError(ValueError):
    """A tar archive that cannot be walked (damaged or not a tar)."""


def is_image_file(path: str | os.PathLike) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_SUFFIXES


# --- discovery ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """What an input argument names: a folder, a list file, or tar shards (a path, glob or ``{000..009}`` range)."""

    kind: str  # "folder", "list" or "tar"
    spec: str  # the argument as given (recorded in outputs' metadata)
    tars: tuple[str, ...] = ()  # kind "tar": the tar files, sorted


@dataclass(frozen=True)
class Source:
    """One input image: its key (path relative to the input, or the tar member's key) and where it lives."""

    key: str
    path: str  # the image file, or the tar file holding it
    member: str | None = None  # the image member inside the tar

    @property
    def description(self) -> str:
        return self.path if self.member is None else f"{self.path}:{self.member}"


@dataclass
class InputItem:
    """One input as the enumeration yields it: its source, and how to read its pixels and side files now
    (a tar member can be read only while its tar is being iterated)."""

    source: Source
    read_image: Callable[[], torch.Tensor]  # -> (3, H, W) float in [0, 1]
    side: dict[str, Callable[[], Any]] = field(default_factory=dict)  # extension -> parsed content


def expand_braces(spec: str) -> list[str]:
    """WebDataset-style numeric ranges: ``shards-{000..012}.tar`` -> 13 names, zero padding kept."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if match is None:
        return [spec]
    first, last = match.group(1), match.group(2)
    width = len(first)
    head, tail = spec[: match.start()], spec[match.end():]
    out: list[str] = []
    for n in range(int(first), int(last) + 1):
        out += expand_braces(f"{head}{n:0{width}d}{tail}")
    return out


def _is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[") or re.search(r"\{\d+\.\.\d+\}", text) is not None


def resolve_input(spec: str | os.PathLike, what: str = "--input") -> InputSpec:
    """Classify an input argument: an existing folder, a tar (or glob / brace range of tars), or a list file.

    Raises:
        InputError (a FileNotFoundError): nothing matches.
    """
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        return InputSpec("folder", text)
    if _is_pattern(text) or text.endswith(TAR_SUFFIXES):
        names: list[str] = []
        for part in expand_braces(text):
            matches = sorted(glob.glob(part)) if any(ch in part for ch in "*?[") else [part]
            names += [m for m in matches if Path(m).is_file()]
        tars = sorted(set(n for n in names if n.endswith(TAR_SUFFIXES)))
        if not tars:
            raise InputError(f"{what} {text}: no tar files match (expected .tar/.tar.gz/.tgz shards)")
        return InputSpec("tar", text, tuple(tars))
    if path.is_file():
        return InputSpec("list", text)
    raise InputError(f"{what} {text}: no such folder, list file or tar shards")


def walk_images(root: str | os.PathLike, rel: str = "") -> Iterator[str]:
    """Image paths under ``root`` relative to it, sorted entry by entry (a stream: memory is one directory).

    Hidden entries are skipped; symlinked files are followed, symlinked directories are not (no loops).
    """
    root = Path(root)
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):  # .DS_Store, AppleDouble "._x.jpg" files, .git
            continue
        name = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from walk_images(root, name)
        elif entry.is_file() and is_image_file(entry.name):
            yield name


def iter_list(list_file: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """(key, path) per non-empty, non-comment line; relative paths are relative to the list file."""
    list_file = Path(list_file)
    base = list_file.parent
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line)
                yield line, str(path if path.is_absolute() else base / path)


def tar_key(name: str) -> tuple[str, str]:
    """WebDataset convention: ``dir/abc.seg.png`` -> key ``dir/abc``, extension ``seg.png``."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _parse_side(ext: str, data: bytes, where: str) -> Any:
    """A side file's content: parsed JSON for ``json``, text for ``txt`` (UTF-8)."""
    try:
        text = data.decode("utf-8")
        return json.loads(text) if ext == "json" else text
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{where}: side file is not valid UTF-8 {'JSON' if ext == 'json' else 'text'} ({err})") from err


def _tar_item(tar_path: str, key: str, members: list[tarfile.TarInfo], tf: tarfile.TarFile,
              max_pixels: int | None) -> InputItem | None:
    """The item of one key's adjacent members, if one of them is an image."""
    # The image is the member whose whole extension is an image's ("key.jpg", not "key.seg.png").
    images = [m for m in members if "." + tar_key(m.name)[1] in IMAGE_SUFFIXES]
    if not images:
        return None
    image = images[0]

    def read_member(member: tarfile.TarInfo) -> bytes:
        try:
            f = tf.extractfile(member)
            if f is None:
                raise ImageError(f"{tar_path}:{member.name}: not a regular file")
            return f.read()
        except READ_ERRORS as err:  # a cut archive: tarfile's ReadError, or gzip's EOFError for a .tar.gz
            raise TarReadError(f"{tar_path}:{member.name}: cannot read the member ({type(err).__name__}: {err})") from err

    def read_side(ext: str, member: tarfile.TarInfo) -> Callable[[], Any]:
        return lambda: _parse_side(ext, read_member(member), f"{tar_path}:{member.name}")

    side = {ext: read_side(ext, m) for m in members if (ext := tar_key(m.name)[1]) in SIDE_EXTENSIONS}
    return InputItem(Source(key, tar_path, image.name),
                     lambda: decode_image_bytes(read_member(image), f"{tar_path}:{image.name}", max_pixels), side)


def _failed_item(source: Source, message: str) -> InputItem:
    """An input that exists only to be recorded as failed (a link member, the lost end of an archive)."""
    def fail() -> torch.Tensor:
        raise TarReadError(message)

    return InputItem(source, fail)


def iter_tar(tar_path: str, max_pixels: int | None = None) -> Iterator[InputItem]:
    """Groups of adjacent members sharing a key -> one item per group that has an image member.

    Nothing is skipped silently: a link or device member, an archive that cannot be opened and the lost end
    of a truncated archive ("truncated or damaged after member N", ``tar_members``) each yield an item whose
    ``read_image`` raises ``TarReadError``, so the batch tokenizer records them as failed inputs.
    """
    try:
        tf = tarfile.open(tar_path, "r:*")  # reads the first header already
    except READ_ERRORS as err:
        yield _failed_item(Source(f"{Path(tar_path).name}:unreadable", tar_path),
                           f"{tar_path}: not a readable tar archive ({type(err).__name__}: {err})")
        return
    with tf:
        key, group = None, []
        for member in iter_members(tf):  # headers only; data is read when (and if) it is asked for
            if isinstance(member, BadMember):
                if group:
                    found = _tar_item(tar_path, key, group, tf, max_pixels)
                    if found is not None:
                        yield found
                    key, group = None, []
                if member.name is None:  # the archive broke off: stands for the members lost after it
                    yield _failed_item(Source(f"{Path(tar_path).name}:truncated", tar_path),
                                       f"{tar_path}: {member.reason}")
                else:
                    yield _failed_item(Source(tar_key(member.name)[0], tar_path, member.name),
                                       f"{tar_path}:{member.name}: {member.reason}")
                continue
            member_key = tar_key(member.name)[0]
            if group and member_key != key:
                found = _tar_item(tar_path, key, group, tf, max_pixels)
                if found is not None:
                    yield found
                group = []
            key = member_key
            group.append(member)
        if group:
            found = _tar_item(tar_path, key, group, tf, max_pixels)
            if found is not None:
                yield found


def iter_items(spec: InputSpec, max_pixels: int | None = MAX_PIXELS) -> Iterator[InputItem]:
    """Every input of ``spec`` in the fixed order that numbers them (a stream)."""
    if spec.kind == "folder":
        root = Path(spec.spec)
        for rel in walk_images(root):
            path = str(root / rel)
            yield InputItem(Source(rel, path), lambda p=path: read_image(p, max_pixels))
    elif spec.kind == "list":
        for key, path in iter_list(spec.spec):
            yield InputItem(Source(key, path), lambda p=path: read_image(p, max_pixels))
    else:
        for tar_path in spec.tars:
            yield from iter_tar(tar_path, max_pixels)


def iter_sources(spec: InputSpec | str) -> Iterator[Source]:
    """The inputs' keys and locations, in order (nothing is decoded)."""
    spec = spec if isinstance(spec, InputSpec) else resolve_input(spec)
    for item in iter_items(spec):
        yield item.source


def list_images(sources: str | os.PathLike | list, what: str = "--data", limit: int | None = None) -> list[str]:
    """Image file paths from folders (recursive), list files, single image files or globs, in the order
    above; a path named twice is kept once, at its first place.

    Args:
        sources: one argument or several.
        what: the option's name, for messages.
        limit: keep the first ``limit`` paths.
    Raises:
        InputError (a FileNotFoundError): an argument that matches nothing, or no images at all.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths: list[str] = []
    for source in map(str, sources):
        p = Path(source)
        if p.is_dir():
            paths += [str(p / rel) for rel in walk_images(p)]
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            paths += [path for _, path in iter_list(p)]
        elif p.is_file():
            paths.append(source)
        else:
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                raise InputError(f"{what} {source}: no such folder, list file or matching glob")
            paths += [m for m in matches if is_image_file(m) and Path(m).is_file()]
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise InputError(f"{what} {', '.join(map(str, sources))}: no images found "
                         f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths[:limit] if limit else paths


# --- resizing and cropping ------------------------------------------------------------------------
def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) -> (3, *size) in [0, 1], bicubic with antialiasing (a prefilter against aliasing when
    shrinking; PIL's bicubic kernel, as torchvision uses it, when enlarging)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)  # (1, 3, *size)
    return out[0].clamp(0.0, 1.0)  # bicubic overshoots at edges


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H', W') with the short side ``short`` and the aspect kept; the long side truncated as torchvision's
    ``Resize(short)`` does it."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def resize_short_side(image: torch.Tensor, short: int) -> torch.Tensor:
    """(3, H, W) -> the short side ``short``, aspect kept."""
    return resize(image, short_side_size(*image.shape[-2:], short))


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, S, S): the short side resized to S, then the centre S x S -- torchvision's
    ``Resize(S)`` + ``CenterCrop(S)``, sizes and offsets rounded as it rounds them."""
    image = resize_short_side(image, size)
    _, height, width = image.shape
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image[:, top : top + size, left : left + size]


def shrink_to_max_side(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """(3, H, W) -> at most ``max_side`` on the longer side, aspect kept (never enlarged)."""
    _, height, width = image.shape
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    return resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))


def shrink_short_side(image: torch.Tensor, max_short: int) -> torch.Tensor:
    """(3, H, W) -> the short side at most ``max_short``, aspect kept (never enlarged)."""
    if min(image.shape[-2:]) <= max_short:
        return image
    return resize_short_side(image, max_short)


def pad_to_multiple(image: torch.Tensor, f: int) -> torch.Tensor:
    """(3, H, W) -> (3, f*ceil(H/f), f*ceil(W/f)), edge-padded as ``ImageTokenizer.encode`` pads."""
    _, height, width = image.shape
    pad_h, pad_w = (-height) % f, (-width) % f
    if not (pad_h or pad_w):
        return image
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode="replicate")[0]  # (3, H + pad_h, W + pad_w)


@dataclass(frozen=True)
class Preprocess:
    """A preprocessing policy, recorded in the metadata of what it produces (with ``PREPROCESSING_VERSION``).

    ``center_crop``: the short side resized to ``size`` (bicubic, antialiased, clamped to [0, 1]), then the centre ``size`` x ``size`` square -- the common training crop. ``native``: each image
    keeps its size (shrunk to ``max_side`` first if given), edge-padded to a multiple of f.
    """

    policy: str  # "center_crop" or "native"
    size: int | None  # center_crop: output side
    multiple_of: int  # the model's downsampling factor f
    max_side: int | None = None  # native: longer side limit (None: any size up to max_pixels)
    resample: str = "bicubic"
    pad: str = "replicate"
    version: int = PREPROCESSING_VERSION

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> the model's input image in [0, 1] (before the [-1, 1] mapping)."""
        if self.policy == "center_crop":
            return center_crop(image, self.size)
        return pad_to_multiple(shrink_to_max_side(image, self.max_side), self.multiple_of)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("max_side" if self.policy == "center_crop" else "size")
        return data
