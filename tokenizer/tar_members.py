"""Walking a tar archive's members without losing any silently.

``tarfile`` ends iteration quietly at a header it cannot read once one member has been read: an archive
cut inside a member header (an interrupted download) looks like a shorter, complete archive. A truncated
``.tar.gz`` raises ``EOFError`` (not a ``TarError``) from gzip. Links and device members are not images.

``iter_members`` yields each regular file member, and a ``BadMember`` for everything else that holds no
readable file: a link or device member, and, last, an archive that ends without its end-of-archive marker
or breaks off ("truncated after member N"), so that callers can record each one.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from dataclasses import dataclass
from typing import Iterator

BLOCK = tarfile.BLOCKSIZE  # 512: headers and the end-of-archive marker are whole blocks of this size
# What opening or walking a damaged archive raises: tarfile's errors, and gzip/bz2/lzma's for a cut stream
# (EOFError, zlib.error, OSError), which are no TarError. ``tarfile.open`` reads the first header already.
READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@dataclass(frozen=True)
class BadMember:
    """A member (or, with ``name`` None, the rest of the archive) that holds no readable regular file."""

    name: str | None
    reason: str


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    return f"a member of type {member.type!r}"


def _end_problem(tf: tarfile.TarFile) -> str | None:
    """What is wrong with the archive's end after the last member tarfile read, or None if it is a proper end.

    A proper end is a zero block (POSIX asks for two; one is accepted, as GNU tar does) at ``tf.offset``.
    Inside a compressed stream only a cut stream is found (a tar cut and then compressed whole is not).
    """
    try:
        if not isinstance(tf.fileobj, io.BufferedReader):
            # Compressed: seeking back would decompress from the start. A cut stream raises here instead
            # (gzip's EOFError), while reading the little that is left after the marker.
            while tf.fileobj.read(1 << 20):
                pass
            return None
        tf.fileobj.seek(tf.offset)
        block = tf.fileobj.read(BLOCK)
    except READ_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    if len(block) < BLOCK:
        return "the file ends without the end-of-archive marker"
    if block.count(0) != BLOCK:
        return "a member header that cannot be read"
    return None


def iter_members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo | BadMember]:
    """Regular file members in archive order, a ``BadMember`` for each link or device member, and one last
    ``BadMember(None, "truncated after member N (...)")`` when the archive breaks off. Directories are skipped.
    """
    count, last = 0, None
    try:
        for member in tf:  # headers only; data is read when (and if) a caller extracts a member
            count, last = count + 1, member.name
            if member.isfile():
                yield member
            elif not member.isdir():
                yield BadMember(member.name, f"{_kind(member)}, not a regular file; imgtok reads regular files only")
        problem = _end_problem(tf)
    except READ_ERRORS as err:  # e.g. gzip's EOFError for a cut .tar.gz
        problem = f"{type(err).__name__}: {err}"
    if problem is not None:
        after = f"member {count} ({last!r})" if count else "its start"
        yield BadMember(None, f"truncated or damaged after {after}: {problem}; any members after it are lost")


__all__ = ["READ_ERRORS", "BadMember", "iter_members"]
