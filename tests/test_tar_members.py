"""Tar members are walked without losing any silently: links and devices reported, a cut archive reported
as "truncated after member N", whatever the compression."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from tokenizer.tar_members import READ_ERRORS, BadMember, iter_members


def _tar(members: list[tuple[str, bytes]], extra=(), mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buf.getvalue()


def _walk(path) -> list:
    try:
        tf = tarfile.open(path, "r:*")  # reads the first header: a cut first member fails here
    except READ_ERRORS as err:
        return [BadMember(None, f"truncated or damaged after its start: {type(err).__name__}: {err}")]
    with tf:
        return [m if isinstance(m, BadMember) else m.name for m in iter_members(tf)]


MEMBERS = [(f"{i:03d}.png", bytes([i]) * 700) for i in range(12)]  # 2 data blocks each


def test_complete_archive_has_no_bad_members(tmp_path):
    (tmp_path / "a.tar").write_bytes(_tar(MEMBERS))
    assert _walk(tmp_path / "a.tar") == [name for name, _ in MEMBERS]


@pytest.mark.parametrize("cut_blocks", [1, 2, 3, 7, 20, 30])
def test_cut_anywhere_is_reported(tmp_path, cut_blocks):
    data = _tar(MEMBERS)
    end = 12 * 3 * 512  # header + 2 data blocks per member; the marker and padding follow
    (tmp_path / "a.tar").write_bytes(data[: end - cut_blocks * 512 - 100])  # inside a header or data block
    walked = _walk(tmp_path / "a.tar")
    assert isinstance(walked[-1], BadMember) and walked[-1].name is None
    read = len(walked) - 1
    assert f"truncated or damaged after member {read} ('{MEMBERS[read - 1][0]}')" in walked[-1].reason
    assert "any members after it are lost" in walked[-1].reason


def test_cut_inside_a_header_after_member_7(tmp_path):
    data = _tar(MEMBERS)
    (tmp_path / "a.tar").write_bytes(data[: 7 * 3 * 512 + 200])  # 200 bytes into member 8's header
    walked = _walk(tmp_path / "a.tar")
    assert walked[:7] == [name for name, _ in MEMBERS[:7]]
    assert walked[7].reason.startswith("truncated or damaged after member 7 ('006.png'): the file ends without")


def test_missing_end_marker_only(tmp_path):
    (tmp_path / "a.tar").write_bytes(_tar(MEMBERS)[: 12 * 3 * 512])  # every member whole, no marker
    assert "the file ends without the end-of-archive marker" in _walk(tmp_path / "a.tar")[-1].reason


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.95])
def test_truncated_tar_gz(tmp_path, fraction):
    raw = gzip.compress(_tar(MEMBERS))
    (tmp_path / "a.tar.gz").write_bytes(raw[: int(len(raw) * fraction)])
    walked = _walk(tmp_path / "a.tar.gz")
    assert isinstance(walked[-1], BadMember) and "truncated or damaged after" in walked[-1].reason
    assert "EOFError" in walked[-1].reason or "Error" in walked[-1].reason


def test_complete_tar_gz(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(_tar(MEMBERS)))
    assert _walk(tmp_path / "a.tar.gz") == [name for name, _ in MEMBERS]


def test_links_and_devices_are_reported(tmp_path):
    sym = tarfile.TarInfo("s.png")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("h.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "000.png"
    dev = tarfile.TarInfo("d.png")
    dev.type = tarfile.CHRTYPE
    fifo = tarfile.TarInfo("f.png")
    fifo.type = tarfile.FIFOTYPE
    folder = tarfile.TarInfo("sub")
    folder.type = tarfile.DIRTYPE
    (tmp_path / "a.tar").write_bytes(_tar(MEMBERS[:1], extra=[sym, hard, dev, fifo, folder]))
    walked = _walk(tmp_path / "a.tar")
    assert walked[0] == "000.png" and len(walked) == 5
    reasons = {m.name: m.reason for m in walked[1:]}
    assert reasons["s.png"].startswith("a symbolic link (to '/etc/passwd'), not a regular file")
    assert reasons["h.png"].startswith("a hard link (to '000.png')")
    assert reasons["d.png"].startswith("a device") and reasons["f.png"].startswith("a FIFO")
